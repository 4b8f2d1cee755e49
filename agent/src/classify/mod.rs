//! Data classification of prompts: finds secrets and personal data in text
//! and in the string values of JSON request bodies, and redacts them without
//! breaking the JSON.
//!
//! # How a scan runs
//!
//! Every prompt goes through here before it leaves the host, so the common
//! case (ordinary text, few or no findings) must cost about one pass of one
//! DFA.
//!
//! 1. First pass: one `Regex`, the alternation of every built-in class's
//!    gate (its pattern, or a bounded prefix of it), finds the spots where
//!    something may start. On prose without findings it finds nothing, and
//!    that pass is the whole cost.
//! 2. Each hit is widened to a window that ends at the next delimiter, a
//!    byte no built-in finding can contain (newline, `;`, `{`, … see
//!    `detectors::DELIMITERS`), or the next `. ` (`detectors::ends_window`).
//!    One `RegexSet` of the same gates, run over the window only, says which
//!    classes occur there.
//! 3. Only those classes' own regexes run, over that window, for positions;
//!    a check then validates each match (Luhn, mod-97, ranges, entropy, …).
//! 4. Overlaps are resolved: the longer finding wins, a tie goes to the
//!    earlier class, and `high-entropy` never wins against another class.
//!
//! Keys with a distinctive prefix may be glued to a word on their left
//! (`keyAKIA…`). Their gates keep a word boundary all the same (see
//! `detectors.rs` for why); the window gates mark where such a key can be,
//! and there `find_glued` looks for the prefixes themselves.
//!
//! The result is exactly that of running every class's regex over the whole
//! text (`tests_pii` checks this on random texts): the first pass and the
//! windows only skip text where nothing can be found.
//!
//! `private-key` spans lines: its gate is the BEGIN line, and its pattern
//! then runs over the whole text. Custom patterns always run over the whole
//! text, ungated: they may span lines, and nothing is known of their shape to
//! derive a gate from. One that starts with a literal (`ACME-[0-9]{6}`) is
//! cheap, as `regex` then skips ahead with a substring search.
//!
//! That is the plain scan. Text can also disguise a finding from it
//! (invisible characters, fullwidth letters, base64, hex, percent-encoding):
//! `disguise.rs` says how those are found, at a cost only where the plain
//! scan's windows or a cheap check point at one.

#[cfg(any(test, feature = "bench"))]
mod bench;
mod detectors;
mod disguise;
mod encoded;
mod json;
mod numbers;
mod redact;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_disguise;
#[cfg(test)]
mod tests_json;
#[cfg(test)]
mod tests_pii;

use std::collections::BTreeMap;

use regex::{Regex, RegexSet};

#[cfg(any(test, feature = "bench"))]
pub use self::bench::bench_json;
#[cfg(test)]
pub use self::bench::bench_text;
pub use self::redact::{JsonHits, JsonPlace};
use self::{
    detectors::{BUILTINS, GLUE_GATE, HIGH_ENTROPY, PERCENT_GATE, RUN_GATE},
    encoded::Marks,
};

/// Category of a class, for policy: block/redact/alert can be set per class
/// or per category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Secret,
    Pii,
    Custom,
}

/// A detected kind of data. Names are stable, kebab-case, used in policy
/// files and in `[REDACTED:<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClassInfo {
    pub name: String,
    pub category: Category,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Index into [`Classifier::classes`].
    pub class: usize,
    /// Byte offsets into the scanned text; always on `char` boundaries.
    pub start: usize,
    pub end: usize,
}

/// `(class, count)` pairs, sorted by class, zero counts left out.
pub type Counts = Vec<(usize, usize)>;

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("custom pattern `{name}`: {source}")]
    BadPattern {
        name: String,
        #[source]
        source: regex::Error,
    },
    #[error(
        "custom class name `{0}` must be kebab-case (a-z, 0-9, single dashes, at most \
         {MAX_NAME_LEN} bytes) and must not repeat a built-in or another custom name"
    )]
    BadName(String),
}

