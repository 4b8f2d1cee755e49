//! Ring-buffer records as the daemon decodes them, and what it then parses
//! out of them: the argv of an `Exec` event (masked), the DNS answer of a
//! `Dns` event, the first bytes of an `Egress` event (ClientHello or
//! CONNECT) and the server name the kernel read.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use modelgate::{
    catalog::{
        learned::Learned,
        sni::{client_hello_sni, connect_target, host_name},
    },
    ebpf::events::{Event, decode},
    identity::cmdline::{DEFAULT_MAX_LEN, mask_cmdline, split_raw},
};

fuzz_target!(|data: &[u8]| {
    let Ok(event) = decode(data) else {
        return;
    };
    // Debug formatting walks every field, as `--log-decisions` would.
    let _ = format!("{event:?}");
    match event {
        Event::Exec(ev) => {
            let len = (ev.argv_len as usize).min(ev.argv.len());
            let args = split_raw(&ev.argv[..len]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            assert!(mask_cmdline(&refs, DEFAULT_MAX_LEN).len() <= DEFAULT_MAX_LEN);
        }
        Event::Dns(ev) => {
            let len = (ev.len as usize).min(ev.payload.len());
            let _ = Learned::default().absorb(&ev.payload[..len], "openai", Instant::now());
        }
        Event::Egress(ev) => {
            let len = (ev.len as usize).min(ev.payload.len());
            let _ = client_hello_sni(&ev.payload[..len]);
            let _ = connect_target(&ev.payload[..len]);
            let name_len = (ev.name_len as usize).min(ev.name.len());
            if let Some(name) = host_name(&ev.name[..name_len]) {
                assert!(!name.is_empty() && !name.ends_with('.'), "{name:?}");
            }
        }
        _ => {}
    }
});
