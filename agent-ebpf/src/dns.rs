//! Learning endpoint addresses from DNS answers, in the kernel.
//!
//! A `cgroup_skb/ingress` program sees every DNS answer before the asking
//! socket does. When the question names a catalog host (exactly, or below
//! a `*.suffix`), the answer's A/AAAA records go into `MG_ENDPOINTS` right
//! here, so the connect() that follows the lookup is caught: there is no
//! window between the answer and the map update. A copy goes to the agent,
//! which tracks TTLs and removes addresses that expire.

use agent_common::{
    Counter, DnsEvent, DnsName, EndpointKey, EndpointValue, EventHeader, EventKind, FNV_OFFSET,
    FNV_PRIME, dns_flags, limits, v4_mapped,
};
use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::HashMap,
    programs::SkBuffContext,
};

use crate::maps::{MG_ENDPOINTS, MG_EVENTS, count};

const BUF: usize = limits::DNS_PAYLOAD;
pub(crate) const NAME: usize = limits::DNS_NAME_LEN;
const DNS_PORT: u16 = 53;
const HEADER: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

#[map]
pub(crate) static MG_DNS_NAMES: HashMap<u64, DnsName> =
    HashMap::with_max_entries(limits::DNS_NAMES, 0);

#[cgroup_skb(ingress)]
pub fn mg_dns_answers(ctx: SkBuffContext) -> i32 {
    let _ = learn(&ctx);
    // Never drop: learning must not change what the application receives.
    1
}

// Every read goes through bpf_skb_load_bytes at a computed offset rather
// than indexing a copied buffer: the offsets then never have to be proven
// exact, the verifier can prune equivalent states, and the loops below
// stay far from its instruction limit.
#[inline(always)]
fn byte(ctx: &SkBuffContext, at: usize) -> Option<u8> {
    ctx.load::<u8>(at).ok()
}

#[inline(always)]
fn be16(ctx: &SkBuffContext, at: usize) -> Option<u16> {
    ctx.load::<u16>(at).ok().map(u16::from_be)
}

#[inline(always)]
fn learn(ctx: &SkBuffContext) -> Option<()> {
    let first = byte(ctx, 0)?;
    let (udp, proto) = match first >> 4 {
        4 => (((first & 0x0f) as usize) * 4, byte(ctx, 9)?),
        6 => (40, byte(ctx, 6)?),
        _ => return None,
    };
    if proto != 17 || be16(ctx, udp)? != DNS_PORT {
        return None;
    }
    let msg = udp + 8;
    let len = (ctx.len() as usize).checked_sub(msg)?;
    if len < HEADER {
        return None;
    }
    // A response (QR), no error (RCODE 0), one question, some answers.
    let flags = be16(ctx, msg + 2)?;
    if flags & 0x8000 == 0 || flags & 0x000f != 0 || be16(ctx, msg + 4)? != 1 {
        return None;
    }
    let answers = be16(ctx, msg + 6)? as usize;
    if answers == 0 {
        return None;
    }

    // The question name, hashed without a single branch (see `hash_name`).
    let first_len = byte(ctx, msg + HEADER)? as usize;
    if first_len == 0 || first_len > 63 {
        return None;
    }
    let avail = len - HEADER;
    let n = if avail > NAME { NAME } else { avail };
    let mut name = [0u8; NAME];
    // A size the verifier can bound: 1..=NAME.
    if n == 0
        || n > NAME
        || unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                (msg + HEADER) as u32,
                name.as_mut_ptr().cast(),
                n as u32,
            )
        } != 0
    {
        return None;
    }
    let (full, name_len, ended) = hash_from(&name, 0);
    if ended == 0 {
        return None; // longer than NAME, or cut off
    }
    // The whole name (exact), else the name minus its first label
    // (`*.suffix` one level down, as in `myres.openai.azure.com`).
    let (suffix, _, _) = hash_from(&name, 1 + first_len);
    let entry = match unsafe { MG_DNS_NAMES.get(full) } {
        Some(entry) if entry.flags & dns_flags::EXACT != 0 => *entry,
        _ => match unsafe { MG_DNS_NAMES.get(suffix) } {
            Some(entry) if entry.flags & dns_flags::SUFFIX != 0 => *entry,
            _ => return None,
        },
    };
    count(Counter::DnsMatches);
    let name_end = msg + HEADER + name_len as usize;

    // Answers: owner names are compressed pointers in practice; anything
    // else ends the walk (the agent still sees the whole message).
    let mut pos = name_end + 1 + 4;
    for record in 0..limits::DNS_ANSWERS {
        if record >= answers || pos + 12 > msg + len {
            break;
        }
        match byte(ctx, pos)? {
            0 => pos += 1,
            b if b & 0xc0 == 0xc0 => pos += 2,
            _ => break,
        }
        let rtype = be16(ctx, pos)?;
        let rdlen = be16(ctx, pos + 8)? as usize;
        let rdata = pos + 10;
        let addr = match (rtype, rdlen) {
            (TYPE_A, 4) => Some(v4_mapped(ctx.load::<[u8; 4]>(rdata).ok()?)),
            (TYPE_AAAA, 16) => Some(ctx.load::<[u8; 16]>(rdata).ok()?),
            _ => None,
        };
        if let Some(addr) = addr {
            insert(&entry, addr);
        }
        pos = rdata + rdlen;
    }
    // Always: the agent reads the message itself. Keeping a count here
    // would fork the verifier's paths per answer.
    report(ctx, msg, len, &entry);
    Some(())
}

