//! Scanning and redacting JSON request bodies.
//!
//! Every string is looked at: values, and object keys too — keys carry data
//! (the openai SDK's `metadata`, a tool schema's property names, a tool
//! call's `input`), and the upstream reads them. A number cannot be replaced
//! by `[REDACTED:…]` without changing the document's types, and nothing in
//! a request schema carries a prompt in one. Each string is decoded first,
//! so escapes (`\n`, `\"`, `\u0041`) neither hide a finding nor split one.
//!
//! A finding can also be split across strings (two messages, two content
//! parts): the model reads them one after the other. Besides each string on
//! its own, the text around each join of adjacent string values is scanned
//! as one, and what crosses a join is reported as [`JsonPlace::Joined`].

use std::cell::RefCell;

use super::{Classifier, Counts, MAX_JSON_DEPTH, MIN_BUILTIN_LEN, json, resolve};

/// Where in a JSON document a finding was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JsonPlace {
    /// Inside one string value.
    Value,
    /// Inside one object key.
    Key,
    /// Across adjacent string values: each piece alone holds no finding.
    Joined,
}

/// What a JSON body holds: `(class, place, count)`, sorted, zero counts
/// left out.
pub type JsonHits = Vec<(usize, JsonPlace, usize)>;

/// Values of these keys are the request's structure (`"role": "user"`,
/// `"type": "text"`), not text the model reads as one with its neighbours:
/// they are left out of the joined view, so that they do not stand between
/// two halves of a split finding.
const STRUCTURAL_KEYS: &[&str] = &["role", "type", "model", "id", "object"];

/// Longest structural value that is still left out of the joined view; a
/// longer one is text whatever its key.
const STRUCTURAL_MAX: usize = 64;

