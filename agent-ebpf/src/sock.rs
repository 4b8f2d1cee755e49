//! connect() and sendmsg() hooks: endpoint lookup, policy, verdict, event.

use agent_common::{
    AgentConfig, CIDR_PORT_BITS, CidrKey, ConnectEvent, Counter, EndpointKey, EndpointValue,
    EventHeader, EventKind, PolicyEntry, RULE_DEFAULT, Redirect, action, hook, limits, port_flags,
    source, v4_mapped,
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};

use crate::{
    maps::{
        MG_CGROUP_POLICY, MG_CIDRS, MG_CONFIG, MG_ENDPOINTS, MG_EVENTS, MG_HEARTBEAT, MG_PORTS,
        MG_PROC_POLICY, count,
    },
    redirect::redirect_to_proxy,
};

/// Return values of cgroup sock_addr programs.
const PASS: i32 = 1;
/// connect()/sendmsg() fail with EPERM.
const REJECT: i32 = 0;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// QUIC / HTTP/3: the only UDP port where a model API is reachable.
const QUIC_PORT: u16 = 443;
const GLOBAL_ENTRY: u64 = agent_common::GLOBAL_POLICY_KEY;

#[cgroup_sock_addr(connect4)]
pub fn mg_connect4(ctx: SockAddrContext) -> i32 {
    let (addr, port, protocol) = unsafe { read_v4(ctx.sock_addr) };
    decide(&ctx, addr, port, AF_INET, protocol, hook::CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn mg_connect6(ctx: SockAddrContext) -> i32 {
    let (addr, port, protocol) = unsafe { read_v6(ctx.sock_addr) };
    decide(&ctx, addr, port, AF_INET6, protocol, hook::CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn mg_sendmsg4(ctx: SockAddrContext) -> i32 {
    let (addr, port, _) = unsafe { read_v4(ctx.sock_addr) };
    decide(&ctx, addr, port, AF_INET, IPPROTO_UDP, hook::SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn mg_sendmsg6(ctx: SockAddrContext) -> i32 {
    let (addr, port, _) = unsafe { read_v6(ctx.sock_addr) };
    decide(&ctx, addr, port, AF_INET6, IPPROTO_UDP, hook::SENDMSG)
}

// The verifier allows only 4-byte loads of these context fields, so each is
// read on its own with a volatile load that LLVM cannot widen or merge.
#[inline(always)]
unsafe fn read_v4(sa: *mut bpf_sock_addr) -> ([u8; 16], u16, u8) {
    unsafe {
        let ip = core::ptr::read_volatile(&(*sa).user_ip4);
        let port = core::ptr::read_volatile(&(*sa).user_port);
        let protocol = core::ptr::read_volatile(&(*sa).protocol);
        (
            v4_mapped(ip.to_ne_bytes()),
            u16::from_be(port as u16),
            protocol as u8,
        )
    }
}

#[inline(always)]
unsafe fn read_v6(sa: *mut bpf_sock_addr) -> ([u8; 16], u16, u8) {
    unsafe {
        let w0 = core::ptr::read_volatile(&(*sa).user_ip6[0]).to_ne_bytes();
        let w1 = core::ptr::read_volatile(&(*sa).user_ip6[1]).to_ne_bytes();
        let w2 = core::ptr::read_volatile(&(*sa).user_ip6[2]).to_ne_bytes();
        let w3 = core::ptr::read_volatile(&(*sa).user_ip6[3]).to_ne_bytes();
        let port = core::ptr::read_volatile(&(*sa).user_port);
        let protocol = core::ptr::read_volatile(&(*sa).protocol);
        let addr = [
            w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3],
            w3[0], w3[1], w3[2], w3[3],
        ];
        (addr, u16::from_be(port as u16), protocol as u8)
    }
}

#[inline(always)]
fn decide(
    ctx: &SockAddrContext,
    addr: [u8; 16],
    port: u16,
    family: u16,
    protocol: u8,
    hook: u8,
) -> i32 {
    // UDP matters only as QUIC; any other UDP (DNS, NTP, ...) leaves at once.
    if protocol == IPPROTO_UDP && port != QUIC_PORT {
        return PASS;
    }
    // Hot path: one array lookup rejects every port no endpoint uses.
    let flags = match MG_PORTS.get(port as u32) {
        Some(flags) if *flags != 0 => *flags,
        _ => return PASS,
    };
    let Some(endpoint) = lookup_endpoint(addr, port, flags) else {
        return PASS;
    };

    let Some(config) = MG_CONFIG.get(0) else {
        // Not configured yet: the agent writes MG_CONFIG before attaching.
        return PASS;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The proxy's own upstream connections: never redirected (no loop),
    // and not the workload's traffic, so no event either.
    if tgid == config.agent_tgid {
        count(Counter::AgentOwn);
        return PASS;
    }

    count(Counter::EndpointHits);
    if protocol == IPPROTO_UDP {
        count(Counter::UdpHits);
    }

    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let (mut verdict, rule, src) = resolve_action(config, tgid, cgroup_id, endpoint.provider);
    let generation = config.generation;
    let proxied = verdict == action::REDIRECT || verdict == action::PASSTHROUGH;
    // The proxy speaks TCP; QUIC is refused so the client falls back to it.
    if proxied && (config.proxy_port == 0 || protocol == IPPROTO_UDP) {
        verdict = action::BLOCK;
    }

    let result = match verdict {
        action::ALLOW => {
            count(Counter::Allowed);
            PASS
        }
        action::MONITOR => {
            count(Counter::Monitored);
            PASS
        }
        action::REDIRECT | action::PASSTHROUGH => {
            let redirect = Redirect {
                addr,
                port,
                action: verdict,
                _pad: 0,
                tgid,
                pid: pid_tgid as u32,
                uid: bpf_get_current_uid_gid() as u32,
                gid: (bpf_get_current_uid_gid() >> 32) as u32,
                provider: endpoint.provider,
                cgroup_id,
                comm: bpf_get_current_comm().unwrap_or([0; 16]),
                rule,
                _pad2: 0,
                generation,
                boot_ns: unsafe { bpf_ktime_get_boot_ns() },
            };
            if redirect_to_proxy(ctx, &redirect, family, config.proxy_port) {
                count(Counter::Redirected);
                PASS
            } else {
                // Could not remember where it was going: refuse rather than
                // let it out ungoverned.
                count(Counter::Blocked);
                verdict = action::BLOCK;
                REJECT
            }
        }
        _ => {
            count(Counter::Blocked);
            REJECT
        }
    };

    report(ReportArgs {
        pid_tgid,
        cgroup_id,
        addr,
        port,
        family,
        protocol,
        verdict,
        src,
        hook,
        provider: endpoint.provider,
        rule,
        generation,
    });
    result
}

#[inline(always)]
pub(crate) fn lookup_endpoint(addr: [u8; 16], port: u16, flags: u8) -> Option<EndpointValue> {
    if flags & port_flags::EXACT != 0 {
        let key = EndpointKey {
            addr,
            port,
            _pad: [0; 2],
        };
        if let Some(value) = unsafe { MG_ENDPOINTS.get(key) } {
            return Some(*value);
        }
    }
    if flags & port_flags::CIDR != 0 {
        let key = Key::new(
            CIDR_PORT_BITS + 128,
            CidrKey {
                port_be: port.to_be_bytes(),
                addr,
            },
        );
        if let Some(value) = MG_CIDRS.get(&key) {
            return Some(*value);
        }
    }
    None
}

/// Process entry, then cgroup entry, then the policy-wide entry, then the
/// default: the agent has already folded the ordered rules into these, so
/// the kernel only looks up.
#[inline(always)]
pub(crate) fn resolve_action(
    config: &AgentConfig,
    tgid: u32,
    cgroup_id: u64,
    provider: u32,
) -> (u8, u16, u8) {
    let default = (config.default_action, RULE_DEFAULT, source::DEFAULT);
    if config.fail_open_after_s != 0 && agent_gone(config.fail_open_after_s) {
        count(Counter::FailOpen);
        return (action::MONITOR, RULE_DEFAULT, source::FAIL_OPEN);
    }
    let index = provider as usize;
    if index >= limits::MAX_PROVIDERS {
        count(Counter::BadProvider);
        return default;
    }
    if config.has_proc_rules != 0
        && let Some(entry) = MG_PROC_POLICY.get_ptr(tgid)
        && let Some(hit) = entry_action(entry, index)
    {
        return (hit.0, hit.1, source::PROCESS);
    }
    if let Some(entry) = MG_CGROUP_POLICY.get_ptr(cgroup_id)
        && let Some(hit) = entry_action(entry, index)
    {
        return (hit.0, hit.1, source::CGROUP);
    }
    // Cgroup id 0 (no real cgroup has it) holds the verdicts of rules with
    // no identity condition, for cgroups that need no entry of their own.
    if let Some(entry) = MG_CGROUP_POLICY.get_ptr(GLOBAL_ENTRY)
        && let Some(hit) = entry_action(entry, index)
    {
        return (hit.0, hit.1, source::DEFAULT);
    }
    default
}

/// The agent has not beaten for `after_s` seconds (or never did).
#[inline(always)]
fn agent_gone(after_s: u16) -> bool {
    let Some(beat) = MG_HEARTBEAT.get(0) else {
        return true;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    now.saturating_sub(*beat) > u64::from(after_s) * 1_000_000_000
}

#[inline(always)]
fn entry_action(entry: *const PolicyEntry, index: usize) -> Option<(u8, u16)> {
    // `index` was checked against MAX_PROVIDERS by the caller.
    let verdict = unsafe { (*entry).actions[index] };
    if verdict == action::NONE {
        return None;
    }
    Some((verdict, unsafe { (*entry).rules[index] }))
}

struct ReportArgs {
    pid_tgid: u64,
    cgroup_id: u64,
    addr: [u8; 16],
    port: u16,
    family: u16,
    protocol: u8,
    verdict: u8,
    src: u8,
    hook: u8,
    provider: u32,
    rule: u16,
    generation: u32,
}

#[inline(always)]
fn report(args: ReportArgs) {
    let Some(mut entry) = MG_EVENTS.reserve::<ConnectEvent>(0) else {
        count(Counter::EventsLost);
        count(Counter::ConnectEventsLost);
        return;
    };
    let uid_gid = bpf_get_current_uid_gid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    entry.write(ConnectEvent {
        header: EventHeader {
            kind: EventKind::Connect as u32,
            tgid: (args.pid_tgid >> 32) as u32,
            pid: args.pid_tgid as u32,
            _pad: 0,
            boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
        cgroup_id: args.cgroup_id,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm,
        addr: args.addr,
        port: args.port,
        family: args.family,
        protocol: if args.protocol == IPPROTO_UDP {
            IPPROTO_UDP
        } else {
            IPPROTO_TCP
        },
        action: args.verdict,
        source: args.src,
        hook: args.hook,
        provider: args.provider,
        rule: args.rule,
        _pad: 0,
        generation: args.generation,
        _pad2: 0,
    });
    entry.submit(0);
}
