//! Request paths as the upstream routes them.
//!
//! A path rule that matches the raw path is beaten by any spelling the
//! upstream folds back: `//v1/files`, `/v1/./files`, `/v1/x/../files`,
//! `/v1/%66iles`. The proxy matches rules on the normalised path and
//! forwards that same path, so the upstream never sees a spelling the
//! policy did not.

/// RFC 3986 normalisation of an origin-form path: percent-encoded
/// unreserved characters decoded (§6.2.2.2), the hex of other escapes
/// upper-cased (§6.2.2.1), runs of `/` collapsed, and `.` / `..` segments
/// removed (§5.2.4). Escapes of reserved characters (`%2F`, `%3F`) stay
/// escaped: decoding them would change the path's structure.
pub fn normalize(path: &str) -> String {
    let decoded = decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        trailing_slash = false;
        match *segment {
            "" => trailing_slash = i == last && i > 0,
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    normal
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &str) -> String {
    if !path.contains('%') {
        return path.to_string();
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            if is_unreserved(byte) {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn spellings_of_one_path_normalise_to_it() {
        for spelling in [
            "/v1/files",
            "//v1/files",
            "/v1//files",
            "///v1///files",
            "/v1/./files",
            "/./v1/files",
            "/v1/x/../files",
            "/v1/x/y/../../files",
            "/../v1/files",
            "/v1/%66iles",
            "/%76%31/files",
            "/v1/%2e/files",
            "/v1/x/%2E%2E/files",
        ] {
            assert_eq!(normalize(spelling), "/v1/files", "{spelling}");
        }
    }

    #[test]
    fn structure_and_trailing_slashes_are_kept() {
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/v1/files/"), "/v1/files/");
        assert_eq!(normalize("/v1/files/."), "/v1/files/");
        assert_eq!(normalize("/v1/files/x/.."), "/v1/files/");
        assert_eq!(normalize("/v1/a%2fb"), "/v1/a%2Fb");
        assert_eq!(normalize("/v1/a%3Fb"), "/v1/a%3Fb");
        assert_eq!(normalize("/v1/%zz"), "/v1/%zz");
        assert_eq!(
            normalize("/v1beta/models/gemini-pro:generateContent"),
            "/v1beta/models/gemini-pro:generateContent"
        );
    }
}
