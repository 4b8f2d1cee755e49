//! Names a connection asks for before any policy saw it: the SNI of a TLS
//! ClientHello, and the target of a cleartext HTTP `CONNECT`. The input is
//! whatever bytes the kernel copied (a prefix of the message): parsing is
//! bounded, never panics, and gives up on anything malformed.

/// The server name in a TLS ClientHello (record included), if present in
/// the bytes given.
pub fn client_hello_sni(bytes: &[u8]) -> Option<String> {
    let mut r = Reader { bytes, at: 0 };
    // TLS record: handshake (22), version, length.
    if r.u8()? != 0x16 {
        return None;
    }
    r.skip(4)?;
    // Handshake: ClientHello (1), 24-bit length.
    if r.u8()? != 0x01 {
        return None;
    }
    r.skip(3)?;
    r.skip(2 + 32)?; // client_version, random
    let session = r.u8()? as usize;
    r.skip(session)?;
    let suites = r.u16()? as usize;
    r.skip(suites)?;
    let compression = r.u8()? as usize;
    r.skip(compression)?;
    let extensions = r.u16()? as usize;
    let end = r.at.checked_add(extensions)?;
    while r.at + 4 <= end {
        let kind = r.u16()?;
        let len = r.u16()? as usize;
        if kind != 0 {
            r.skip(len)?;
            continue;
        }
        // server_name: list length, then (type, length, name) entries.
        let _list = r.u16()?;
        if r.u8()? != 0 {
            return None; // only host_name is defined
        }
        let name_len = r.u16()? as usize;
        return host_name(r.take(name_len)?);
    }
    None
}

/// A server name as the kernel or a hello gives it, as servers read it:
/// one trailing dot is the root, as in DNS (the kernel reads names the
/// same way, `agent_common::sni`); what is left must be labels — "." and
/// "a..b" are no names. Lowercased.
pub fn host_name(raw: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(raw).ok()?;
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}

/// `host` from `CONNECT host:port HTTP/1.1`.
pub fn connect_target(bytes: &[u8]) -> Option<String> {
    let line = bytes.split(|b| *b == b'\r' || *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if parts.next()? != "CONNECT" {
        return None;
    }
    let target = parts.next()?;
    let host = match target.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => target.rsplit_once(':').map_or(target, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The host of a cleartext HTTP request's `Host` header (port removed),
/// when the request's head is complete and names exactly one.
pub fn request_host(bytes: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if !request.parse(bytes).ok()?.is_complete() || !request.path?.starts_with(['/', '*']) {
        return None;
    }
    let mut hosts = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let value = hosts.next()?.value;
    if hosts.next().is_some() {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?.trim();
    let host = value.split(':').next()?;
    host_name(host.as_bytes())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with the given SNI (and one extension before it).
    fn hello(sni: &str) -> Vec<u8> {
        let mut ext = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats
        let name = sni.as_bytes();
        let list_len = 3 + name.len();
        ext.extend_from_slice(&[0x00, 0x00]);
        ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        ext.extend_from_slice(name);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut handshake = vec![0x01, 0, 0, 0];
        handshake[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn finds_the_sni() {
        assert_eq!(
            client_hello_sni(&hello("API.OpenAI.com")).as_deref(),
            Some("api.openai.com")
        );
    }

    #[test]
    fn truncated_or_garbled_hellos_give_none_not_panics() {
        let full = hello("api.openai.com");
        for cut in 0..full.len() {
            let _ = client_hello_sni(&full[..cut]);
        }
        let mut bad = full.clone();
        bad[0] = 0x17;
        assert_eq!(client_hello_sni(&bad), None);
        assert_eq!(client_hello_sni(&hello("a b")), None, "not a host name");
        for seed in 0u32..2000 {
            let noise: Vec<u8> = (0..200)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 7919) >> 7) as u8)
                .collect();
            let _ = client_hello_sni(&noise);
        }
    }

    /// Found by the `sni` fuzz target: an SNI of "." came back as the
    /// empty name.
    #[test]
    fn a_name_of_only_dots_is_no_name() {
        assert_eq!(client_hello_sni(&hello(".")), None);
        assert_eq!(client_hello_sni(&hello("..")), None);
        assert_eq!(
            client_hello_sni(&hello("api.openai.com.")).as_deref(),
            Some("api.openai.com"),
            "a trailing dot is still trimmed"
        );
    }

    /// Found by the `sni` fuzz target once it held the kernel's reading to
    /// this one: "host......" was "host" here, but not in the kernel, so a
    /// hello could name a governed host to the agent and not to the
    /// kernel. One dot is the root; more, or an empty label, is no name.
    #[test]
    fn only_one_trailing_dot_is_the_root() {
        assert_eq!(client_hello_sni(&hello("api.openai.com..")), None);
        assert_eq!(client_hello_sni(&hello("api..openai.com")), None);
        assert_eq!(client_hello_sni(&hello(".api.openai.com")), None);
    }

    #[test]
    fn the_kernels_name_is_read_by_the_same_rules() {
        assert_eq!(
            host_name(b"API.OpenAI.com.").as_deref(),
            Some("api.openai.com")
        );
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b"api.openai.com..",
            b"a b.com",
            b"\xff.com",
        ] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn connect_targets() {
        assert_eq!(
            connect_target(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("api.openai.com")
        );
        assert_eq!(
            connect_target(b"CONNECT [::1]:443 HTTP/1.1\r\n").as_deref(),
            Some("::1")
        );
        assert_eq!(connect_target(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(connect_target(b"CONNECT "), None);
    }
}