/// The hash of the wire-form name in `buf` from byte `start` to its root
/// label, with the number of bytes before the root and whether the root
/// was found. One fixed pass of pure arithmetic: any per-byte branch (a
/// comparison, a `match`) forks the verifier's paths at every byte and the
/// program never loads. Indices wrap within the buffer; bytes past the
/// root are multiplied by 0.
#[inline(always)]
pub(crate) fn hash_from(buf: &[u8; NAME], start: usize) -> (u64, u64, u64) {
    let (mut hash, mut power) = (0u64, 1u64);
    let (mut past_end, mut len) = (0u64, 0u64);
    for j in 0..NAME {
        let byte = buf[(start + j) & (NAME - 1)];
        let b = byte as u64;
        // 1 when b == 0: the root label ends the name.
        let zero = b.wrapping_sub(1) >> 63;
        let in_name = (1 - past_end) * (1 - zero);
        past_end |= zero;
        len += in_name;
        let c = fold_case(byte) as u64 * in_name;
        hash = hash.wrapping_add(c.wrapping_mul(power));
        power = power.wrapping_mul(FNV_PRIME);
    }
    (hash ^ FNV_OFFSET, len, past_end)
}

/// ASCII lowercase without a branch (the usual `matches!` would fork the
/// verifier's paths at every byte): bit 7 of `(c + 0x3f) & !(c + 0x25)` is
/// set exactly for 'A'..='Z'; shifted down it is the 0x20 case bit.
#[inline(always)]
fn fold_case(c: u8) -> u8 {
    let c32 = c as u32;
    let upper = ((c32 + 0x3f) & !(c32 + 0x25)) & 0x80;
    c | (upper >> 2) as u8
}

#[inline(always)]
fn insert(entry: &DnsName, addr: [u8; 16]) {
    let value = EndpointValue {
        provider: entry.provider,
        _reserved: 0,
    };
    // No `port == 0` test: a branch per port would fork the verifier's
    // paths; the agent fills unused slots with a repeat of a real port.
    for port in entry.ports {
        let key = EndpointKey {
            addr,
            port,
            _pad: [0; 2],
        };
        // BPF_NOEXIST: an address the catalog already assigns keeps its
        // provider; only new addresses are added. The result is not looked
        // at, so no branch per insert multiplies the verifier's paths.
        let _ = MG_ENDPOINTS.insert(key, value, 1);
    }
    count(Counter::DnsLearned);
}

#[inline(always)]
fn report(ctx: &SkBuffContext, msg: usize, len: usize, entry: &DnsName) {
    let Some(mut event) = MG_EVENTS.reserve::<DnsEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let ptr = event.as_mut_ptr();
    unsafe {
        (*ptr).header = EventHeader {
            kind: EventKind::Dns as u32,
            tgid: 0,
            pid: 0,
            _pad: 0,
            boot_ns: bpf_ktime_get_boot_ns(),
        };
        // Softirq context: "current" is not the receiver, so no cgroup.
        (*ptr).cgroup_id = 0;
        (*ptr).provider = entry.provider;
        (*ptr).learned = 0;
        (*ptr)._pad = 0;
        let copy = if len > BUF { BUF } else { len };
        (*ptr).len = 0;
        // A size the verifier can bound: 12..=512.
        if (HEADER..=BUF).contains(&copy)
            && bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                msg as u32,
                (*ptr).payload.as_mut_ptr().cast(),
                copy as u32,
            ) == 0
        {
            (*ptr).len = copy as u32;
        }
    }
    event.submit(0);
}
