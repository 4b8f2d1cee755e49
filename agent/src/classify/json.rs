//! A validating, non-recursive JSON reader that reports where each string
//! value sits in the body, and decodes string literals with a map back to
//! their raw bytes.
//!
//! Redaction splices `[REDACTED:…]` into the original bytes instead of
//! re-serializing a parsed `serde_json::Value`. That keeps everything else
//! byte-for-byte: key order (serde_json's default `Map` sorts keys),
//! duplicate keys, number spellings (`1.0`, `1e3`, integers beyond `f64`),
//! whitespace, and the escaping of the text around a finding. serde_json's
//! `raw_value` feature would give string positions too, but it is not a
//! default feature and its recursion would need the depth limit anyway.

/// A string as it appears in the body — a value, or an object key: `start`
/// is the opening quote, `end` is one past the closing quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StrValue {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
    /// An object key rather than a value. Keys carry data too (the openai
    /// SDK's `metadata`, a tool schema's property names, a tool call's
    /// input), and an upstream reads them like any string.
    pub key: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

/// The strings of `body` — values and object keys — in document order (a
/// key right before its value), or `None` when `body` is not a single valid
/// JSON document (RFC 8259) or nests deeper than `max_depth`. The explicit stack means no input can overflow the call
/// stack, whatever the limit.
pub(super) fn string_values(body: &[u8], max_depth: usize) -> Option<(&str, Vec<StrValue>)> {
    let text = std::str::from_utf8(body).ok()?;
    let mut values = Vec::new();
    let mut stack: Vec<Container> = Vec::new();
    let mut i = skip_ws(body, 0);
    'value: loop {
        // Here a value must start at `i`.
        match *body.get(i)? {
            b'{' => {
                if stack.len() >= max_depth {
                    return None;
                }
                i = skip_ws(body, i + 1);
                if body.get(i) == Some(&b'}') {
                    i += 1;
                } else {
                    stack.push(Container::Object);
                    i = key(body, i, &mut values)?;
                    continue 'value;
                }
            }
            b'[' => {
                if stack.len() >= max_depth {
                    return None;
                }
                i = skip_ws(body, i + 1);
                if body.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    stack.push(Container::Array);
                    continue 'value;
                }
            }
            b'"' => {
                let (end, escaped) = string_end(body, i)?;
                values.push(StrValue {
                    start: i,
                    end,
                    escaped,
                    key: false,
                });
                i = end;
            }
            b't' => i = literal(body, i, b"true")?,
            b'f' => i = literal(body, i, b"false")?,
            b'n' => i = literal(body, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(body, i)?,
            _ => return None,
        }
        // A value just ended at `i`: close containers or move to the next.
        loop {
            i = skip_ws(body, i);
            match (stack.last(), body.get(i)) {
                (None, None) => return Some((text, values)),
                (None, Some(_)) => return None,
                (Some(Container::Object), Some(b',')) => {
                    i = key(body, skip_ws(body, i + 1), &mut values)?;
                    continue 'value;
                }
                (Some(Container::Array), Some(b',')) => {
                    i = skip_ws(body, i + 1);
                    continue 'value;
                }
                (Some(Container::Object), Some(b'}')) | (Some(Container::Array), Some(b']')) => {
                    stack.pop();
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Parses `"key" :` at `i`, records the key, and returns where the value
/// starts.
fn key(b: &[u8], i: usize, values: &mut Vec<StrValue>) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (end, escaped) = string_end(b, i)?;
    values.push(StrValue {
        start: i,
        end,
        escaped,
        key: true,
    });
    let i = skip_ws(b, end);
    (b.get(i) == Some(&b':')).then(|| skip_ws(b, i + 1))
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..)?.starts_with(word).then_some(i + word.len())
}

fn digits(b: &[u8], i: usize) -> usize {
    b.get(i..)
        .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count())
}

fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(b, i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(b, i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
}

/// Whether any byte of the 8 in `w` is `"`, `\` or below 0x20. Strings are
/// most of a prompt body, so they are skipped a word at a time; the
/// bit tricks are exact for "is there any such byte".
fn word_has_special(w: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let quote = has_zero(w ^ (LO * u64::from(b'"')));
    let backslash = has_zero(w ^ (LO * u64::from(b'\\')));
    let control = w.wrapping_sub(LO * 0x20) & !w & HI;
    (quote | backslash | control) != 0
}

/// End (one past the closing quote) of the string literal opening at `i`,
/// and whether it holds escapes.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        while let Some(chunk) = b.get(j..j + 8) {
            let w = u64::from_le_bytes(chunk.try_into().ok()?);
            if word_has_special(w) {
                break;
            }
            j += 8;
        }
        match *b.get(j)? {
            b'"' => return Some((j + 1, escaped)),
            b'\\' => {
                escaped = true;
                match *b.get(j + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                    b'u' if b.get(j + 2..j + 6)?.iter().all(u8::is_ascii_hexdigit) => j += 6,
                    _ => return None,
                }
            }
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let s = std::str::from_utf8(b.get(i..i + 4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Decodes a string literal's contents (between the quotes, which
/// [`string_values`] already validated) into `out`.
///
/// `map` receives `(decoded offset, raw offset)` pairs at both edges of each
/// escape; offsets between two pairs advance together, so [`raw_offset`] can
/// place a finding back into the literal.
///
/// A lone UTF-16 surrogate (legal JSON syntax, not a character) decodes to
/// U+FFFD for scanning; the raw escape itself is left in place unless it
/// sits inside a redacted finding.
pub(super) fn decode_into(raw: &str, out: &mut String, map: &mut Vec<(usize, usize)>) {
    out.clear();
    map.clear();
    let b = raw.as_bytes();
    let first = raw.find('\\').unwrap_or(b.len());
    out.push_str(raw.get(..first).unwrap_or_default());
    let mut i = first;
    while i < b.len() {
        let (c, len) = match b.get(i + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => unicode_escape(b, i),
            _ => ('\u{fffd}', 1),
        };
        map.push((out.len(), i));
        out.push(c);
        i += len;
        map.push((out.len(), i));
        // Copy the literal run up to the next escape in one go.
        let next = raw
            .get(i..)
            .and_then(|r| r.find('\\'))
            .map_or(b.len(), |p| i + p);
        out.push_str(raw.get(i..next).unwrap_or_default());
        i = next;
    }
}

/// The raw offset (within the literal's contents) of a decoded offset that
/// falls on a character boundary of the decoded value.
pub(super) fn raw_offset(map: &[(usize, usize)], decoded: usize) -> usize {
    let n = map.partition_point(|&(d, _)| d <= decoded);
    match n.checked_sub(1).and_then(|k| map.get(k)) {
        Some(&(d, r)) => r + (decoded - d),
        None => decoded,
    }
}
/// `\uXXXX` at `i`, joined with a following low surrogate when it is a high
/// one. Returns the character and how many bytes it took.
fn unicode_escape(b: &[u8], i: usize) -> (char, usize) {
    let Some(hi) = hex4(b, i + 2) else {
        return ('\u{fffd}', 2);
    };
    if (0xD800..0xDC00).contains(&hi)
        && b.get(i + 6..i + 8) == Some(b"\\u")
        && let Some(lo) = hex4(b, i + 8)
        && (0xDC00..0xE000).contains(&lo)
    {
        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        return (char::from_u32(c).unwrap_or('\u{fffd}'), 12);
    }
    (char::from_u32(hi).unwrap_or('\u{fffd}'), 6)
}
