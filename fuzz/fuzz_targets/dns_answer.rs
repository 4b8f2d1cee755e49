//! DNS answers, which anything on the resolver's path can forge, read the
//! two ways modelgate reads them: by the kernel program (the parser in
//! `agent_common::dns`, the very code the `cgroup_skb` program runs), and
//! by the agent (hickory), which keeps each learned address for its TTL.
//! The kernel may learn no address the agent would not also learn and
//! expire, and both must hash the question name alike.
#![no_main]

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv6Addr},
    time::Instant,
};

use agent_common::{dns, name_hash, to_v6_bytes};
use hickory_proto::{op::Message, rr::Name};
use libfuzzer_sys::fuzz_target;
use modelgate::catalog::learned::Learned;

/// `msg` behind an IPv4 header (no options) and a UDP header from port 53.
fn ipv4_udp(msg: &[u8]) -> Vec<u8> {
    let mut packet = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 8, 8, 8, 8, 10, 0, 0, 1,
    ];
    packet.extend_from_slice(&[0, 53, 0x9c, 0x40, 0, 0, 0, 0]);
    packet.extend_from_slice(msg);
    packet
}

/// The kernel's verdict: the question's hashes and the addresses learned,
/// as the endpoint map's 16-byte keys.
fn kernel(packet: &[u8]) -> Option<(dns::Question, Vec<[u8; 16]>)> {
    let q = dns::question(packet, &mut [0; dns::NAME])?;
    let mut addrs = Vec::new();
    dns::answers(packet, &q, |a| addrs.push(a))?;
    Some((q, addrs))
}

/// The name in wire form, if it is a plain sequence of hostname labels.
fn plain_wire(name: &Name) -> Option<Vec<u8>> {
    let mut wire = Vec::new();
    for label in name.iter() {
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        wire.push(u8::try_from(label.len()).ok()?);
        wire.extend_from_slice(label);
    }
    wire.push(0);
    Some(wire)
}

fuzz_target!(|data: &[u8]| {
    // Whatever the first bytes, as a whole packet (IP header parsing).
    let _ = kernel(data);

    let now = Instant::now();
    let mut learned = Learned::default();
    let new = learned.absorb(data, "openai", now);
    let unique: HashSet<IpAddr> = new.iter().copied().collect();
    assert_eq!(
        unique.len(),
        new.len(),
        "an address reported new twice: {new:?}"
    );
    assert_eq!(
        learned.iter().count(),
        new.len(),
        "learned and reported differ"
    );
    assert!(
        learned.absorb(data, "openai", now).is_empty(),
        "a repeat was new"
    );

    let Some((q, kernel_addrs)) = kernel(&ipv4_udp(data)) else {
        return;
    };
    let Ok(message) = Message::from_vec(data) else {
        return;
    };
    // Compared as map keys: an AAAA record holding a v4-mapped address
    // is the same key as the A record's.
    let agent_keys: HashSet<[u8; 16]> = new.iter().map(|a| to_v6_bytes(*a)).collect();
    for key in &kernel_addrs {
        assert!(
            agent_keys.contains(key),
            "the kernel learned {}, the agent only {new:?}: it would never expire",
            Ipv6Addr::from(*key)
        );
    }
    if let Some(query) = message.queries.first()
        && let Some(wire) = plain_wire(&query.name)
        && data.get(dns::HEADER..dns::HEADER + wire.len()) == Some(wire.as_slice())
    {
        // The labels' own bytes, as the catalog's dotted names are hashed
        // (`to_ascii` would escape some of them).
        let labels: Vec<&[u8]> = query.name.iter().collect();
        let dotted = labels.join(&b'.');
        assert_eq!(
            q.full,
            name_hash(&dotted),
            "kernel and agent hash {:?} differently",
            String::from_utf8_lossy(&dotted)
        );
    }
});
