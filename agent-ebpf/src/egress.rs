//! The SNI backstop: a TLS ClientHello (or a cleartext HTTP `CONNECT`)
//! leaving a governed cgroup for an address that is not a known endpoint
//! is copied to the agent, which reads the name it asks for. A model API
//! reached on an address nobody told us about is learned and reported.

use core::ffi::c_void;

use agent_common::{
    Counter, EGRESS_BYTES, EgressEvent, EndpointKey, EventHeader, EventKind, action,
    dns::{NAME, hash_from},
    dns_flags, egress_kind,
    http::{HTTP_SCAN, HostPass, VALUE_SCAN},
    limits::UNNAMED_PROVIDER,
    sni::{self, Sni},
    v4_mapped,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_loop,
            bpf_sk_fullsock, bpf_skb_cgroup_id, bpf_skb_load_bytes, bpf_tcp_sock,
        },
    },
    macros::{cgroup_skb, map},
    maps::{LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};

use crate::{
    dns::MG_DNS_NAMES,
    maps::{MG_CONFIG, MG_ENDPOINTS, MG_EVENTS, MG_PORTS, MG_REDIRECT_COOKIE, count},
    skb::Skb,
    sock::{lookup_endpoint, resolve_action},
};

/// Sockets whose ClientHello was dropped: their retransmissions (sent from
/// timer context, where "current" is not the sender) are dropped too.
#[map]
static MG_BLOCKED_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Sockets to unknown addresses on catalog ports whose first bytes were
/// judged and passed: the rest of their first flight passes. One that
/// falls out of the LRU is held back until data is acked, where strict:
/// a delay, never a pass.
#[map]
static MG_JUDGED_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65_536, 0);

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

/// The first bytes of a cleartext request and the reading of its Host,
/// per CPU and nesting level like the name (off the 512-byte stack).
#[map]
static MG_EGRESS_HTTP: PerCpuArray<HttpScratch> = PerCpuArray::with_max_entries(NAME_SLOTS, 0);

