//! Chat streams that did not ask for usage. OpenAI reports a stream's
//! tokens only when the request says `stream_options.include_usage`, and
//! the SDKs leave it off: without help most streams would go uncounted in
//! the audit trail, usage, metrics and token budgets. So the proxy asks for
//! it, and hides from the client what asking changed — the extra last chunk
//! (`choices: []` and the usage) and the `"usage": null` every other chunk
//! then carries — so the client gets the stream it would have got directly.

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde_json::Value;

/// The request body asking for usage, when `json` (the body as read) is a
/// stream that did not ask. `body` is the JSON text to forward; `None`
/// leaves it as it is.
pub fn ask(json: &Value, body: &[u8]) -> Option<Bytes> {
    let object = json.as_object()?;
    if object.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    match object.get("stream_options") {
        // The usual case: one member put in front, the client's bytes kept.
        None => {
            let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
            if body[open] != b'{' {
                return None;
            }
            let mut out = BytesMut::with_capacity(body.len() + 40);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&body[open + 1..]);
            Some(out.freeze())
        }
        Some(Value::Object(options)) => {
            if options.get("include_usage") == Some(&Value::Bool(true)) {
                return None;
            }
            // From `body`, not `json`: the body may be redacted since.
            let mut json: Value = serde_json::from_slice(body).ok()?;
            json["stream_options"]["include_usage"] = Value::Bool(true);
            serde_json::to_vec(&json).ok().map(Bytes::from)
        }
        // Not an object: the upstream will refuse it as it is.
        Some(_) => None,
    }
}

/// Takes the upstream's event stream and gives the client its events but
/// the usage chunk, without `"usage": null`. Whole events only: a partial
/// one waits for its end (an SSE client cannot act on it before).
#[derive(Debug, Default)]
pub struct Hider {
    held: Vec<u8>,
}

impl Hider {
    /// What of `data` (and what was held) the client gets now.
    pub fn filter(&mut self, data: &[u8]) -> Bytes {
        if !self.held.is_empty() {
            self.held.extend_from_slice(data);
            let held = std::mem::take(&mut self.held);
            let out = self.filter(&held);
            return out;
        }
        // The usual case, nothing held: the frame's whole events go out
        // from where they are, only a partial last one is kept.
        let Some(end) = last_event_end(data) else {
            self.held.extend_from_slice(data);
            return Bytes::new();
        };
        let mut out = BytesMut::with_capacity(end);
        let mut start = 0;
        while start < end {
            let stop = next_event_end(&data[start..end]).map_or(end, |e| start + e);
            push_event(&data[start..stop], &mut out);
            start = stop;
        }
        self.held.extend_from_slice(&data[end..]);
        out.freeze()
    }

    /// What is left at the stream's end (an event without its blank line).
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        push_event(&self.held, &mut out);
        self.held.clear();
        out.freeze()
    }
}

