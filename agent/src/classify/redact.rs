//! Scanning and redacting JSON request bodies.
//!
//! Only string values are looked at. Object keys are schema (`"content"`,
//! `"role"`), and a number cannot be replaced by `[REDACTED:…]` without
//! changing the document's types; request schemas carry prompts in strings.
//! Each string is decoded first, so escapes (`\n`, `\"`, `\u00e9`) neither
//! hide a finding nor split one.

use std::cell::RefCell;

use super::{Classifier, Counts, MAX_JSON_DEPTH, MIN_BUILTIN_LEN, json, resolve};

/// Where escaped string values are decoded, with the map back to raw offsets.
#[derive(Default)]
struct Scratch {
    text: String,
    map: Vec<(usize, usize)>,
}

/// Largest decode buffer a thread keeps between calls.
const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    /// Prompts arrive as JSON strings full of `\n` escapes, so the big value
    /// of nearly every body is decoded. Reusing one buffer per thread spares
    /// a fresh, page-faulting allocation of the body's size on each call.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let result = f(&mut scratch);
            if scratch.text.capacity() > SCRATCH_KEEP {
                *scratch = Scratch::default();
            }
            result
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

impl Classifier {
    /// Scans every string value of a JSON document (any depth up to 64,
    /// object keys excluded) and returns per-class counts, sorted by class,
    /// zero counts omitted.
    ///
    /// A body that is not valid JSON (or nests deeper than 64) is scanned as
    /// text instead, invalid UTF-8 replaced by U+FFFD: a client can send
    /// anything, and what it sends still leaves the host.
    pub fn scan_json(&self, body: &[u8]) -> Counts {
        let mut counts = vec![0; self.classes.len()];
        match json::string_values(body, MAX_JSON_DEPTH) {
            Some((text, values)) => with_scratch(|scratch| {
                for v in values {
                    let value = self.value_text(text, v, scratch);
                    for f in self.scan(value) {
                        counts[f.class] += 1;
                    }
                }
            }),
            None => {
                for f in self.scan(&String::from_utf8_lossy(body)) {
                    counts[f.class] += 1;
                }
            }
        }
        nonzero(counts)
    }

    /// Replaces every finding whose class `redact(class)` returns true with
    /// `[REDACTED:<class-name>]` inside the JSON string values, and returns
    /// the new body (valid JSON, same structure) plus per-class counts of
    /// what was replaced.
    ///
    /// Findings are searched in the decoded value and the replacement is
    /// written over the finding's raw bytes, so everything outside the
    /// findings, including the escaping of the rest of the string, is kept
    /// byte-for-byte. The replacement is plain ASCII with nothing to escape.
    ///
    /// `None` when nothing was replaced, and for a body that is not valid
    /// JSON (or nests deeper than 64): such a body is never rewritten. A
    /// caller whose policy redacts should treat "scan_json counts a redacted
    /// class but redact_json returns None" as a reason to block.
    pub fn redact_json(
        &self,
        body: &[u8],
        redact: impl Fn(usize) -> bool,
    ) -> Option<(Vec<u8>, Counts)> {
        let (text, values) = json::string_values(body, MAX_JSON_DEPTH)?;
        let mut counts = vec![0; self.classes.len()];
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        with_scratch(|scratch| {
            for v in values {
                let value = self.value_text(text, v, scratch);
                let findings = resolve(self.candidates(value), &redact);
                let contents = v.start + 1;
                for f in findings {
                    let start = contents + json::raw_offset(&scratch.map, f.start);
                    let end = contents + json::raw_offset(&scratch.map, f.end);
                    let buf = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 256));
                    buf.extend_from_slice(body.get(copied..start)?);
                    buf.extend_from_slice(b"[REDACTED:");
                    buf.extend_from_slice(self.class_name(f.class).as_bytes());
                    buf.push(b']');
                    copied = end;
                    counts[f.class] += 1;
                }
            }
            Some(())
        })?;
        let mut buf = out?;
        buf.extend_from_slice(body.get(copied..)?);
        Some((buf, nonzero(counts)))
    }

    /// The decoded value of a string literal that `json::string_values`
    /// found in `text`; `scratch.map` is left set up for `json::raw_offset`.
    fn value_text<'a>(
        &self,
        text: &'a str,
        v: json::StrValue,
        scratch: &'a mut Scratch,
    ) -> &'a str {
        scratch.map.clear();
        let raw = text
            .get(v.start + 1..v.end.saturating_sub(1))
            .unwrap_or_default();
        // Short strings ("user", "gpt-4o", "auto") are most of a body's
        // values; none can hold a built-in finding.
        if raw.len() < MIN_BUILTIN_LEN && self.finders.len() == self.gates.len() {
            return "";
        }
        if !v.escaped {
            return raw;
        }
        json::decode_into(raw, &mut scratch.text, &mut scratch.map);
        &scratch.text
    }
}

fn nonzero(counts: Vec<usize>) -> Counts {
    counts
        .into_iter()
        .enumerate()
        .filter(|&(_, n)| n > 0)
        .collect()
}
