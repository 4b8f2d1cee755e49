//! The kernel's reading of the Host of a cleartext HTTP request, as pure
//! code over the request's first bytes (copied into a buffer): on a
//! catalog port (80, a self-hosted server's), an HTTP request to an
//! address nobody told us about is judged by its Host as a ClientHello is
//! by its SNI. The host runs the same code in unit tests and in the `sni`
//! fuzz target, which holds it to the agent's parser.

use crate::{
    dns::{NAME, fold_case},
    sni::{Sni, trim_trailing_dot},
};

/// Bytes of a request read: its header block must end within them.
pub const HTTP_SCAN: usize = 1024;

/// `\nhost:` lower-cased, as the last six bytes of the scan's window.
const HOST_FIELD: u64 = 0x0a_68_6f_73_74_3a;
/// `\r\n\r\n`: the end of the header block.
const HEADERS_END: u64 = 0x0d_0a_0d_0a;

/// Bytes looked at for the Host value: a name of up to `NAME - 1` bytes,
/// the blanks before it and the byte that ends it.
pub const VALUE_SCAN: usize = NAME + 8;

/// The reading of a request's Host in three passes of one step per byte
/// (the head, the value, the copy), each step without a branch: the host
/// runs them as loops (`request_host`), the kernel from `bpf_loop`, so
/// its verifier checks a step once instead of every byte of every path.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct HostPass {
    len: u64,
    window: u64,
    past_end: u64,
    first_space: u64,
    host_at: u64,
    hosts: u64,
    start: u64,
    leading: u64,
    value_len: u64,
    open: u64,
    cut: u64,
}

/// 1 when `c == want`, else 0.
#[inline(always)]
fn is(c: u64, want: u8) -> u64 {
    (c ^ want as u64).wrapping_sub(1) >> 63
}

/// 1 when `x != 0`, else 0.
#[inline(always)]
fn nonzero(x: u64) -> u64 {
    (x | x.wrapping_neg()) >> 63
}

impl HostPass {
    pub fn new(len: usize) -> Self {
        Self {
            len: len as u64,
            ..Self::default()
        }
    }

    /// First pass, byte `j` of the head (`buf[j]`, `j < HTTP_SCAN`): the
    /// first space, where the first Host value starts, how many Host
    /// fields there are, whether the header block ends.
    #[inline(always)]
    pub fn head(&mut self, j: u64, byte: u8) {
        // Bytes past `len` or past the header block are not the request's.
        let live = ((j.wrapping_sub(self.len)) >> 63) * (1 - self.past_end);
        let c = fold_case(byte) as u64;
        self.window = ((self.window << 8) | c) & 0xffff_ffff_ffff;
        let space = is(c, b' ') * live;
        self.first_space += space * (1 - nonzero(self.first_space)) * j;
        let host = (((self.window ^ HOST_FIELD).wrapping_sub(1)) >> 63) * live;
        self.host_at += host * (1 - nonzero(self.hosts)) * (j + 1);
        self.hosts += host;
        let end = ((((self.window & 0xffff_ffff) ^ HEADERS_END).wrapping_sub(1)) >> 63) * live;
        self.past_end |= end;
    }

    /// After the first pass: whether there is one Host value to read.
    /// `Unreadable` when the request target is not a path (the absolute
    /// form names a host itself), Host appears twice, or there is none in
    /// a header block that goes on past the bytes read; `Absent` when a
    /// whole header block has none. A Host in a block that goes on is
    /// read: a second one further on would make a server refuse the
    /// request (RFC 9112 §3.2), so the first is what it serves.
    #[inline(always)]
    pub fn after_head(&mut self, buf: &[u8; HTTP_SCAN]) -> Result<(), Sni> {
        // A method of capital letters, then a path (or `*`) as the target.
        let method = buf[0].wrapping_sub(b'A') < 26;
        let target = buf[(self.first_space as usize + 1) % HTTP_SCAN];
        if !method || self.first_space == 0 || (target != b'/' && target != b'*') {
            return Err(Sni::Unreadable);
        }
        if self.hosts == 0 {
            return Err(if self.past_end == 0 {
                Sni::Unreadable
            } else {
                Sni::Absent
            });
        }
        if self.hosts > 1 {
            return Err(Sni::Unreadable);
        }
        self.start = self.host_at;
        self.leading = 1;
        self.open = 1;
        Ok(())
    }

    /// Second pass, `k < VALUE_SCAN`: the value runs past spaces and tabs
    /// up to CR, LF, a blank or the port, and must end within the bytes
    /// read (a value cut there may go on in the next segment).
    #[inline(always)]
    pub fn value(&mut self, k: u64, buf: &[u8; HTTP_SCAN]) {
        let at = self.host_at + k;
        let live = at.wrapping_sub(self.len) >> 63;
        self.cut |= self.open * (1 - live);
        let c = buf[(at % HTTP_SCAN as u64) as usize] as u64 * live;
        let blank = is(c, b' ') | is(c, b'\t');
        self.leading &= blank;
        self.start += self.leading;
        let stop = is(c, b'\r') | is(c, b'\n') | is(c, b':') | blank;
        self.open &= self.leading | (1 - stop);
        self.value_len += self.open * (1 - self.leading);
    }

