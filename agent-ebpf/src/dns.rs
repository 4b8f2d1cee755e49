//! Learning endpoint addresses from DNS answers, in the kernel.
//!
//! A `cgroup_skb/ingress` program sees every DNS answer before the asking
//! socket does. When the question names a catalog host (exactly, or below
//! a `*.suffix`), the answer's A/AAAA records go into `MG_ENDPOINTS` right
//! here, so the connect() that follows the lookup is caught: there is no
//! window between the answer and the map update. A copy goes to the agent,
//! which tracks TTLs and removes addresses that expire.

use agent_common::{
    Counter, DnsEvent, DnsName, EndpointKey, EndpointValue, EventHeader, EventKind,
    dns::{self, HEADER},
    dns_flags, limits,
};
use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::{HashMap, PerCpuArray},
    programs::SkBuffContext,
};

use crate::{
    maps::{MG_CONFIG, MG_ENDPOINTS, MG_EVENTS, count},
    skb::Skb,
};

const BUF: usize = limits::DNS_PAYLOAD;

/// Scratch for the question name. Only this program uses it: another
/// (the egress one, in process context) may be interrupted by it on the
/// same CPU.
#[map]
static MG_DNS_QNAME: PerCpuArray<[u8; dns::NAME]> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static MG_DNS_NAMES: HashMap<u64, DnsName> =
    HashMap::with_max_entries(limits::DNS_NAMES, 0);

#[cgroup_skb(ingress)]
pub fn mg_dns_answers(ctx: SkBuffContext) -> i32 {
    let _ = learn(&ctx);
    // Never drop: learning must not change what the application receives.
    1
}

#[inline(always)]
fn learn(ctx: &SkBuffContext) -> Option<()> {
    let packet = Skb(ctx);
    // The question name, wire form: `*.suffix` matches walk it. Kept in
    // a per-CPU map, not on the stack: with the walk's own frame the
    // stack would pass 512 bytes.
    let name = unsafe { &mut *MG_DNS_QNAME.get_ptr_mut(0)? };
    *name = [0u8; dns::NAME];
    let q = dns::question(&packet, name)?;
    // The whole name (exact), else a `*.suffix` it is below, at any
    // depth (`myres.openai.azure.com`, `a.b.openai.azure.com`).
    let entry = match unsafe { MG_DNS_NAMES.get(q.full) } {
        Some(entry) if entry.flags & dns_flags::EXACT != 0 => *entry,
        _ => {
            let counts = MG_CONFIG.get(0)?.suffix_labels;
            crate::suffix::below(name, true, counts, dns_flags::SUFFIX)?
        }
    };
    count(Counter::DnsMatches);
    dns::answers(&packet, &q, |addr| insert(&entry, addr))?;
    // Always: the agent reads the message itself. Keeping a count here
    // would fork the verifier's paths per answer.
    report(ctx, q.msg, q.len, &entry);
    Some(())
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
