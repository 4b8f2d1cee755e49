//! `multipart/form-data` (RFC 7578) bodies split into their parts, each
//! decoded as a lenient server would read it.

use memchr::memmem;

use super::encoding;

/// Parts beyond this are refused: uploads carry a handful.
const MAX_PARTS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The form field's name (`file`, `purpose`), or `""`.
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    /// Every header of the part, as sent (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The content with its transfer and content codings undone.
    pub data: Vec<u8>,
}

/// The boundary of a `multipart/*` content type, or `None`.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
}

/// The parts of `body`, or why it is not a multipart body one can read.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    let mut at = finder
        .find(body)
        .ok_or_else(|| format!("the multipart body has no `{delimiter}` delimiter"))?;
    let mut parts = Vec::new();
    loop {
        let after = at + delimiter.len();
        let rest = &body[after..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // The delimiter line ends with CRLF (LF from lenient clients),
        // after optional whitespace.
        let line_end = memchr::memchr(b'\n', rest)
            .ok_or("a multipart delimiter line does not end".to_string())?;
        let start = after + line_end + 1;
        let next = finder
            .find(&body[start..])
            .map(|p| start + p)
            .ok_or("the multipart body ends without its closing delimiter".to_string())?;
        // The CRLF before a delimiter belongs to the delimiter.
        let mut end = next;
        if end > start && body[end - 1] == b'\n' {
            end -= 1;
            if end > start && body[end - 1] == b'\r' {
                end -= 1;
            }
        }
        if parts.len() == MAX_PARTS {
            return Err(format!("the multipart body has over {MAX_PARTS} parts"));
        }
        parts.push(part(&body[start..end])?);
        at = next;
    }
}

/// The form fields at the start of a body of which only `head` has
/// arrived (a streamed upload): the whole parts before the first file part
/// (one with a file name) or before the end of `head`.
pub fn head_fields(head: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    let mut fields = Vec::new();
    let Some(mut at) = finder.find(head) else {
        return fields;
    };
    while fields.len() < MAX_PARTS {
        let rest = &head[at + delimiter.len()..];
        let Some(line_end) = memchr::memchr(b'\n', rest) else {
            break;
        };
        let start = at + delimiter.len() + line_end + 1;
        let Some(next) = finder.find(&head[start..]).map(|p| start + p) else {
            break;
        };
        let end = head[start..next]
            .strip_suffix(b"\n")
            .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
            .map_or(next, |s| start + s.len());
        match part(&head[start..end]) {
            Ok(part) if part.filename.is_none() => fields.push(part),
            _ => break,
        }
        at = next;
    }
    fields
}

/// A form field's value as text, trimmed, when it is short UTF-8 (a
/// model name, a purpose).
pub fn field<'a>(parts: &'a [Part], name: &str) -> Option<&'a str> {
    let part = parts
        .iter()
        .find(|p| p.name == name && p.filename.is_none())?;
    std::str::from_utf8(&part.data)
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

fn part(raw: &[u8]) -> Result<Part, String> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let (consumed, parsed) = match httparse::parse_headers(raw, &mut slots) {
        Ok(httparse::Status::Complete((n, headers))) => (n, headers),
        Ok(httparse::Status::Partial) => return Err("a multipart part's headers do not end".into()),
        Err(err) => return Err(format!("a multipart part's headers are malformed: {err}")),
    };
    let headers: Vec<(String, String)> = parsed
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let disposition = header("content-disposition").unwrap_or("");
    let name = param(disposition, "name").unwrap_or_default();
    let filename = param(disposition, "filename");
    let content_type = header("content-type").map(str::to_string);
    let mut data = raw[consumed..].to_vec();
    if let Some(transfer) = header("content-transfer-encoding") {
        data = transfer_decode(&data, transfer).map_err(|e| format!("part `{name}`: {e}"))?;
    }
    if let Some(coding) = header("content-encoding") {
        let codings = encoding::codings(coding);
        data = encoding::decode(&data, &codings).map_err(|e| format!("part `{name}`: {e}"))?;
    }
    // A compressed file (`notes.jsonl.gz`) is stored as sent, but whoever
    // reads it back decompresses it: look inside.
    if let Some(coding) = encoding::sniff(&data)
        && let Ok(inner) = encoding::decode_one(&data, coding)
    {
        data = inner;
    }
    Ok(Part {
        name,
        filename,
        content_type,
        headers,
        data,
    })
}