/// A run of joined text is scanned, at the latest, once it is this long.
/// Runs hold only the whitespace-free text around joins, so this is reached
/// only by a long unbroken token cut into many strings.
const JOINED_RUN_MAX: usize = 16 * 1024;

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
    /// Scans every string of a JSON document (values and object keys, any
    /// depth up to 128, as serde_json reads) and returns per-class counts,
    /// sorted by class, zero counts omitted.
    ///
    /// A body that is not valid JSON (or nests deeper than 128) is scanned as
    /// text instead, invalid UTF-8 replaced by U+FFFD. The proxy does not
    /// rely on that reading (it refuses such bodies under data rules, see
    /// `inspect`); it is here for callers that only count.
    pub fn scan_json(&self, body: &[u8]) -> Counts {
        match self.read_json(body) {
            Some(hits) => {
                let mut counts = vec![0; self.classes.len()];
                for (class, _, n) in hits {
                    counts[class] += n;
                }
                nonzero(counts)
            }
            None => self.scan_counts(&String::from_utf8_lossy(body)),
        }
    }

    /// Findings in `text` counted per class.
    pub fn scan_counts(&self, text: &str) -> Counts {
        let mut counts = vec![0; self.classes.len()];
        for f in self.scan(text) {
            counts[f.class] += 1;
        }
        nonzero(counts)
    }

    /// Every finding of a JSON document with where it was made, or `None`
    /// when `body` is not one valid JSON document (or nests deeper than 128).
    pub fn read_json(&self, body: &[u8]) -> Option<JsonHits> {
        let (text, values) = json::string_values(body, MAX_JSON_DEPTH)?;
        let mut hits: std::collections::BTreeMap<(usize, JsonPlace), usize> = Default::default();
        let mut joined = Joined::default();
        with_scratch(|scratch| {
            let mut field: Option<(usize, usize)> = None;
            for v in values {
                let value = self.value_text(text, v, scratch, true);
                let place = if v.key {
                    JsonPlace::Key
                } else {
                    JsonPlace::Value
                };
                // Short strings ("user", "auto") hold no finding of their
                // own; they are read only for the joined view.
                if !self.cannot_hold_builtin(value) {
                    for f in self.scan(value) {
                        *hits.entry((f.class, place)).or_default() += 1;
                    }
                }
                if v.key {
                    field = Some((v.start + 1, v.end - 1));
                    continue;
                }
                let structural = value.len() <= STRUCTURAL_MAX
                    && field
                        .and_then(|(s, e)| text.get(s..e))
                        .is_some_and(|name| STRUCTURAL_KEYS.contains(&name));
                field = None;
                if !structural {
                    joined.push(self, value, &mut hits);
                }
            }
        });
        joined.flush(self, &mut hits);
        Some(
            hits.into_iter()
                .map(|((class, place), n)| (class, place, n))
                .collect(),
        )
    }

    /// Replaces every finding whose class `redact(class)` returns true with
    /// `[REDACTED:<class-name>]` inside the JSON strings (values and keys),
    /// and returns the new body (valid JSON, same structure) plus per-class
    /// counts of what was replaced.
    ///
    /// Findings are searched in the decoded string and the replacement is
    /// written over the finding's raw bytes, so everything outside the
    /// findings, including the escaping of the rest of the string, is kept
    /// byte-for-byte. The replacement is plain ASCII with nothing to escape.
    ///
    /// `None` when nothing was replaced, and for a body that is not valid
    /// JSON (or nests deeper than 128): such a body is never rewritten.
    /// Findings split across strings ([`JsonPlace::Joined`]) are not
    /// replaced either: a caller whose policy redacts must refuse a request
    /// with such a finding, or one `read_json` cannot read.
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
                let value = self.value_text(text, v, scratch, false);
                if value.is_empty() {
                    continue;
                }
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

    /// [`Classifier::redact_json`] for a text body: the findings of classes
    /// `redact` picks replaced, `None` when there were none.
    pub fn redact_text(
        &self,
        text: &str,
        redact: impl Fn(usize) -> bool,
    ) -> Option<(String, Counts)> {
        let findings = resolve(self.candidates(text), &redact);
        if findings.is_empty() {
            return None;
        }
        let mut counts = vec![0; self.classes.len()];
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        for f in findings {
            out.push_str(text.get(copied..f.start)?);
            out.push_str("[REDACTED:");
            out.push_str(self.class_name(f.class));
            out.push(']');
            copied = f.end;
            counts[f.class] += 1;
        }
        out.push_str(text.get(copied..)?);
        Some((out, nonzero(counts)))
    }

    /// Whether `text` is certain to hold no finding: no custom class is
    /// configured, and it is too short for any built-in one, or a plain
    /// lower-case word (`messages`, `temperature`, `assistant`) — no
    /// built-in finding, nor any encoding of one, is made of lower-case
    /// letters and `_` alone. Schema keys and enum values are most of a
    /// body's strings, so this spares a scan each.
    fn cannot_hold_builtin(&self, text: &str) -> bool {
        self.finders.len() == self.gates.len()
            && (text.len() < MIN_BUILTIN_LEN
                || text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    }

    /// The decoded value of a string literal that `json::string_values`
    /// found in `text`; `scratch.map` is left set up for `json::raw_offset`.
    ///
    /// Short strings ("user", "gpt-4o", "auto") are most of a body's values,
    /// and none can hold a built-in finding on its own: unless `whole` asks
    /// for them (the joined view needs every piece), they come back empty.
    fn value_text<'a>(
        &self,
        text: &'a str,
        v: json::StrValue,
        scratch: &'a mut Scratch,
        whole: bool,
    ) -> &'a str {
        scratch.map.clear();
        let raw = text
            .get(v.start + 1..v.end.saturating_sub(1))
            .unwrap_or_default();
        if !whole && self.cannot_hold_builtin(raw) {
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

/// The text around joins of adjacent string values, built as the values go
/// by. Only the whitespace-free ends of values are kept — a finding of any
/// built-in class holds no whitespace, so one that crosses a join lies
/// within the token that spans it — which keeps the extra scanning to a few
/// bytes per join on ordinary bodies.
#[derive(Default)]
struct Joined {
    run: String,
    /// Offsets in `run` where one value ends and the next begins.
    joins: Vec<usize>,
}

impl Joined {
    fn push(
        &mut self,
        classifier: &Classifier,
        value: &str,
        hits: &mut std::collections::BTreeMap<(usize, JsonPlace), usize>,
    ) {
        if value.is_empty() {
            return;
        }
        let head_end = value
            .find(|c: char| c.is_whitespace())
            .unwrap_or(value.len());
        if !self.run.is_empty() {
            self.joins.push(self.run.len());
        }
        self.run.push_str(&value[..head_end]);
        if head_end == value.len() && self.run.len() < JOINED_RUN_MAX {
            // The whole value is one token: the run goes on into the next.
            return;
        }
        self.flush(classifier, hits);
        if head_end < value.len() {
            let tail_start = value
                .rfind(|c: char| c.is_whitespace())
                .map_or(value.len(), |i| {
                    i + value[i..].chars().next().map_or(1, char::len_utf8)
                });
            self.run.push_str(&value[tail_start..]);
        }
    }

    /// Scans the run, counts what crosses a join, and starts a new one.
    fn flush(
        &mut self,
        classifier: &Classifier,
        hits: &mut std::collections::BTreeMap<(usize, JsonPlace), usize>,
    ) {
        if !self.joins.is_empty() && self.run.len() >= MIN_BUILTIN_LEN {
            for f in classifier.scan(&self.run) {
                let crosses = self.joins.iter().any(|&j| f.start < j && j < f.end);
                if crosses {
                    *hits.entry((f.class, JsonPlace::Joined)).or_default() += 1;
                }
            }
        }
        self.run.clear();
        self.joins.clear();
    }
}