const MAX_NAME_LEN: usize = 64;

// `plain` keeps the built-in classes run in a window in a `u32`.
const _: () = assert!(BUILTINS.len() <= 32);

/// Shortest text any built-in class can match (`a@b.io`).
const MIN_BUILTIN_LEN: usize = 6;

/// Nesting limit for JSON bodies: serde_json's, which reads the body for
/// the model and the prompt, so that both readings accept the same
/// documents. Real request bodies nest under 10 levels; a deeper one is not
/// read (and under data rules not forwarded).
const MAX_JSON_DEPTH: usize = 128;

pub struct Classifier {
    classes: Vec<ClassInfo>,
    /// The first pass: every built-in gate, and the window gates, as one
    /// alternation.
    locator: Regex,
    /// The same gates as a set, run only on the windows `locator` finds.
    gates: GateSet,
    /// Every built-in class's `prefixes`, for keys glued to a word.
    prefixes: Regex,
    /// One per class: built-ins, then custom.
    finders: Vec<Regex>,
}

/// The built-in classes' gates, then `detectors::window_gates`: one pass
/// over a window says which classes, and whether an encoded run or a glued
/// key, may occur there.
struct GateSet(RegexSet);

impl GateSet {
    /// How many classes have a gate: the built-ins. The window gates after
    /// them belong to no class.
    fn len(&self) -> usize {
        BUILTINS.len()
    }
}

/// A validated match before overlap resolution.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    class: usize,
    start: usize,
    end: usize,
}

impl Classifier {
    /// Built-in detectors plus custom `(name, regex)` pairs (custom names
    /// must be kebab-case and not clash with built-ins).
    pub fn new(custom: &[(String, String)]) -> Result<Classifier, ClassifyError> {
        let mut classes: Vec<ClassInfo> = BUILTINS
            .iter()
            .map(|b| ClassInfo {
                name: b.name.to_owned(),
                category: b.category,
            })
            .collect();
        // The built-in patterns are constants covered by tests, so failing
        // to compile one is a programming error; still, report it rather
        // than panic in a long-running agent.
        let builtin_err = |name: &str, source| ClassifyError::BadPattern {
            name: name.to_owned(),
            source,
        };
        let window = detectors::window_gates();
        let gates = || {
            BUILTINS
                .iter()
                .map(|b| b.gate.unwrap_or(b.pattern))
                .chain(window.iter().map(String::as_str))
        };
        let gate_set = RegexSet::new(gates()).map_err(|e| builtin_err("built-in gate", e))?;
        let union: Vec<String> = gates().map(|g| format!("(?:{g})")).collect();
        let locator =
            Regex::new(&union.join("|")).map_err(|e| builtin_err("built-in locator", e))?;
        let prefixes: Vec<String> = BUILTINS
            .iter()
            .flat_map(|b| b.prefixes)
            .map(|p| regex::escape(p))
            .collect();
        let prefixes =
            Regex::new(&prefixes.join("|")).map_err(|e| builtin_err("built-in prefixes", e))?;
        let mut finders = Vec::with_capacity(BUILTINS.len() + custom.len());
        for b in &BUILTINS {
            finders.push(Regex::new(b.pattern).map_err(|e| builtin_err(b.name, e))?);
        }
        for (name, pattern) in custom {
            if !is_kebab(name) || classes.iter().any(|c| &c.name == name) {
                return Err(ClassifyError::BadName(name.clone()));
            }
            let re = Regex::new(pattern).map_err(|source| ClassifyError::BadPattern {
                name: name.clone(),
                source,
            })?;
            finders.push(re);
            classes.push(ClassInfo {
                name: name.clone(),
                category: Category::Custom,
            });
        }
        Ok(Classifier {
            classes,
            locator,
            gates: GateSet(gate_set),
            prefixes,
            finders,
        })
    }

