//! The kernel's reading of the server name in a TLS ClientHello, as pure
//! code over a [`Packet`]: the `cgroup_skb/egress` program runs it on the
//! socket buffer, and the host runs the very same code in unit tests and in
//! the `sni` fuzz target, which holds it to the agent's own parser. A name
//! read differently here is a hello the kernel lets through that the
//! server (and the agent) would read as a model API's.

use crate::dns::{NAME, Packet};

/// Extensions walked looking for server_name. Clients put it among the
/// first few; a hello that hides it further is still reported to the
/// agent, just not dropped in the kernel.
pub const MAX_EXTENSIONS: usize = 24;

/// Fills `buf` with the host name of the ClientHello at `payload` (`len`
/// bytes from there), NUL-padded and without its trailing dot (the root,
/// as the agent reads it), and returns its length. `None` when there is no
/// server_name extension within [`MAX_EXTENSIONS`], it is not a host_name,
/// or the name does not fit `NAME - 1` bytes, or is only the dot.
#[inline(always)]
pub fn server_name<P: Packet + ?Sized>(
    p: &P,
    payload: usize,
    len: usize,
    buf: &mut [u8; NAME],
) -> Option<usize> {
    let end = payload + len;
    // record (5) + handshake header (4) + version (2) + random (32)
    let mut pos = payload + 43;
    pos += 1 + p.byte(pos)? as usize;
    pos += 2 + p.be16(pos)? as usize;
    pos += 1 + p.byte(pos)? as usize;
    let extensions_end = pos + 2 + p.be16(pos)? as usize;
    pos += 2;
    let mut sni_at = 0usize;
    for _ in 0..MAX_EXTENSIONS {
        if pos + 4 > extensions_end || pos + 4 > end {
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
        return None;
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
    (len > 0).then_some(len)
}

/// Zeroes a dot at the end of the `len` bytes of `buf`; the new length.
/// Arithmetic on one bounded index, no branch.
#[inline(always)]
fn trim_trailing_dot(buf: &mut [u8; NAME], len: usize) -> usize {
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
}
