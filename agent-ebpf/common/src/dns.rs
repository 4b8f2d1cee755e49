//! The kernel's reading of a DNS answer, as pure code over a [`Packet`]:
//! the `cgroup_skb/ingress` program runs it on the socket buffer, and the
//! host runs the very same code on a byte slice in unit tests and in the
//! `dns_kernel` fuzz target. A bug here is a wrong address in the endpoint
//! map, so it is worth fuzzing the code the kernel runs, not a copy.
//!
//! Everything is `#[inline(always)]` so that the kernel program compiles
//! to what it was when this lived in `agent-ebpf`: the verifier sees one
//! function, with the same bounds.

use crate::{FNV_OFFSET, FNV_PRIME, limits, v4_mapped};

/// Bytes of the question name hashed; a power of two (indices wrap).
pub const NAME: usize = limits::DNS_NAME_LEN;
const _: () = assert!(NAME.is_power_of_two());
pub const DNS_PORT: u16 = 53;
pub const HEADER: usize = 12;
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const PROTO_UDP: u8 = 17;

/// Where the parser reads bytes: the socket buffer in the kernel (each read
/// is a `bpf_skb_load_bytes` at a computed offset), a slice on the host.
pub trait Packet {
    /// Bytes in the packet, IP header included.
    fn packet_len(&self) -> usize;
    /// `N` bytes at `at`; `None` past the end.
    fn load<const N: usize>(&self, at: usize) -> Option<[u8; N]>;
    /// Fills `buf[..n]` from `at`, for `1 <= n <= NAME`. The kernel's copy
    /// needs a size the verifier can bound, which is why this is not `load`.
    fn load_name(&self, at: usize, n: usize, buf: &mut [u8; NAME]) -> Option<()>;

    #[inline(always)]
    fn byte(&self, at: usize) -> Option<u8> {
        self.load::<1>(at).map(|[b]| b)
    }

    #[inline(always)]
    fn be16(&self, at: usize) -> Option<u16> {
        self.load::<2>(at).map(u16::from_be_bytes)
    }
}

impl Packet for [u8] {
    fn packet_len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn load<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    fn load_name(&self, at: usize, n: usize, buf: &mut [u8; NAME]) -> Option<()> {
        let src = self.get(at..at.checked_add(n)?)?;
        buf.get_mut(..n)?.copy_from_slice(src);
        Some(())
    }
}

/// A DNS response that passed the header checks, and its question name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    /// Offset of the DNS message (past the IP and UDP headers).
    pub msg: usize,
    /// Bytes of the DNS message.
    pub len: usize,
    /// ANCOUNT.
    pub answers: usize,
    /// `name_hash` of the whole question name.
    pub full: u64,
    /// Offset of the question name's root byte.
    pub name_end: usize,
}

/// The IP and UDP headers, then the DNS header and question of a response
/// from port 53: a response (QR), no error (RCODE 0), one question, some
/// answers, and a question name of at most `NAME` bytes.
#[inline(always)]
pub fn question<P: Packet + ?Sized>(p: &P, name: &mut [u8; NAME]) -> Option<Question> {
    let first = p.byte(0)?;
    let (udp, proto) = match first >> 4 {
        4 => (((first & 0x0f) as usize) * 4, p.byte(9)?),
        6 => (40, p.byte(6)?),
        _ => return None,
    };
    if proto != PROTO_UDP || p.be16(udp)? != DNS_PORT {
        return None;
    }
    let msg = udp + 8;
    let len = p.packet_len().checked_sub(msg)?;
    if len < HEADER {
        return None;
    }
    let flags = p.be16(msg + 2)?;
    if flags & 0x8000 == 0 || flags & 0x000f != 0 || p.be16(msg + 4)? != 1 {
        return None;
    }
    let answers = p.be16(msg + 6)? as usize;
    if answers == 0 {
        return None;
    }

    // The question name, hashed without a single branch (see `hash_from`).
    let first_len = p.byte(msg + HEADER)? as usize;
    if first_len == 0 || first_len > 63 {
        return None;
    }
    let avail = len - HEADER;
    let n = if avail > NAME { NAME } else { avail };
    if n == 0 || n > NAME {
        return None;
    }
    p.load_name(msg + HEADER, n, name)?;
    let (full, name_len, ended) = hash_from(name, 0);
    if ended == 0 {
        return None; // longer than NAME, or cut off
    }
    if labels_end_at_root(name) == 0 {
        return None;
    }
    Some(Question {
        msg,
        len,
        answers,
        full,
        name_end: msg + HEADER + name_len as usize,
    })
}