    pub fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.name == name)
    }

    /// All findings in `text`, validated, non-overlapping (on overlap keep
    /// the longer; on a tie, the earlier class), sorted by start.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        resolve(self.candidates(text), |_| true)
    }

    /// Every validated match in `text`, overlapping ones included: those of
    /// the plain scan, and those of what the text disguises.
    fn candidates(&self, text: &str) -> Vec<Candidate> {
        let mut out = Vec::new();
        let mut budget = disguise::Budget::new(text.len());
        self.layer(text, 0, &mut budget, &mut out);
        out
    }

    /// The plain scan (see the module doc) of `text`, and keys glued to a
    /// word in the windows the window gates mark. What may be encoded goes
    /// to `marks`.
    fn plain(&self, text: &str, marks: &mut Marks, out: &mut Vec<Candidate>) {
        let mut spans = Vec::new();
        if text.len() >= MIN_BUILTIN_LEN {
            let bytes = text.as_bytes();
            let mut covered = 0;
            let mut whole_done = [false; BUILTINS.len()];
            for m in self.locator.find_iter(text) {
                // A hit may begin with the delimiter that ended the previous
                // window (gates can look at the byte before a finding).
                if m.end() <= covered {
                    continue;
                }
                // Every valid built-in finding starts inside some hit: the
                // locator is leftmost-first over gates that match where a
                // finding starts (or on the byte before). Findings never hold
                // a delimiter, so those behind this hit lie between its start
                // and the next delimiter.
                let from = m.start().max(covered);
                let to = detectors::window_end(bytes, m.end());
                // The class regexes search from the segment start, as a
                // search over the whole text would: a rejected match that
                // began before the hit could otherwise be cut short and
                // reveal a "finding" the whole-text search never reports.
                let segment = detectors::window_start(bytes, covered, from);
                covered = to;
                let Some(hay) = text.get(..to) else { continue };
                // Gates may start on the byte before a finding, which can be
                // the delimiter before `from`.
                let gate_from = text
                    .get(..from)
                    .and_then(|t| t.char_indices().next_back())
                    .map_or(0, |(i, _)| i);
                let (mut runs, mut percent, mut glue) = (false, false, false);
                let mut ran = 0u32;
                for class in self.gates.0.matches_at(hay, gate_from).iter() {
                    // `high-entropy`'s gate is a run of 32 base64 characters.
                    runs |= class == HIGH_ENTROPY;
                    match BUILTINS.get(class) {
                        Some(b) if !b.whole_text => {
                            ran |= 1 << class;
                            self.find(class, hay, segment, &mut spans, out);
                        }
                        Some(_) if !whole_done[class] => {
                            whole_done[class] = true;
                            self.find(class, text, 0, &mut spans, out);
                        }
                        Some(_) => {}
                        None => {
                            runs |= class == RUN_GATE;
                            percent |= class == PERCENT_GATE;
                            glue |= class == GLUE_GATE;
                        }
                    }
                }
                if glue {
                    self.find_glued(hay, segment, (segment, to), &mut ran, &mut spans, out);
                }
                if runs {
                    let first = marks.mark_runs(bytes, gate_from, to);
                    for i in first..marks.runs.len() {
                        let run = marks.runs[i];
                        self.find_glued(hay, segment, run, &mut ran, &mut spans, out);
                    }
                }
                if percent {
                    marks.percent.push((gate_from, to));
                }
            }
        }
        for class in BUILTINS.len()..self.finders.len() {
            for m in self.finders[class].find_iter(text) {
                if m.end() > m.start() {
                    out.push(Candidate {
                        class,
                        start: m.start(),
                        end: m.end(),
                    });
                }
            }
        }
    }

    /// Runs `class`'s regex over `hay` (a prefix of the scanned text) from
    /// `from` on, and validates each match. Searching with `find_at` rather
    /// than on a sub-slice keeps the bytes before `from` as context for `\b`.
    fn find(
        &self,
        class: usize,
        hay: &str,
        from: usize,
        spans: &mut Vec<validate::Span>,
        out: &mut Vec<Candidate>,
    ) {
        let re = &self.finders[class];
        let check = BUILTINS[class].check;
        let mut at = from;
        while let Some(m) = re.find_at(hay, at) {
            spans.clear();
            check(hay.as_bytes(), m.start(), m.end(), spans);
            out.extend(
                spans
                    .iter()
                    .map(|&(start, end)| Candidate { class, start, end }),
            );
            // Built-in patterns never match empty; stop rather than spin if
            // one ever did.
            if m.end() <= at {
                break;
            }
            at = m.end();
        }
    }

    /// Keys glued to a word on their left (`keyAKIA…`), which their gates,
    /// bounded by a word boundary, do not see: each prefix in `hay[start..end]`
    /// after a word byte runs its class's finder from `from`, unless `ran`
    /// says the window already did. The window gates mark every window
    /// such a key can be in, and the token it is in (see
    /// `detectors::window_gates`).
    fn find_glued(
        &self,
        hay: &str,
        from: usize,
        (start, end): (usize, usize),
        ran: &mut u32,
        spans: &mut Vec<validate::Span>,
        out: &mut Vec<Candidate>,
    ) {
        let b = hay.as_bytes();
        let Some(region) = hay.get(start..end) else {
            return;
        };
        for m in self.prefixes.find_iter(region) {
            let at = start + m.start();
            let glued = at
                .checked_sub(1)
                .and_then(|i| b.get(i))
                .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
            if !glued {
                continue;
            }
            let rest = &b[at..];
            for (class, builtin) in BUILTINS.iter().enumerate() {
                let prefixed = builtin
                    .prefixes
                    .iter()
                    .any(|p| rest.starts_with(p.as_bytes()));
                if prefixed && *ran & (1 << class) == 0 {
                    *ran |= 1 << class;
                    self.find(class, hay, from, spans, out);
                }
            }
        }
    }

    fn class_name(&self, class: usize) -> &str {
        self.classes
            .get(class)
            .map_or("unknown", |c| c.name.as_str())
    }
}

