//! The SNI backstop: a TLS ClientHello (or a cleartext HTTP `CONNECT`)
//! leaving a governed cgroup for an address that is not a known endpoint
//! is copied to the agent, which reads the name it asks for. A model API
//! reached on an address nobody told us about is learned and reported.

use agent_common::{
    Counter, EGRESS_BYTES, EgressEvent, EndpointKey, EventHeader, EventKind, action,
    dns::{NAME, hash_from},
    dns_flags, egress_kind, sni, v4_mapped,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
            bpf_skb_load_bytes,
        },
    },
    macros::{cgroup_skb, map},
    maps::{LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};

use crate::{
    dns::MG_DNS_NAMES,
    maps::{MG_CONFIG, MG_ENDPOINTS, MG_EVENTS, MG_REDIRECT_COOKIE, count},
    skb::Skb,
    sock::resolve_action,
};

/// Sockets whose ClientHello was dropped: their retransmissions (sent from
/// timer context, where "current" is not the sender) are dropped too.
#[map]
static MG_BLOCKED_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

const PASS: i32 = 1;
const DROP: i32 = 0;

/// The server name read from a hello, per CPU and per nesting level: it
/// does not fit the stack beside the `*.suffix` walk's frame. A send in
/// process context can be interrupted on its CPU by one from softirq (a
/// retransmission, data released by an ACK), or preempted by another
/// task's, so each run takes the slot of its depth (`MG_EGRESS_DEPTH`).
#[map]
static MG_EGRESS_NAME: PerCpuArray<[u8; NAME]> = PerCpuArray::with_max_entries(NAME_SLOTS, 0);

#[map]
static MG_EGRESS_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

const NAME_SLOTS: u32 = 4;

#[cgroup_skb(egress)]
pub fn mg_first_bytes(ctx: SkBuffContext) -> i32 {
    let Some(depth) = MG_EGRESS_DEPTH.get_ptr_mut(0) else {
        return PASS;
    };
    let level = unsafe { *depth };
    unsafe { *depth = level.wrapping_add(1) };
    let verdict = look(&ctx, level).unwrap_or(PASS);
    unsafe { *depth = level };
    verdict
}

#[inline(always)]
fn look(ctx: &SkBuffContext, level: u32) -> Option<i32> {
    let first: u8 = ctx.load(0).ok()?;
    let (tcp, proto, v4) = match first >> 4 {
        4 => (((first & 0x0f) as usize) * 4, ctx.load::<u8>(9).ok()?, true),
        6 => (40, ctx.load::<u8>(6).ok()?, false),
        _ => return None,
    };
    if proto != 6 {
        return None;
    }
    let offset = ((ctx.load::<u8>(tcp + 12).ok()? >> 4) as usize) * 4;
    let payload = tcp + offset;
    // No size cut: a hello with a post-quantum key share is 1.5–2 KB, a
    // full-size segment (or a GSO super-packet) like bulk data. Bulk data
    // costs one 8-byte load here, and a TLS record of application data
    // starts with 0x17, not a handshake.
    let len = (ctx.len() as usize).checked_sub(payload)?;
    if len < 8 {
        return None;
    }
    let head: [u8; 8] = ctx.load(payload).ok()?;
    let kind = if head[0] == 0x16 && head[1] == 0x03 && head[5] == 0x01 {
        egress_kind::CLIENT_HELLO
    } else if head == *b"CONNECT " {
        egress_kind::HTTP_CONNECT
    } else {
        return None;
    };
    let addr = if v4 {
        v4_mapped(ctx.load::<[u8; 4]>(16).ok()?)
    } else {
        ctx.load::<[u8; 16]>(24).ok()?
    };
    let port = u16::from_be(ctx.load::<u16>(tcp + 2).ok()?);
    // First: a socket whose hello was dropped stays dropped, even once the
    // agent has learned its address (which would skip the checks below).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    if unsafe { MG_BLOCKED_SOCKETS.get(cookie) }.is_some() {
        return Some(DROP);
    }
    // A known endpoint was decided at connect(); nothing to learn.
    let key = EndpointKey {
        addr,
        port,
        _pad: [0; 2],
    };
    if kind == egress_kind::CLIENT_HELLO && unsafe { MG_ENDPOINTS.get(key) }.is_some() {
        return None;
    }
    // A redirected connection's hello goes to the proxy: governed already.
    if unsafe { MG_REDIRECT_COOKIE.get(cookie) }.is_some() {
        return None;
    }
    let mut verdict = PASS;
    // More than NAME_SLOTS sends at once on one CPU does not happen; one
    // that did would pass unread, like a packet the program cannot load.
    let name = unsafe { &mut *MG_EGRESS_NAME.get_ptr_mut(level)? };
    *name = [0u8; NAME];
    let name_len = if kind == egress_kind::CLIENT_HELLO {
        sni::server_name(&Skb(ctx), payload, len, name).unwrap_or(0)
    } else {
        0
    };
    if name_len > 0
        && let Some(config) = MG_CONFIG.get(0)
        && let Some(provider) = provider_of(name, config.suffix_labels)
    {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        let (verdict_now, _, _) = resolve_action(config, tgid, cgroup_id, provider);
        // Anything but allow/monitor meant "not directly": a hello to an
        // address we did not know is that workload going around the policy.
        if verdict_now != action::ALLOW && verdict_now != action::MONITOR {
            count(Counter::SniBlocked);
            let _ = MG_BLOCKED_SOCKETS.insert(cookie, 1u8, 0);
            verdict = DROP;
        }
    }
    report(ctx, payload, len, kind, &key, name, name_len);
    Some(verdict)
}