/// The A and AAAA records of the answer section, at most
/// `limits::DNS_ANSWERS` of them, as v4-mapped or v6 bytes. Owner names are
/// compressed pointers in practice; anything else ends the walk (the agent
/// still sees the whole message). `None` when a read fails, as the kernel
/// program then gives up on the packet.
#[inline(always)]
pub fn answers<P: Packet + ?Sized>(
    p: &P,
    q: &Question,
    mut on_addr: impl FnMut([u8; 16]),
) -> Option<()> {
    // Past the root byte: QTYPE and QCLASS.
    let mut pos = q.name_end + 1 + 4;
    for record in 0..limits::DNS_ANSWERS {
        if record >= q.answers || pos + 12 > q.msg + q.len {
            break;
        }
        match p.byte(pos)? {
            0 => pos += 1,
            b if b & 0xc0 == 0xc0 => pos += 2,
            _ => break,
        }
        let rtype = p.be16(pos)?;
        let rdlen = p.be16(pos + 8)? as usize;
        let rdata = pos + 10;
        let addr = match (rtype, rdlen) {
            (TYPE_A, 4) => Some(v4_mapped(p.load::<4>(rdata)?)),
            (TYPE_AAAA, 16) => Some(p.load::<16>(rdata)?),
            _ => None,
        };
        if let Some(addr) = addr {
            on_addr(addr);
        }
        pos = rdata + rdlen;
    }
    Some(())
}

