//! The ClientHello SNI and HTTP CONNECT parsers: the bytes are whatever a
//! governed process sent first. The kernel reads the name too (the parser
//! in `agent_common::sni`, the very code the `cgroup_skb` program runs) to
//! drop hellos for governed hosts: whenever both read a name, it must be
//! the same name, or a hello could say one thing to the kernel and another
//! to the server. The same holds for the Host of a cleartext request,
//! read by `agent_common::http` in the kernel and by httparse here.
#![no_main]

use agent_common::{
    DnsName,
    dns::NAME,
    dns_flags, dotted_hash,
    http::{self, HTTP_SCAN},
    limits, sni, wildcard,
};
use libfuzzer_sys::fuzz_target;
use modelgate::catalog::{
    HostPattern,
    sni::{client_hello_sni, connect_target, request_host},
};

/// The kernel's `*.suffix` walk against the agent's `HostPattern` for the
/// name both read: every suffix of its last 1..=8 labels, and the
/// same with a byte changed, must match in both or in neither.
fn wildcards_agree(buf: &[u8; NAME], name: &str) {
    let labels: Vec<&str> = name.split('.').collect();
    for k in 1..=wildcard::SUFFIX_LABELS.min(labels.len()) {
        let suffix = labels[labels.len() - k..].join(".").to_ascii_lowercase();
        for suffix in [suffix.clone(), format!("x{suffix}")] {
            let Ok(pattern) = format!("*.{suffix}").parse::<HostPattern>() else {
                continue;
            };
            let entry = DnsName {
                provider: 1,
                flags: dns_flags::SNI_SUFFIX,
                ports: [443; limits::DNS_PORTS],
            };
            let key = dotted_hash(suffix.as_bytes());
            let counts = wildcard::suffix_count_bit(&suffix).unwrap_or(0);
            let kernel = wildcard::below_suffix(buf, false, counts, dns_flags::SNI_SUFFIX, |h| {
                (h == key).then_some(entry)
            });
            assert_eq!(
                kernel.is_some(),
                pattern.matches(name),
                "{name:?} below *.{suffix}: the kernel says {}, the agent {}",
                kernel.is_some(),
                pattern.matches(name)
            );
        }
    }
}

/// The kernel's Host against the agent's: a name the agent reads must be
/// the kernel's name or make the kernel give up (never "no Host", never
/// another name), or a request could pass the kernel under one name and
/// reach the server under another.
fn hosts_agree(data: &[u8]) {
    let mut buf = [0u8; HTTP_SCAN];
    let len = data.len().min(HTTP_SCAN);
    buf[..len].copy_from_slice(&data[..len]);
    let mut name = [0u8; NAME];
    let kernel = http::request_host(&buf, len, &mut name);
    if let sni::Sni::Name(n) = kernel {
        assert!(n > 0 && n < NAME, "length {n}");
        assert!(name[n..].iter().all(|&b| b == 0), "not NUL-padded");
    }
    let Some(agent) = request_host(&data[..len]) else {
        return;
    };
    match kernel {
        sni::Sni::Name(n) => assert!(
            name[..n].eq_ignore_ascii_case(agent.as_bytes()),
            "the kernel read Host {:?}, the agent {agent:?}",
            String::from_utf8_lossy(&name[..n])
        ),
        sni::Sni::Absent => panic!("the agent read Host {agent:?}, the kernel none"),
        sni::Sni::Unreadable => {}
    }
}

fuzz_target!(|data: &[u8]| {
    hosts_agree(data);
    let mut buf = [0u8; NAME];
    let kernel = sni::server_name(data, 0, data.len(), &mut buf).map(|n| {
        assert!(n > 0 && n < NAME, "length {n}");
        assert!(buf[n..].iter().all(|&b| b == 0), "not NUL-padded");
        buf[..n].to_vec()
    });
    // Where both read the name (the agent's is the one it decides on).
    if kernel.is_some()
        && let Some(name) = client_hello_sni(data)
    {
        wildcards_agree(&buf, &name);
    }
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
