//! `*.suffix` catalog names matched at any depth: `a.b.openai.azure.com`
//! is below `*.openai.azure.com` as much as `a.openai.azure.com` is. The
//! kernel cannot try every label of a name as the start of a suffix (a
//! hash per label, up to 64 of them), but it need not: a suffix has a
//! known number of labels, at most [`SUFFIX_LABELS`], and the catalog says
//! which counts occur. So the name's last few label starts are found in
//! one pass, and only suffixes of those lengths are hashed and looked up.
//! The agent matches with `ends_with`; the `sni` fuzz target holds the two
//! to each other.

use crate::{
    DnsName, FNV_OFFSET, FNV_PRIME,
    dns::{NAME, fold_case, hash_from},
};

/// The most labels a wildcard's suffix may have (`*.openai.azure.com`
/// has 3); the catalog refuses more. What is below it may be any depth.
pub const SUFFIX_LABELS: usize = 8;

/// Which bytes of the name in `buf` start a label, as a bit set (bit `j`
/// of the 128 for byte `j`). `wire` is DNS wire form (length-prefixed
/// labels, ended by the root), else dotted (ended by the first zero
/// byte). One fixed pass without a branch per byte, like `hash_from`, for
/// the same reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Labels {
    bits: [u64; 2],
    /// How many labels the name has.
    pub count: u64,
}

#[inline(always)]
pub fn label_starts(buf: &[u8; NAME], wire: bool) -> Labels {
    let mut bits = [0u64; 2];
    let (mut count, mut past_end, mut next_len_at, mut after_dot) = (0u64, 0u64, 0u64, 1u64);
    for (j, &byte) in buf.iter().enumerate() {
        let b = byte as u64;
        let zero = b.wrapping_sub(1) >> 63;
        let live = (1 - past_end) * (1 - zero);
        let at_len = ((j as u64) ^ next_len_at).wrapping_sub(1) >> 63;
        let start = live * if wire { at_len } else { after_dot };
        bits[j / 64] |= start << (j % 64);
        count += start;
        next_len_at += live * at_len * (1 + b);
        after_dot = (b ^ b'.' as u64).wrapping_sub(1) >> 63;
        past_end |= zero;
    }
    Labels { bits, count }
}

/// The hashes (as `hash_from` makes them) of the name's suffixes made of
/// its last 1..=[`SUFFIX_LABELS`] labels: `hashes[k]` for `k + 1` labels.
/// One backward pass over the name, branch-free, whatever the number of
/// suffixes: a `hash_from` per suffix cost the verifier a 128-byte loop
/// each, on every path into it, past its 1M-instruction budget, and a
/// lookup per label start forked its paths at every byte. Going
/// backwards, `hash(j) = byte(j) + P * hash(j + 1)` is `hash_from(buf, j)`
/// before its final xor.
#[inline(always)]
pub fn suffix_hashes(buf: &[u8; NAME], labels: &Labels) -> [u64; SUFFIX_LABELS] {
    let (_, len, _) = hash_from(buf, 0);
    let mut hashes = [0u64; SUFFIX_LABELS];
    let (mut hash, mut seen) = (0u64, 0u64);
    for j in (0..NAME).rev() {
        let in_name = (j as u64).wrapping_sub(len) >> 63; // j < len
        let c = fold_case(buf[j]) as u64;
        hash = in_name * c.wrapping_add(FNV_PRIME.wrapping_mul(hash));
        let start = (labels.bits[j / 64] >> (j % 64)) & 1;
        for (k, slot) in hashes.iter_mut().enumerate() {
            // This start begins the suffix of `seen + 1` labels.
            let here = start * ((k as u64 ^ seen).wrapping_sub(1) >> 63);
            *slot = slot.wrapping_add(here.wrapping_mul((hash ^ FNV_OFFSET).wrapping_sub(*slot)));
        }
        seen += start;
    }
    hashes
}

/// The catalog entry of the most specific `*.suffix` that the name in
/// `buf` is below, if any. `counts` has bit `k` set when some catalog
/// suffix has `k + 1` labels (`AgentConfig::suffix_labels`): only those
/// lengths are looked up. `flag` is the `dns_flags` bit of the form (wire
/// or dotted); `get` looks a hash up.
#[inline(always)]
pub fn below_suffix<F: Fn(u64) -> Option<DnsName>>(
    buf: &[u8; NAME],
    wire: bool,
    counts: u8,
    flag: u32,
    get: F,
) -> Option<DnsName> {
    if counts == 0 {
        return None;
    }
    let labels = label_starts(buf, wire);
    let hashes = suffix_hashes(buf, &labels);
    // Longest suffix first: `*.openai.azure.com` before `*.azure.com`.
    for k in (0..SUFFIX_LABELS).rev() {
        // A suffix of k + 1 labels needs at least one label before it.
        if counts & (1 << k) == 0 || labels.count < k as u64 + 2 {
            continue;
        }
        if let Some(entry) = get(hashes[k])
            && entry.flags & flag != 0
        {
            return Some(entry);
        }
    }
    None
}