/// The hash of the wire-form name in `buf` from byte `start` to its root
/// label, with the number of bytes before the root and whether the root
/// was found. One fixed pass of pure arithmetic: any per-byte branch (a
/// comparison, a `match`) forks the verifier's paths at every byte and the
/// program never loads. Indices wrap within the buffer; bytes past the
/// root are multiplied by 0.
#[inline(always)]
pub fn hash_from(buf: &[u8; NAME], start: usize) -> (u64, u64, u64) {
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

/// 1 when the wire-form name in `buf` is well-formed labels up to its
/// first zero byte: that zero sits where a label length is expected (it is
/// the root), and no label length before it exceeds 63 (which also refuses
/// compression pointers, never used in a question). `hash_from` ends a
/// name at its first zero byte; without this check a zero *inside* a
/// label would end it early while a real parser (the agent's) reads on,
/// and the answer walk would start inside the name, taking bytes the
/// sender chose there for address records that the agent never sees and
/// so never expires. Branch-free like `hash_from`, for the same reason.
#[inline(always)]
pub fn labels_end_at_root(buf: &[u8; NAME]) -> u64 {
    let (mut next_len_at, mut past_end, mut bad) = (0u64, 0u64, 0u64);
    for (j, &byte) in buf.iter().enumerate() {
        let b = byte as u64;
        let zero = b.wrapping_sub(1) >> 63;
        // 1 when this byte is where the next label length is due.
        let at_len = ((j as u64) ^ next_len_at).wrapping_sub(1) >> 63;
        // 1 for 64..=255: not a label length.
        let long = ((b >> 6) + 3) >> 2;
        let live = 1 - past_end;
        bad |= live * ((zero * (1 - at_len)) | (at_len * long));
        next_len_at += live * at_len * (1 + b);
        past_end |= zero;
    }
    (1 - bad) * past_end
}

/// ASCII lowercase without a branch (the usual `matches!` would fork the
/// verifier's paths at every byte): bit 7 of `(c + 0x3f) & !(c + 0x25)` is
/// set exactly for 'A'..='Z'; shifted down it is the 0x20 case bit.
#[inline(always)]
pub fn fold_case(c: u8) -> u8 {
    let c32 = c as u32;
    let upper = ((c32 + 0x3f) & !(c32 + 0x25)) & 0x80;
    c | (upper >> 2) as u8
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{vec, vec::Vec};

    use super::*;
    use crate::name_hash;

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// An IPv4/UDP packet from port 53 carrying a response to `name` with
    /// `records` answers (type, rdata), owners compressed to the question.
    fn packet(flags: u16, name: &str, records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 8, 8, 8, 8, 10, 0, 0, 1,
        ];
        p.extend_from_slice(&[0, 53, 0x9c, 0x40, 0, 0, 0, 0]);
        p.extend_from_slice(&[0x12, 0x34]);
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p.extend_from_slice(&(records.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(&wire(name));
        p.extend_from_slice(&[0, 1, 0, 1]);
        for (rtype, rdata) in records {
            p.extend_from_slice(&[0xc0, 0x0c]);
            p.extend_from_slice(&rtype.to_be_bytes());
            p.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            p.extend_from_slice(rdata);
        }
        p
    }

    fn learn(p: &[u8]) -> Option<(Question, Vec<[u8; 16]>)> {
        let q = question(p, &mut [0; NAME])?;
        let mut addrs = Vec::new();
        answers(p, &q, |a| addrs.push(a))?;
        Some((q, addrs))
    }

    #[test]
    fn reads_a_and_aaaa_answers_and_hashes_like_the_agent() {
        let v6 = [
            0x26, 0x06, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa2, 0x9f,
        ];
        let p = packet(
            0x8180,
            "API.OpenAI.com",
            &[
                (TYPE_A, &[10, 0, 0, 9]),
                (5, b"\x03foo\x00"),
                (TYPE_AAAA, &v6),
            ],
        );
        let (q, addrs) = learn(&p).expect("a valid answer is read");
        assert_eq!(
            q.full,
            name_hash(b"api.openai.com"),
            "case-folded full name"
        );
        let mut name = [0; NAME];
        question(&p[..], &mut name).unwrap();
        assert_eq!(crate::wildcard::label_starts(&name, true).count, 3);
        assert_eq!(q.answers, 3);
        assert_eq!(
            addrs,
            vec![v4_mapped([10, 0, 0, 9]), v6],
            "A and AAAA, CNAME skipped"
        );
    }

    #[test]
    fn ignores_queries_errors_and_other_ports() {
        let a: &[(u16, &[u8])] = &[(TYPE_A, &[10, 0, 0, 9])];
        assert!(
            question(&packet(0x0100, "api.openai.com", a)[..], &mut [0; NAME]).is_none(),
            "a query"
        );
        assert!(
            question(&packet(0x8183, "api.openai.com", a)[..], &mut [0; NAME]).is_none(),
            "NXDOMAIN"
        );
        assert!(
            question(&packet(0x8180, "api.openai.com", &[])[..], &mut [0; NAME]).is_none(),
            "no answers"
        );
        let mut p = packet(0x8180, "api.openai.com", a);
        p[21] = 54;
        assert!(
            question(&p[..], &mut [0; NAME]).is_none(),
            "not from port 53"
        );
    }

    #[test]
    fn stops_at_the_answer_bound_and_at_truncation() {
        let records: Vec<(u16, &[u8])> = (0..12).map(|_| (TYPE_A, &[10, 0, 0, 1][..])).collect();
        let (_, addrs) = learn(&packet(0x8180, "api.openai.com", &records)).unwrap();
        assert_eq!(
            addrs.len(),
            limits::DNS_ANSWERS,
            "walk bounded by DNS_ANSWERS"
        );

        let p = packet(0x8180, "api.openai.com", &[(TYPE_A, &[10, 0, 0, 1])]);
        for cut in 0..p.len() {
            // Any prefix is read without panicking; none yields an address
            // whose bytes were not all there.
            if let Some((_, addrs)) = learn(&p[..cut]) {
                assert!(addrs.is_empty(), "an address from a packet cut at {cut}");
            }
        }
    }

    /// Found by the `dns_answer` fuzz target: the question label `i\0\0`
    /// ended the name at its first zero for the kernel, which then read
    /// the rest of the question as an A record for 105.0.0.1 that the
    /// agent (reading labels) never saw.
    #[test]
    fn a_zero_inside_a_label_is_not_the_root() {
        let msg: &[u8] = &[
            0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x03, 0x69,
            0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05,
            0x00, 0x04, 0x69, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00,
            0x00, 0x00, 0x05, 0x00, 0x04, 0x0a, 0x00, 0x00, 0x07,
        ];
        let mut p = packet(0x8180, "x", &[]);
        p.truncate(28);
        p.extend_from_slice(msg);
        assert_eq!(learn(&p), None, "a name cut inside a label is refused");

        // The same trick behind a matching suffix: `\x05my\0es.openai.azure.com`.
        let mut name = vec![5, b'm', b'y', 0, b'e', b's'];
        name.extend_from_slice(&wire("openai.azure.com"));
        let mut p = packet(0x8180, "x", &[(TYPE_A, &[10, 0, 0, 1])]);
        let at = 28 + HEADER;
        p.splice(at..at + 3, name);
        assert!(
            question(&p[..], &mut [0; NAME]).is_none(),
            "a zero inside the first label"
        );
    }

    #[test]
    fn label_structure_is_checked_without_branches() {
        let mut buf = [0u8; NAME];
        let ok = wire("api.openai.com");
        buf[..ok.len()].copy_from_slice(&ok);
        assert_eq!(labels_end_at_root(&buf), 1, "a plain name");
        let mut long = [0u8; NAME];
        long[0] = 64;
        assert_eq!(labels_end_at_root(&long), 0, "a label length over 63");
        let mut pointer = [0u8; NAME];
        pointer[..2].copy_from_slice(&[0xc0, 0x0c]);
        assert_eq!(labels_end_at_root(&pointer), 0, "a compression pointer");
        let full = [1u8; NAME];
        assert_eq!(labels_end_at_root(&full), 0, "no root at all");
        // The longest name that fits: labels of 63, 63 and 0 (root).
        let mut max = [b'a'; NAME];
        max[0] = 63;
        max[64] = 62;
        max[127] = 0;
        assert_eq!(labels_end_at_root(&max), 1, "a name filling the buffer");
    }

    #[test]
    fn fold_case_lowercases_ascii_letters_only() {
        for c in 0..=255u8 {
            let want = if c.is_ascii_uppercase() { c + 32 } else { c };
            assert_eq!(fold_case(c), want, "byte {c:#04x}");
        }
    }
}