/// A `name="value"` (or unquoted) parameter of a header value.
fn param(value: &str, wanted: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (name, v) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case(wanted)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// RFC 2045 transfer encodings, which RFC 7578 deprecates but readers
/// still honour.
fn transfer_decode(data: &[u8], encoding: &str) -> Result<Vec<u8>, String> {
    match encoding.trim().to_ascii_lowercase().as_str() {
        "7bit" | "8bit" | "binary" => Ok(data.to_vec()),
        "base64" => {
            use base64::Engine as _;
            let compact: Vec<u8> = data
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .map_err(|e| format!("its base64 does not decode: {e}"))
        }
        "quoted-printable" => Ok(quoted_printable(data)),
        other => Err(format!(
            "transfer encoding `{other}` is not one the proxy can decode"
        )),
    }
}

/// RFC 2045 §6.7: `=XX` escapes and `=` soft line breaks.
fn quoted_printable(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'=' {
            match (data.get(i + 1), data.get(i + 2)) {
                (Some(b'\r'), Some(b'\n')) => {
                    i += 3;
                    continue;
                }
                (Some(b'\n'), _) => {
                    i += 2;
                    continue;
                }
                (Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    let hex = [h, l];
                    if let Ok(byte) =
                        u8::from_str_radix(std::str::from_utf8(&hex).unwrap_or("00"), 16)
                    {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const CT: &str = "multipart/form-data; boundary=\"XyZ\"";

    fn body(parts: &[&str]) -> Vec<u8> {
        let mut out = String::from("preamble\r\n");
        for p in parts {
            out.push_str("--XyZ\r\n");
            out.push_str(p);
            out.push_str("\r\n");
        }
        out.push_str("--XyZ--\r\n");
        out.into_bytes()
    }

    #[test]
    fn fields_and_files_come_apart() {
        assert_eq!(boundary(CT).as_deref(), Some("XyZ"));
        assert_eq!(boundary("application/json"), None);
        let b = body(&[
            "Content-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune",
            "Content-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{\"a\":1}\n{\"b\":2}",
        ]);
        let parts = parse(&b, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"fine-tune");
        assert_eq!(parts[1].filename.as_deref(), Some("a.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n{\"b\":2}");
    }

    #[test]
    fn encoded_parts_are_decoded() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hidden text").unwrap();
        let gz = gz.finish().unwrap();
        let mut raw = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n".to_vec();
        raw.extend_from_slice(&gz);
        raw.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\nContent-Transfer-Encoding: base64\r\n\r\naGlk\r\nZGVu\r\n--XyZ\r\nContent-Disposition: form-data; name=\"q\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nhi=3Dthere=\r\n!\r\n--XyZ--");
        let parts = parse(&raw, "XyZ").unwrap();
        assert_eq!(parts[0].data, b"hidden text");
        assert_eq!(parts[1].data, b"hidden");
        assert_eq!(parts[2].data, b"hi=there!");
    }

    #[test]
    fn the_fields_before_the_file_are_read_from_the_head() {
        let b = body(&[
            "Content-Disposition: form-data; name=\"model\"\r\n\r\n whisper-1 ",
            "Content-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune",
            "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....",
            "Content-Disposition: form-data; name=\"late\"\r\n\r\nafter the file",
        ]);
        let fields = head_fields(&b, "XyZ");
        assert_eq!(fields.len(), 2, "{fields:?}");
        assert_eq!(field(&fields, "model"), Some("whisper-1"));
        assert_eq!(field(&fields, "purpose"), Some("fine-tune"));
        // Cut inside the second field: only the first is whole.
        let cut = b.len() - 160;
        let fields = head_fields(&b[..cut.min(90)], "XyZ");
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert!(head_fields(b"no delimiter", "XyZ").is_empty());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(parse(b"no delimiter here", "XyZ").is_err());
        assert!(
            parse(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
                "XyZ"
            )
            .is_err()
        );
        let bad = b"--XyZ\r\nContent-Encoding: compress\r\n\r\nx\r\n--XyZ--";
        assert!(parse(bad, "XyZ").unwrap_err().contains("compress"));
        let lf = b"--XyZ\nContent-Disposition: form-data; name=\"a\"\n\nlf only\n--XyZ--\n";
        assert_eq!(parse(lf, "XyZ").unwrap()[0].data, b"lf only");
    }
}
