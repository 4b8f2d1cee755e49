//! The SNI backstop: a TLS ClientHello (or a cleartext HTTP `CONNECT`)
//! leaving a governed cgroup for an address that is not a known endpoint
//! is copied to the agent, which reads the name it asks for. A model API
//! reached on an address nobody told us about is learned and reported.

use agent_common::{
    Counter, EGRESS_BYTES, EgressEvent, EndpointKey, EventHeader, EventKind, egress_kind, v4_mapped,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
            bpf_skb_load_bytes,
        },
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::maps::{MG_ENDPOINTS, MG_EVENTS, MG_REDIRECT_COOKIE, count};

/// Full-size segments are bulk data, never a hello or a CONNECT line:
/// skipping them keeps the cost off the data path.
const MAX_INTERESTING: usize = 1400;

#[cgroup_skb(egress)]
pub fn mg_first_bytes(ctx: SkBuffContext) -> i32 {
    let _ = look(&ctx);
    // Never drop: this program only reports.
    1
}

#[inline(always)]
fn look(ctx: &SkBuffContext) -> Option<()> {
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
    if !(6..=MAX_INTERESTING).contains(&len) {
        return None;
    }
    let head: [u8; 8] = ctx.load(payload).ok()?;
    let kind = if head[0] == 0x16 && head[5] == 0x01 {
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
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    if unsafe { MG_REDIRECT_COOKIE.get(cookie) }.is_some() {
        return None;
    }
    report(ctx, payload, len, kind, addr, port);
    Some(())
}

#[inline(always)]
fn report(ctx: &SkBuffContext, payload: usize, len: usize, kind: u32, addr: [u8; 16], port: u16) {
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
        (*ptr).addr = addr;
        (*ptr).port = port;
        (*ptr)._pad = 0;
        (*ptr).kind = kind;
        (*ptr)._pad2 = 0;
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