fn is_kebab(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Turns candidates into findings. `keep` filters classes before overlaps are
/// resolved, so that a class being redacted is never hidden by an overlapping
/// finding of a class that is not.
fn resolve(cands: Vec<Candidate>, keep: impl Fn(usize) -> bool) -> Vec<Finding> {
    let (entropy, mut others): (Vec<_>, Vec<_>) = cands
        .into_iter()
        .filter(|c| c.end > c.start)
        .partition(|c| c.class == HIGH_ENTROPY);
    // "Not already another finding": a high-entropy token that overlaps any
    // other validated match (a JWT segment, the body of an API key) is that
    // match's, whether or not the other class is kept.
    others.sort_by_key(|c| c.start);
    let mut max_end = Vec::with_capacity(others.len());
    let mut running = 0;
    for c in &others {
        running = running.max(c.end);
        max_end.push(running);
    }
    let claimed = |s: usize, e: usize| {
        let n = others.partition_point(|c| c.start < e);
        n.checked_sub(1)
            .and_then(|i| max_end.get(i))
            .is_some_and(|&end| end > s)
    };
    let entropy: Vec<Candidate> = entropy
        .into_iter()
        .filter(|c| !claimed(c.start, c.end))
        .collect();

    others.retain(|c| keep(c.class));
    others.sort_by(|a, b| {
        (b.end - b.start)
            .cmp(&(a.end - a.start))
            .then(a.class.cmp(&b.class))
            .then(a.start.cmp(&b.start))
    });
    // Accepted findings by start; they never overlap, so the one starting
    // last before a candidate's end is the only one that can overlap it.
    let mut taken: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for c in others
        .into_iter()
        .chain(entropy.into_iter().filter(|c| keep(c.class)))
    {
        let overlaps = taken
            .range(..c.end)
            .next_back()
            .is_some_and(|(_, &(end, _))| end > c.start);
        if !overlaps {
            taken.insert(c.start, (c.end, c.class));
        }
    }
    taken
        .into_iter()
        .map(|(start, (end, class))| Finding { class, start, end })
        .collect()
}
