//! The kernel's reading of the server name in a TLS ClientHello, as pure
//! code over a [`Packet`]: the `cgroup_skb/egress` program runs it on the
//! socket buffer, and the host runs the very same code in unit tests and in
//! the `sni` fuzz target, which holds it to the agent's own parser. A name
//! read differently here is a hello the kernel lets through that the
//! server (and the agent) would read as a model API's.

use crate::dns::{NAME, Packet};

/// Extensions walked looking for server_name. Clients put it among the
/// first few; a hello that hides it further cannot be judged in the
/// kernel ([`Sni::Unreadable`]).
pub const MAX_EXTENSIONS: usize = 24;

/// What the kernel could tell of a ClientHello's server name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sni {
    /// A host name of this many bytes.
    Name(usize),
    /// Every extension walked, none a server_name: a hello to an address
    /// without a name (a server reached by IP).
    Absent,
    /// Not judged: cut off in these bytes, past [`MAX_EXTENSIONS`], a
    /// name that is not a host_name or does not fit `NAME - 1` bytes.
    Unreadable,
}

/// Fills `buf` with the host name of the ClientHello at `payload` (`len`
/// bytes from there), NUL-padded and without its trailing dot (the root,
/// as the agent reads it), and returns its length. `None` unless
/// [`read`] finds a name.
#[inline(always)]
pub fn server_name<P: Packet + ?Sized>(
    p: &P,
    payload: usize,
    len: usize,
    buf: &mut [u8; NAME],
) -> Option<usize> {
    match read(p, payload, len, buf) {
        Sni::Name(len) => Some(len),
        Sni::Absent | Sni::Unreadable => None,
    }
}

/// The server name of the ClientHello at `payload` (`len` bytes from
/// there), written to `buf` as [`server_name`] does, or why there is none.
#[inline(always)]
pub fn read<P: Packet + ?Sized>(p: &P, payload: usize, len: usize, buf: &mut [u8; NAME]) -> Sni {
    walk(p, payload, len, buf).unwrap_or(Sni::Unreadable)
}

#[inline(always)]
fn walk<P: Packet + ?Sized>(
    p: &P,
    payload: usize,
    len: usize,
    buf: &mut [u8; NAME],
) -> Option<Sni> {
    let end = payload + len;
    // record (5) + handshake header (4) + version (2) + random (32)
    let mut pos = payload + 43;
    pos += 1 + p.byte(pos)? as usize;
    pos += 2 + p.be16(pos)? as usize;
    pos += 1 + p.byte(pos)? as usize;
    let extensions_end = pos + 2 + p.be16(pos)? as usize;
    pos += 2;
    let (mut sni_at, mut walked) = (0usize, false);
    for _ in 0..MAX_EXTENSIONS {
        if pos + 4 > extensions_end {
            // The list ends here, unless it has trailing bytes.
            walked = pos == extensions_end;
            break;
        }
        if pos + 4 > end {
            break;
        }
        let header: [u8; 4] = p.load(pos)?;
        if header[0] == 0 && header[1] == 0 {
            sni_at = pos + 4;
            break;
        }
        pos += 4 + u16::from_be_bytes([header[2], header[3]]) as usize;
    }
    if sni_at == 0 {
        return Some(if walked { Sni::Absent } else { Sni::Unreadable });
    }
    // server_name_list length (2), name type (1), name length (2).
    if p.byte(sni_at + 2)? != 0 {
        return None; // only host_name is defined
    }
    let name_len = p.be16(sni_at + 3)? as usize;
    if name_len == 0 || name_len >= NAME {
        return None;
    }
    p.load_name(sni_at + 5, name_len, buf)?;
    let len = trim_trailing_dot(buf, name_len);
    (len > 0).then_some(Sni::Name(len))
}