/// Where the event starting `buf` ends, its blank line (`\n\n` or
/// `\r\n\r\n`) included. One pass over the line ends: looking for each
/// kind of blank line apart would scan the rest of the buffer for the kind
/// a stream does not use, once per event.
fn next_event_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| {
        let next = buf.get(i + 1..)?;
        if next.starts_with(b"\n") {
            Some(i + 2)
        } else if i > 0 && buf[i - 1] == b'\r' && next.starts_with(b"\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

fn last_event_end(buf: &[u8]) -> Option<usize> {
    let lf = LF_END.rfind(buf).map(|i| i + 2);
    let crlf = CRLF_END.rfind(buf).map(|i| i + 4);
    lf.max(crlf)
}

// Built once: building a searcher per call showed in the stream profile.
static LF_END: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\n\n"));
static CRLF_END: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\r\n\r\n"));
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// One event as the client gets it: nothing for the usage chunk, the rest
/// without a null `usage` member.
fn push_event(event: &[u8], out: &mut BytesMut) {
    let Some(at) = USAGE_KEY.find(event) else {
        out.extend_from_slice(event);
        return;
    };
    // Every chunk but the last has a null usage: cut it without parsing.
    if let Some((from, to)) = null_member(event, at) {
        out.extend_from_slice(&event[..from]);
        out.extend_from_slice(&event[to..]);
    } else if !is_usage_chunk(event) {
        out.extend_from_slice(event);
    }
}

/// An event whose data is `{"choices": [], "usage": {...}, ...}`.
fn is_usage_chunk(event: &[u8]) -> bool {
    let data: Vec<u8> = event
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .flat_map(|d| d.strip_prefix(b" ").unwrap_or(d).trim_ascii_end().to_vec())
        .collect();
    let Ok(Value::Object(chunk)) = serde_json::from_slice::<Value>(&data) else {
        return false;
    };
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && chunk.get("usage").is_some_and(Value::is_object)
}

/// The span of `"usage": null` at `at` with the comma that joins it to a
/// neighbour, when that is what is there.
fn null_member(event: &[u8], at: usize) -> Option<(usize, usize)> {
    let skip_ws = |mut i: usize| {
        while event.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
            i += 1;
        }
        i
    };
    let colon = skip_ws(at + b"\"usage\"".len());
    if event.get(colon) != Some(&b':') {
        return None;
    }
    let value = skip_ws(colon + 1);
    if event.get(value..value + 4) != Some(b"null") {
        return None;
    }
    let end = value + 4;
    // `, "usage": null` after another member, or `"usage": null, ` first.
    let mut before = at;
    while before > 0 && matches!(event[before - 1], b' ' | b'\t') {
        before -= 1;
    }
    if before > 0 && event[before - 1] == b',' {
        return Some((before - 1, end));
    }
    let after = skip_ws(end);
    if event.get(after) == Some(&b',') {
        return Some((at, skip_ws(after + 1)));
    }
    Some((at, end))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_stream_that_did_not_ask_is_asked_for_usage_keeping_its_bytes() {
        let body = br#" {"model":"gpt-4o","stream":true,"messages":[]}"#;
        let json: Value = serde_json::from_slice(body).unwrap();
        let asked = ask(&json, body).unwrap();
        assert_eq!(
            &asked[..],
            br#" {"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#
        );
        let other = json!({"stream": true, "stream_options": {"include_obfuscation": false}});
        let text = other.to_string();
        let asked: Value = serde_json::from_slice(&ask(&other, text.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            asked["stream_options"],
            json!({"include_obfuscation": false, "include_usage": true})
        );
        let declined = json!({"stream": true, "stream_options": {"include_usage": false}});
        assert!(ask(&declined, declined.to_string().as_bytes()).is_some());
        for untouched in [
            json!({"stream": true, "stream_options": {"include_usage": true}}),
            json!({"stream": false}),
            json!({"messages": []}),
            json!({"stream": "true"}),
        ] {
            assert!(ask(&untouched, b"{}").is_none(), "{untouched}");
        }
    }

    const CHUNK: &str = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const PLAIN: &str =
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    const USAGE: &str = "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn the_client_gets_the_stream_it_would_have_got() {
        let upstream = format!("{CHUNK}{CHUNK}{USAGE}{DONE}");
        let expected = format!("{PLAIN}{PLAIN}{DONE}");
        // Every way of cutting the stream into frames gives the same.
        for cut in 0..upstream.len() {
            let mut hider = Hider::default();
            let mut got = Vec::new();
            got.extend_from_slice(&hider.filter(&upstream.as_bytes()[..cut]));
            got.extend_from_slice(&hider.filter(&upstream.as_bytes()[cut..]));
            got.extend_from_slice(&hider.finish());
            assert_eq!(String::from_utf8(got).unwrap(), expected, "cut at {cut}");
        }
    }

    #[test]
    fn nulls_go_wherever_they_stand_and_other_usage_stays() {
        let mut hider = Hider::default();
        let spaced = "data: {\"usage\": null, \"id\": \"c1\", \"choices\": []}\r\n\r\n";
        assert_eq!(
            &hider.filter(spaced.as_bytes())[..],
            b"data: {\"id\": \"c1\", \"choices\": []}\r\n\r\n"
        );
        let last = "data: {\"id\":\"c1\",\"usage\" : null}\n\n";
        assert_eq!(
            &hider.filter(last.as_bytes())[..],
            b"data: {\"id\":\"c1\"}\n\n"
        );
        // Usage on a chunk that still has choices is the provider's own.
        let own = "data: {\"choices\":[{\"index\":0}],\"usage\":{\"total_tokens\":3}}\n\n";
        assert_eq!(&hider.filter(own.as_bytes())[..], own.as_bytes());
        // "usage" as text in the content is left alone.
        let text =
            "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\" is a word\"}}]}\n\n";
        assert_eq!(&hider.filter(text.as_bytes())[..], text.as_bytes());
        // An unterminated last event is given as it is.
        assert_eq!(&hider.filter(b"data: [DONE]")[..], b"");
        assert_eq!(&hider.finish()[..], b"data: [DONE]");
    }

    #[test]
    fn an_event_ends_at_the_first_blank_line_of_either_kind() {
        // The two searches this one pass replaced, as the reference.
        let reference = |buf: &[u8]| {
            let lf = memmem::find(buf, b"\n\n").map(|i| i + 2);
            let crlf = memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
            match (lf, crlf) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        // Every text of up to 8 bytes over `a`, CR and LF.
        for len in 0..=8u32 {
            for n in 0..3usize.pow(len) {
                let buf: Vec<u8> = (0..len)
                    .map(|k| [b'a', b'\r', b'\n'][n / 3usize.pow(k) % 3])
                    .collect();
                assert_eq!(next_event_end(&buf), reference(&buf), "{buf:?}");
            }
        }
    }
}