#[repr(C)]
struct HttpScratch {
    buf: [u8; HTTP_SCAN],
    pass: HostPass,
}

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
    let len = (ctx.len() as usize).checked_sub(payload)?;
    if len == 0 {
        return None;
    }
    let port = u16::from_be(ctx.load::<u16>(tcp + 2).ok()?);
    let port_flags = MG_PORTS.get(port as u32).map_or(0, |flags| *flags);
    let catalog_port = port_flags != 0;
    // The stream offset of this segment while the peer has acked no data
    // (the SYN counts one in `bytes_acked`): the first flight. Once data
    // is acked, this is bulk data and costs these few reads.
    let mut first_flight = None;
    if catalog_port {
        let tp = unsafe {
            let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
            if sk.is_null() {
                core::ptr::null_mut()
            } else {
                let full = bpf_sk_fullsock(sk);
                if full.is_null() {
                    core::ptr::null_mut()
                } else {
                    bpf_tcp_sock(full)
                }
            }
        };
        if !tp.is_null() {
            let (acked, una) = unsafe { ((*tp).bytes_acked, (*tp).snd_una) };
            if acked > 1 {
                return None;
            }
            let seq = u32::from_be(ctx.load::<u32>(tcp + 4).ok()?);
            first_flight = Some(seq.wrapping_sub(una));
        }
    }
    let head: [u8; 8] = if len >= 8 {
        ctx.load(payload).ok()?
    } else {
        [0; 8]
    };
    let kind = if head[0] == 0x16 && head[1] == 0x03 && head[5] == 0x01 {
        egress_kind::CLIENT_HELLO
    } else if head == *b"CONNECT " {
        egress_kind::HTTP_CONNECT
    } else if first_flight.is_some() {
        egress_kind::UNREADABLE
    } else {
        // Not a catalog port: only a hello or a CONNECT is looked at.
        return None;
    };
    let addr = if v4 {
        v4_mapped(ctx.load::<[u8; 4]>(16).ok()?)
    } else {
        ctx.load::<[u8; 16]>(24).ok()?
    };
    // First: a socket whose hello was dropped stays dropped, even once the
    // agent has learned its address (which would skip the checks below).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    if unsafe { MG_BLOCKED_SOCKETS.get(cookie) }.is_some() {
        return Some(DROP);
    }
    // A redirected connection's hello goes to the proxy: governed already.
    if unsafe { MG_REDIRECT_COOKIE.get(cookie) }.is_some() {
        return None;
    }
    let key = EndpointKey {
        addr,
        port,
        _pad: [0; 2],
    };
    // A known endpoint was decided at connect(); nothing to learn. Unless
    // this is its first flight: the socket may have connected before the
    // address was learned (from this very hello, read whole after it was
    // held back), and an endpoint's first bytes may name another provider.
    let endpoint = if first_flight.is_some() {
        lookup_endpoint(addr, port, port_flags)
    } else {
        if unsafe { MG_ENDPOINTS.get(key) }.is_some() {
            return None;
        }
        None
    };
    let config = MG_CONFIG.get(0)?;
    // The socket's cgroup, whatever runs now (a retransmission is sent
    // from softirq); the process only when it is the sender's context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let tgid = if unsafe { bpf_get_current_cgroup_id() } == cgroup_id {
        (bpf_get_current_pid_tgid() >> 32) as u32
    } else {
        0
    };
    let strict = |provider: u32| {
        // Another process's verdict must not stand in for the sender's:
        // where rules name processes and the sender is unknown, strict.
        if tgid == 0 && config.has_proc_rules != 0 {
            return true;
        }
        let (verdict, _, _) = resolve_action(config, tgid, cgroup_id, provider);
        // Anything but allow/monitor meant "not directly": first bytes to
        // an address we did not know are that workload going around it.
        verdict != action::ALLOW && verdict != action::MONITOR
    };
    // What the bytes are judged as when they name nothing: the endpoint's
    // provider, else a model API the kernel cannot name.
    let fallback = endpoint.map_or(UNNAMED_PROVIDER as u32, |e| e.provider);
    if let Some(at) = first_flight {
        if unsafe { MG_JUDGED_SOCKETS.get(cookie) }.is_some() {
            return None;
        }
        // The proxy's own upstream connections are not the workload's.
        if tgid != 0 && tgid == config.agent_tgid {
            let _ = MG_JUDGED_SOCKETS.insert(cookie, 1u8, 0);
            return None;
        }
        // The rest of a first flight whose start could not be judged (or
        // whose judgement was forgotten): held back where strict. TCP
        // sends it again, joined to the start (its retransmissions merge
        // small segments), and the whole is judged from offset 0.
        if at != 0 {
            if strict(fallback) {
                count(Counter::FirstFlightHeld);
                return Some(DROP);
            }
            return None;
        }
    }
    // More than NAME_SLOTS sends at once on one CPU does not happen; one
    // that did would pass unread, like a packet the program cannot load.
    let name = unsafe { &mut *MG_EGRESS_NAME.get_ptr_mut(level)? };
    *name = [0u8; NAME];
    let mut kind = kind;
    let mut name_len = 0;
    let read = if kind == egress_kind::CLIENT_HELLO {
        sni::read(&Skb(ctx), payload, len, name)
    } else if kind == egress_kind::UNREADABLE && head[0].wrapping_sub(b'A') < 26 {
        // Capital letters first: perhaps a cleartext request, named by
        // its Host.
        kind = egress_kind::HTTP_REQUEST;
        request_host(ctx, payload, len, level, name)
    } else {
        Sni::Unreadable
    };
    match read {
        Sni::Name(n) => name_len = n,
        Sni::Absent => {}
        Sni::Unreadable => {
            if first_flight.is_some() {
                kind = egress_kind::UNREADABLE;
            }
        }
    }
    let mut verdict = PASS;
    if kind == egress_kind::UNREADABLE {
        if strict(fallback) {
            count(Counter::FirstFlightHeld);
            verdict = DROP;
        }
    } else if kind == egress_kind::CLIENT_HELLO || kind == egress_kind::HTTP_REQUEST {
        let named = if name_len > 0 {
            provider_of(name, config.suffix_labels)
        } else {
            None
        };
        let provider = named.or(endpoint.map(|e| e.provider));
        if let Some(provider) = provider
            && strict(provider)
        {
            count(Counter::SniBlocked);
            let _ = MG_BLOCKED_SOCKETS.insert(cookie, 1u8, 0);
            verdict = DROP;
        }
    }
    if verdict == PASS && first_flight.is_some() {
        let _ = MG_JUDGED_SOCKETS.insert(cookie, 1u8, 0);
    }
    // The agent hears of what was held back, and of every hello or CONNECT
    // to an address it does not know (it reads the name itself).
    if verdict == DROP || (kind != egress_kind::UNREADABLE && endpoint.is_none()) {
        report(ctx, payload, len, kind, &key, name, name_len);
    }
    Some(verdict)
}