/// The provider whose catalog host the ClientHello's server name (read by
/// `agent_common::sni`, shared with the host and fuzzed against the
/// agent's parser) names, if any: hashed exactly as `hash_from` hashes DNS
/// names (dotted here), below a `*.suffix` at any depth.
#[inline(always)]
fn provider_of(name: &[u8; NAME], suffix_labels: u8) -> Option<u32> {
    let (full, _, _) = hash_from(name, 0);
    if let Some(entry) = unsafe { MG_DNS_NAMES.get(full) }
        && entry.flags & dns_flags::SNI_EXACT != 0
    {
        return Some(entry.provider);
    }
    crate::suffix::below(name, false, suffix_labels, dns_flags::SNI_SUFFIX)
        .map(|entry| entry.provider)
}

#[inline(always)]
fn report(
    ctx: &SkBuffContext,
    payload: usize,
    len: usize,
    kind: u32,
    to: &EndpointKey,
    name: &[u8; NAME],
    name_len: usize,
) {
    let Some(mut event) = MG_EVENTS.reserve::<EgressEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let ptr = event.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    unsafe {
        (*ptr).header = EventHeader {
            kind: EventKind::Egress as u32,
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
            _pad: 0,
            boot_ns: bpf_ktime_get_boot_ns(),
        };
        // Egress runs in the sender's context: current is the process.
        (*ptr).cgroup_id = bpf_get_current_cgroup_id();
        (*ptr).uid = uid_gid as u32;
        (*ptr).gid = (uid_gid >> 32) as u32;
        (*ptr).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ptr).addr = to.addr;
        (*ptr).port = to.port;
        (*ptr)._pad = 0;
        (*ptr).kind = kind;
        (*ptr).name_len = name_len as u32;
        (*ptr).name = *name;
        let copy = if len > EGRESS_BYTES {
            EGRESS_BYTES
        } else {
            len
        };
        (*ptr).len = 0;
        // A size the verifier can bound: 1..=EGRESS_BYTES.
        if (1..=EGRESS_BYTES).contains(&copy)
            && bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                payload as u32,
                (*ptr).payload.as_mut_ptr().cast(),
                copy as u32,
            ) == 0
        {
            (*ptr).len = copy as u32;
        }
    }
    event.submit(0);
}