/// Bit `k` set for a suffix of `k + 1` labels; `None` past [`SUFFIX_LABELS`].
pub fn suffix_count_bit(dotted: &str) -> Option<u8> {
    let labels = dotted.split('.').count();
    (labels <= SUFFIX_LABELS).then(|| 1u8 << (labels - 1))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{collections::HashMap, vec::Vec};

    use super::*;
    use crate::{dns_flags, dotted_hash, name_hash};

    fn dotted(name: &str) -> [u8; NAME] {
        let mut buf = [0u8; NAME];
        buf[..name.len()].copy_from_slice(name.as_bytes());
        buf
    }

    fn wire(name: &str) -> [u8; NAME] {
        let mut buf = [0u8; NAME];
        let mut at = 0;
        for label in name.split('.') {
            buf[at] = label.len() as u8;
            buf[at + 1..at + 1 + label.len()].copy_from_slice(label.as_bytes());
            at += 1 + label.len();
        }
        buf
    }

    /// A catalog of `*.suffix` names, as both programs' map holds them.
    fn catalog(suffixes: &[(&str, u32)]) -> (HashMap<u64, DnsName>, u8) {
        let mut map = HashMap::new();
        let mut counts = 0;
        for &(suffix, provider) in suffixes {
            counts |= suffix_count_bit(suffix).unwrap();
            let entry = |flags| DnsName {
                provider,
                flags,
                ports: [443; crate::limits::DNS_PORTS],
            };
            map.insert(name_hash(suffix.as_bytes()), entry(dns_flags::SUFFIX));
            map.insert(dotted_hash(suffix.as_bytes()), entry(dns_flags::SNI_SUFFIX));
        }
        (map, counts)
    }

    fn provider(map: &(HashMap<u64, DnsName>, u8), name: &str) -> (Option<u32>, Option<u32>) {
        let get = |h| map.0.get(&h).copied();
        let sni = below_suffix(&dotted(name), false, map.1, dns_flags::SNI_SUFFIX, get);
        let dns = below_suffix(&wire(name), true, map.1, dns_flags::SUFFIX, get);
        (sni.map(|e| e.provider), dns.map(|e| e.provider))
    }

    #[test]
    fn names_at_any_depth_match_in_both_forms() {
        let map = catalog(&[("openai.azure.com", 1)]);
        for name in [
            "a.openai.azure.com",
            "a.b.openai.azure.com",
            "x.y.z.w.v.u.t.s.r.q.openai.azure.com",
            "A.B.OpenAI.Azure.COM",
        ] {
            assert_eq!(provider(&map, name), (Some(1), Some(1)), "{name}");
        }
        for name in [
            "openai.azure.com",
            "azure.com",
            "a.openai.azure.co",
            "a.xopenai.azure.com",
            "a.openai.azure.com.evil",
        ] {
            assert_eq!(provider(&map, name), (None, None), "{name}");
        }
    }

    #[test]
    fn the_most_specific_suffix_wins_and_lengths_not_in_the_catalog_are_skipped() {
        let map = catalog(&[("azure.com", 1), ("openai.azure.com", 2)]);
        assert_eq!(provider(&map, "a.b.openai.azure.com"), (Some(2), Some(2)));
        assert_eq!(provider(&map, "a.b.other.azure.com"), (Some(1), Some(1)));
        // Without the count bit the lookup is not even tried.
        let (names, _) = catalog(&[("openai.azure.com", 2)]);
        assert_eq!(provider(&(names, 0), "a.openai.azure.com"), (None, None));
    }

    #[test]
    fn every_suffix_length_of_a_long_name_is_found_in_both_forms() {
        let name = "l0.l1.l2.l3.l4.l5.l6.l7.l8.l9.l10";
        let parts: Vec<&str> = name.split('.').collect();
        for k in 1..=SUFFIX_LABELS {
            let suffix = parts[parts.len() - k..].join(".");
            let map = catalog(&[(suffix.as_str(), k as u32)]);
            assert_eq!(
                provider(&map, name),
                (Some(k as u32), Some(k as u32)),
                "{suffix}"
            );
            assert_eq!(label_starts(&wire(name), true).count, 11);
        }
        assert!(suffix_count_bit("a.b.c.d.e.f.g.h").is_some());
        assert!(suffix_count_bit("a.b.c.d.e.f.g.h.i").is_none());
    }
}