/// The Host of the cleartext request at `payload`: `http::HostPass` over
/// a copy of its first bytes, each pass a `bpf_loop` (verified once per
/// step, where 1,024 unrolled bytes on every path to here were not).
#[inline(always)]
fn request_host(
    ctx: &SkBuffContext,
    payload: usize,
    len: usize,
    level: u32,
    name: &mut [u8; NAME],
) -> Sni {
    let Some(scratch) = MG_EGRESS_HTTP.get_ptr_mut(level) else {
        return Sni::Unreadable;
    };
    let copy = if len > HTTP_SCAN { HTTP_SCAN } else { len };
    // A size the verifier can bound, on the register the helper gets.
    let copy = unsafe { core::ptr::read_volatile(&copy) };
    if copy == 0
        || copy > HTTP_SCAN
        || unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                payload as u32,
                (*scratch).buf.as_mut_ptr().cast(),
                copy as u32,
            )
        } != 0
    {
        return Sni::Unreadable;
    }
    let mut steps = HttpLoop { scratch, name };
    let steps_ptr = (&mut steps as *mut HttpLoop).cast();
    let scratch = unsafe { &mut *scratch };
    scratch.pass = HostPass::new(copy);
    // bpf_loop runs every step unless a step stops it: none does. Bytes
    // past `copy` are not the request's: the head pass stops there.
    unsafe { bpf_loop(copy as u32, head_step as *mut _, steps_ptr, 0) };
    if let Err(why) = scratch.pass.after_head(&scratch.buf) {
        return why;
    }
    unsafe { bpf_loop(VALUE_SCAN as u32, value_step as *mut _, steps_ptr, 0) };
    if let Err(why) = scratch.pass.after_value() {
        return why;
    }
    unsafe { bpf_loop(NAME as u32, copy_step as *mut _, steps_ptr, 0) };
    scratch.pass.finish(name)
}

/// What the `bpf_loop` steps are given: two pointers on the caller's
/// stack (the helper takes nothing else).
#[repr(C)]
struct HttpLoop {
    scratch: *mut HttpScratch,
    name: *mut [u8; NAME],
}

extern "C" fn head_step(i: u64, steps: *mut c_void) -> i64 {
    let scratch = unsafe { &mut *(*steps.cast::<HttpLoop>()).scratch };
    let byte = scratch.buf[(i as usize) % HTTP_SCAN];
    scratch.pass.head(i, byte);
    0
}

extern "C" fn value_step(k: u64, steps: *mut c_void) -> i64 {
    let scratch = unsafe { &mut *(*steps.cast::<HttpLoop>()).scratch };
    scratch.pass.value(k, &scratch.buf);
    0
}

extern "C" fn copy_step(k: u64, steps: *mut c_void) -> i64 {
    let steps = unsafe { &mut *steps.cast::<HttpLoop>() };
    let scratch = unsafe { &*steps.scratch };
    scratch
        .pass
        .copy(k, &scratch.buf, unsafe { &mut *steps.name });
    0
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
        // A size the verifier can bound: 1..=EGRESS_BYTES, checked on the
        // very register the helper gets (a volatile read stops LLVM from
        // handing it an unchecked copy).
        let copy = core::ptr::read_volatile(&copy);
        if copy != 0
            && copy <= EGRESS_BYTES
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