    /// After the second pass: the value must end within it and fit a name.
    #[inline(always)]
    pub fn after_value(&self) -> Result<(), Sni> {
        if self.value_len == 0 || self.value_len >= NAME as u64 || self.open == 1 || self.cut == 1 {
            return Err(Sni::Unreadable);
        }
        Ok(())
    }

    /// Third pass, `k < NAME`: the value's byte `k` into `name[k]`, NUL
    /// past its end.
    #[inline(always)]
    pub fn copy(&self, k: u64, buf: &[u8; HTTP_SCAN], name: &mut [u8; NAME]) {
        let keep = (k.wrapping_sub(self.value_len) >> 63) as u8;
        name[(k as usize) % NAME] = buf[((self.start + k) % HTTP_SCAN as u64) as usize] * keep;
    }

    /// After the copy: the name without a trailing dot.
    #[inline(always)]
    pub fn finish(&self, name: &mut [u8; NAME]) -> Sni {
        let n = trim_trailing_dot(name, self.value_len as usize);
        if n == 0 {
            Sni::Unreadable
        } else {
            Sni::Name(n)
        }
    }
}

/// The Host of the request in `buf[..len]`, written to `name` as
/// `sni::read` writes a server name (NUL-padded, no trailing dot), or why
/// there is none (see `HostPass::after_head`; also `Unreadable` for a
/// value that does not fit `NAME - 1` bytes).
pub fn request_host(buf: &[u8; HTTP_SCAN], len: usize, name: &mut [u8; NAME]) -> Sni {
    let mut pass = HostPass::new(len);
    for (j, &byte) in buf.iter().enumerate() {
        pass.head(j as u64, byte);
    }
    if let Err(why) = pass.after_head(buf) {
        return why;
    }
    for k in 0..VALUE_SCAN as u64 {
        pass.value(k, buf);
    }
    if let Err(why) = pass.after_value() {
        return why;
    }
    for k in 0..NAME as u64 {
        pass.copy(k, buf, name);
    }
    pass.finish(name)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::String;

    use super::*;

    fn host(request: &[u8]) -> (Sni, String) {
        let mut buf = [0u8; HTTP_SCAN];
        let len = request.len().min(HTTP_SCAN);
        buf[..len].copy_from_slice(&request[..len]);
        let mut name = [0u8; NAME];
        let read = request_host(&buf, len, &mut name);
        let n = name.iter().position(|&b| b == 0).unwrap_or(NAME);
        (read, String::from_utf8_lossy(&name[..n]).into_owned())
    }

    #[test]
    fn reads_the_host_of_a_request() {
        let r = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n\r\n{}";
        assert_eq!(host(r), (Sni::Name(14), "api.openai.com".into()));
        let r = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST:\t API.OpenAI.com.:80 \r\n\r\n";
        assert_eq!(host(r), (Sni::Name(14), "API.OpenAI.com".into()));
        let r = b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n";
        assert_eq!(host(r).0, Sni::Absent);
    }

    #[test]
    fn what_could_name_another_host_is_unreadable() {
        for r in [
            &b"GET / HTTP/1.1\r\nHost: api.op"[..],
            b"GET / HTTP/1.1\r\nHost: api.openai.com",
            b"GET / HTTP/1.1\r\nAccept: */*\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nHost: api.openai.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nHost: api.openai.com\r\n",
            b"GET http://api.openai.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"get / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            b"\x16\x03\x01\x00",
        ] {
            assert_eq!(host(r).0, Sni::Unreadable, "{}", String::from_utf8_lossy(r));
        }
        let mut long = std::vec::Vec::from(&b"GET / HTTP/1.1\r\nHost: "[..]);
        long.extend_from_slice(&[b'a'; NAME]);
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(host(&long).0, Sni::Unreadable, "a name past NAME - 1 bytes");
        // A Host past the bytes read may be the only one.
        let mut late = std::vec::Vec::from(&b"GET / HTTP/1.1\r\nCookie: "[..]);
        late.extend_from_slice(&[b'c'; HTTP_SCAN]);
        late.extend_from_slice(b"\r\nHost: api.openai.com\r\n\r\n");
        assert_eq!(host(&late).0, Sni::Unreadable);
    }

    #[test]
    fn a_host_before_the_end_of_the_bytes_read_is_read() {
        let r = b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n";
        assert_eq!(host(r), (Sni::Name(14), "api.openai.com".into()));
        let mut padded = std::vec::Vec::from(&b"GET / HTTP/1.1\r\nHost: a.b\r\nX: "[..]);
        padded.extend_from_slice(&[b'x'; HTTP_SCAN]);
        assert_eq!(host(&padded), (Sni::Name(3), "a.b".into()));
    }

    #[test]
    fn bytes_past_the_length_are_not_the_value() {
        // The kernel's buffer is reused: what lies past `len` is stale.
        let mut buf = [b'z'; HTTP_SCAN];
        let r = b"GET / HTTP/1.1\r\nHost: api.openai.co";
        buf[..r.len()].copy_from_slice(r);
        let mut name = [0u8; NAME];
        assert_eq!(request_host(&buf, r.len(), &mut name), Sni::Unreadable);
    }
}
