//! `*.suffix` lookups for the DNS and SNI programs
//! (`wildcard::below_suffix`), as a function of its own: its frame is not
//! added to the callers' stacks, which already hold the name.

use agent_common::{DnsName, dns::NAME, wildcard::below_suffix};

use crate::dns::MG_DNS_NAMES;

#[inline(never)]
pub(crate) fn below(name: &[u8; NAME], wire: bool, counts: u8, flag: u32) -> Option<DnsName> {
    below_suffix(name, wire, counts, flag, |hash| {
        unsafe { MG_DNS_NAMES.get(hash) }.copied()
    })
}