/// Zeroes a dot at the end of the `len` bytes of `buf`; the new length.
/// Arithmetic on one bounded index, no branch.
#[inline(always)]
pub(crate) fn trim_trailing_dot(buf: &mut [u8; NAME], len: usize) -> usize {
    let len = len as u64;
    let last = (len.wrapping_sub(1) as usize) & (NAME - 1);
    // 1 when the last byte is a dot and there is one.
    let dot = (((buf[last] ^ b'.') as u64).wrapping_sub(1) >> 63) & (len.wrapping_neg() >> 63);
    buf[last] *= (1 - dot) as u8;
    (len - dot) as usize
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{string::String, vec, vec::Vec};

    use super::*;

    /// A ClientHello whose extensions are `extensions` (type, data).
    fn hello(extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut record = vec![0x16, 3, 1];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
    }

    fn sni(name: &[u8], kind: u8) -> Vec<u8> {
        let mut data = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        data.push(kind);
        data.extend_from_slice(&(name.len() as u16).to_be_bytes());
        data.extend_from_slice(name);
        data
    }

    fn read(packet: &[u8]) -> Option<String> {
        let mut buf = [0u8; NAME];
        let n = server_name(packet, 0, packet.len(), &mut buf)?;
        assert!(buf[n..].iter().all(|&b| b == 0), "NUL-padded past the name");
        Some(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    #[test]
    fn reads_the_host_name_after_other_extensions() {
        let p = hello(&[(10, &[0, 2, 0, 29]), (0, &sni(b"api.openai.com", 0))]);
        assert_eq!(read(&p).as_deref(), Some("api.openai.com"));
    }

    #[test]
    fn the_trailing_dot_is_not_part_of_the_name() {
        let p = hello(&[(0, &sni(b"api.openai.com.", 0))]);
        assert_eq!(read(&p).as_deref(), Some("api.openai.com"));
        // Only the root: the agent reads no name in "host..".
        let p = hello(&[(0, &sni(b"api.openai.com..", 0))]);
        assert_eq!(read(&p).as_deref(), Some("api.openai.com."));
        assert_eq!(read(&hello(&[(0, &sni(b".", 0))])), None, "no name");
    }

    #[test]
    fn refuses_other_name_types_long_names_and_hidden_extensions() {
        assert_eq!(read(&hello(&[(0, &sni(b"api.openai.com", 1))])), None);
        assert_eq!(read(&hello(&[(0, &sni(&[b'a'; NAME], 0))])), None);
        let padding = [(21u16, &[0u8; 4][..]); MAX_EXTENSIONS];
        let mut exts = padding.to_vec();
        let name = sni(b"api.openai.com", 0);
        exts.push((0, &name));
        assert_eq!(read(&hello(&exts)), None);
        let p = hello(&[(0, &sni(b"api.openai.com", 0))]);
        assert_eq!(read(&p[..p.len() - 4]), None, "cut off");
    }

    fn kind(packet: &[u8]) -> Sni {
        super::read(packet, 0, packet.len(), &mut [0u8; NAME])
    }

    #[test]
    fn tells_a_hello_without_a_name_from_one_that_cannot_be_read() {
        assert_eq!(kind(&hello(&[(10, &[0, 2, 0, 29])])), Sni::Absent);
        assert_eq!(kind(&hello(&[])), Sni::Absent, "no extensions at all");
        let p = hello(&[(0, &sni(b"api.openai.com", 0))]);
        assert_eq!(kind(&p), Sni::Name(14));
        // Each of these could hide a name the server reads.
        for cut in [3, 20, 50, p.len() - 4] {
            assert_eq!(kind(&p[..cut]), Sni::Unreadable, "cut at {cut}");
        }
        let padding = [(21u16, &[0u8; 4][..]); MAX_EXTENSIONS];
        assert_eq!(kind(&hello(&padding)), Sni::Unreadable, "past the walk");
        assert_eq!(
            kind(&hello(&[(0, &sni(b"api.openai.com", 1))])),
            Sni::Unreadable
        );
        assert_eq!(
            kind(&hello(&[(0, &sni(&[b'a'; NAME], 0))])),
            Sni::Unreadable
        );
        // A cut inside the last extension's data, after its header: the
        // name is not there.
        let p = hello(&[(10, &[0u8; 40])]);
        assert_eq!(kind(&p[..p.len() - 20]), Sni::Absent);
    }
}
