//! The ClientHello SNI and HTTP CONNECT parsers: the bytes are whatever a
//! governed process sent first, copied by the kernel (a prefix).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::catalog::sni::{client_hello_sni, connect_target};

fuzz_target!(|data: &[u8]| {
    if let Some(name) = client_hello_sni(data) {
        // The name is used as a host name in decisions and alerts.
        assert!(!name.is_empty(), "empty SNI accepted");
        assert!(
            name.bytes().all(|b| b.is_ascii_graphic()),
            "SNI {name:?} has bytes that are not printable ASCII"
        );
        assert_eq!(name, name.to_ascii_lowercase(), "SNI not lowercased");
    }
    if let Some(host) = connect_target(data) {
        assert!(!host.is_empty(), "empty CONNECT target accepted");
        assert!(
            !host.contains(['\r', '\n']),
            "CONNECT target {host:?} spans lines"
        );
    }
});
