//! The ClientHello SNI and HTTP CONNECT parsers: the bytes are whatever a
//! governed process sent first. The kernel reads the name too (the parser
//! in `agent_common::sni`, the very code the `cgroup_skb` program runs) to
//! drop hellos for governed hosts: whenever both read a name, it must be
//! the same name, or a hello could say one thing to the kernel and another
//! to the server.
#![no_main]

use agent_common::{dns::NAME, sni};
use libfuzzer_sys::fuzz_target;
use modelgate::catalog::sni::{client_hello_sni, connect_target};

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; NAME];
    let kernel = sni::server_name(data, 0, data.len(), &mut buf).map(|n| {
        assert!(n > 0 && n < NAME, "length {n}");
        assert!(buf[n..].iter().all(|&b| b == 0), "not NUL-padded");
        buf[..n].to_vec()
    });
    if let (Some(kernel), Some(agent)) = (&kernel, client_hello_sni(data)) {
        assert!(
            kernel.eq_ignore_ascii_case(agent.as_bytes()),
            "the kernel read {:?}, the agent {agent:?}",
            String::from_utf8_lossy(kernel)
        );
    }
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
