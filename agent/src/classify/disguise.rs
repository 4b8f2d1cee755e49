//! Findings that text disguises from the plain scan, and the way back from
//! where they were found to the bytes a redaction must replace.
//!
//! A model reads through disguises that a regex does not: invisible
//! characters inside a key, fullwidth letters (`ＡＫＩＡ…`), a key in base64,
//! hex or percent-encoding. Each text is scanned as it is (the plain scan),
//! then:
//!
//! - when an invisible character sits between two visible ones, or a
//!   fullwidth letter or digit is present, the text once more with every
//!   invisible character removed and fullwidth ASCII folded (`unhide`). A
//!   first check skips ASCII 32 bytes at a time and decodes only characters
//!   whose first byte some such character has, so text without them (most
//!   prompts) costs about nothing;
//! - the decodings of the encoded runs that the plain scan's window gates
//!   marked (`encoded.rs`), each scanned the same way in turn.
//!
//! A finding in unhidden or percent-decoded text maps back to exactly the
//! bytes it came from, with the invisible characters inside it. A finding in
//! the decoding of a base64 or hex run becomes one over the whole run: what
//! it came from is the run, and a redaction must replace all of it.
//!
//! # Bounds
//!
//! - Depth: a decoding is scanned and its own runs decoded, and so on, for
//!   [`MAX_DEPTH`] decodings: base64(hex(key)), base64(base64(key)) and
//!   percent(base64(key)) are found, a third layer is not looked into.
//! - Bytes: the decodings of one scan hold at most twice the text's length,
//!   plus 4 KiB, between them ([`Budget`]); a decoding that would pass that
//!   is not made. A run is decoded once per encoding it can be in, at one
//!   alignment, to fewer bytes than it has (base64 ¾, hex ½, percent at
//!   most 1), and all the runs of a text are decoded before any decoding is
//!   scanned. So only runs crafted to be several encodings at once can
//!   leave one at the first depth undecoded; the cut falls on decodings of
//!   decodings.
//! - Unhiding copies each text scanned (the original, each decoding) at most
//!   once; the extra scans (unhidden text, decodings) are of those copies.

use super::{
    Candidate, Category, Classifier, HIGH_ENTROPY,
    encoded::{self, Marks},
};

/// Decodings of decodings are scanned; their runs are not decoded again.
pub(super) const MAX_DEPTH: usize = 2;

/// What the decodings of one scan may still hold, in bytes.
pub(super) struct Budget {
    left: usize,
}

impl Budget {
    /// Twice the text, plus room for a few short runs in a short text.
    pub(super) fn new(text_len: usize) -> Budget {
        Budget {
            left: text_len.saturating_mul(2).saturating_add(4 << 10),
        }
    }

    /// Reserves `n` bytes, or says there are not that many left.
    pub(super) fn take(&mut self, n: usize) -> bool {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
}

/// From offsets in a derived text (unhidden, percent-decoded) back to the
/// text it came from. `(derived, original)` pairs sit at both edges of
/// every changed stretch; between pairs both advance together.
#[derive(Debug, Default)]
pub(super) struct OffsetMap(Vec<(usize, usize)>);

impl OffsetMap {
    pub(super) fn push(&mut self, derived: usize, original: usize) {
        self.0.push((derived, original));
    }

    /// The last pair at or before `derived` wins, so a span starts after
    /// removed characters before it and ends after those behind it: a
    /// finding's span covers every removed character inside it.
    fn map(&self, derived: usize) -> usize {
        let n = self.0.partition_point(|&(d, _)| d <= derived);
        match n.checked_sub(1).and_then(|i| self.0.get(i)) {
            Some(&(d, o)) => o + (derived - d),
            None => derived,
        }
    }

    pub(super) fn span(&self, c: Candidate) -> Candidate {
        Candidate {
            class: c.class,
            start: self.map(c.start),
            end: self.map(c.end),
        }
    }
}

impl Classifier {
    /// Every candidate in `text` (a decoding `depth` levels down): the plain
    /// scan's, the unhidden text's, and those of the decoded runs.
    pub(super) fn layer(
        &self,
        text: &str,
        depth: usize,
        budget: &mut Budget,
        out: &mut Vec<Candidate>,
    ) {
        let first = out.len();
        let mut marks = Marks::default();
        self.plain(text, &mut marks, out);
        let mut decoded = Vec::new();
        let prose: Vec<(usize, usize)> = match unhide(text) {
            // The unhidden text holds every encoded run the text does, and
            // some only it does (a base64 run split by a zero-width space).
            Some((clean, map)) => {
                let mut inner = Vec::new();
                marks = Marks::default();
                self.plain(&clean, &mut marks, &mut inner);
                let prose = self.decodings(&clean, &marks, depth, budget, &inner, &mut decoded);
                out.extend(inner.into_iter().map(|c| map.span(c)));
                decoded = decoded.into_iter().map(|c| map.span(c)).collect();
                prose
                    .into_iter()
                    .map(|(s, e)| (map.map(s), map.map(e)))
                    .collect()
            }
            None => {
                let plain = out.get(first..).unwrap_or_default();
                self.decodings(text, &marks, depth, budget, plain, &mut decoded)
            }
        };
        // `high-entropy` is for random tokens and credentials; a token that
        // decodes to prose is neither (random bytes decode to text about
        // once in 10^10 for the shortest such token), and what the prose
        // holds was scanned: its findings, `high-entropy` ones included,
        // are in `decoded`.
        if !prose.is_empty() {
            // Runs come in text order and do not overlap.
            let inside = |c: &Candidate| {
                let n = prose.partition_point(|&(s, _)| s <= c.start);
                n.checked_sub(1)
                    .and_then(|i| prose.get(i))
                    .is_some_and(|&(_, e)| c.end <= e)
            };
            let mut rest = out.split_off(first);
            rest.retain(|c| c.class != HIGH_ENTROPY || !inside(c));
            out.append(&mut rest);
        }
        out.append(&mut decoded);
    }

    /// Scans the decodings of what `marks` points at into `out`; returns
    /// where the base64 and hex runs that decoded to prose are. `plain`
    /// holds the plain scan's candidates in `text`.
    fn decodings(
        &self,
        text: &str,
        marks: &Marks,
        depth: usize,
        budget: &mut Budget,
        plain: &[Candidate],
        out: &mut Vec<Candidate>,
    ) -> Vec<(usize, usize)> {
        let mut prose = Vec::new();
        if depth >= MAX_DEPTH || marks.is_empty() {
            return prose;
        }
        // A run inside a secret already found (a JWT's segments, a PEM
        // body, a token) is that secret's: whatever its decoding holds, the
        // finding covers it, and decoding every JWT would cost the scan of
        // ordinary prompts.
        let mut secrets: Vec<(usize, usize)> = plain
            .iter()
            .filter(|c| {
                c.class != HIGH_ENTROPY
                    && self
                        .classes
                        .get(c.class)
                        .is_some_and(|i| i.category == Category::Secret)
            })
            .map(|c| (c.start, c.end))
            .collect();
        secrets.sort_unstable();
        let mut reach = 0;
        for s in &mut secrets {
            reach = reach.max(s.1);
            s.1 = reach;
        }
        let found = |start: usize, end: usize| {
            let n = secrets.partition_point(|&(s, _)| s <= start);
            n.checked_sub(1)
                .and_then(|i| secrets.get(i))
                .is_some_and(|&(_, reach)| reach >= end)
        };
        let mut inner = Vec::new();
        for d in encoded::decode(text, marks, budget, found) {
            inner.clear();
            self.layer(&d.text, depth + 1, budget, &mut inner);
            match &d.map {
                Some(map) => out.extend(inner.iter().map(|&c| map.span(c))),
                None => {
                    if d.prose {
                        prose.push((d.start, d.end));
                    }
                    // Every finding in the run is the run: one per class.
                    let mut classes: Vec<usize> = inner.iter().map(|c| c.class).collect();
                    classes.sort_unstable();
                    classes.dedup();
                    out.extend(classes.into_iter().map(|class| Candidate {
                        class,
                        start: d.start,
                        end: d.end,
                    }));
                }
            }
        }
        prose
    }
}

/// Default_Ignorable_Code_Point (Unicode 15.1, DerivedCoreProperties.txt):
/// characters that render as nothing. Zero-width spaces and joiners, the
/// soft hyphen, bidi controls, variation selectors, tags, Hangul fillers.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{AD}'
            | '\u{34F}'
            | '\u{61C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Fullwidth forms of ASCII `!`..`~`, which a model reads as ASCII.
fn fold(c: char) -> Option<char> {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(u32::from(c) - 0xFEE0),
        _ => None,
    }
}

/// First bytes of the UTF-8 encodings of every character above; any other
/// non-ASCII character (accents, most CJK, emoji) is passed over at a
/// table lookup.
static MAY_HIDE: [bool; 256] = {
    let mut table = [false; 256];
    let leads = [0xC2, 0xCD, 0xD8, 0xE1, 0xE2, 0xE3, 0xEF, 0xF0, 0xF3];
    let mut i = 0;
    while i < leads.len() {
        table[leads[i]] = true;
        i += 1;
    }
    table
};

/// The first byte at or after `from` that is not ASCII: 32 bytes at a
/// time as four words OR-ed together, then the word that holds it.
fn next_non_ascii(b: &[u8], from: usize) -> Option<usize> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |w: &[u8]| <[u8; 8]>::try_from(w).map_or(0, u64::from_le_bytes);
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 32) {
        let any = chunk.chunks_exact(8).fold(0, |acc, w| acc | word(w));
        if any & HIGH != 0 {
            break;
        }
        i += 32;
    }
    while let Some(w) = b.get(i..i + 8) {
        let high = word(w) & HIGH;
        if high != 0 {
            return Some(i + high.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    b.get(i..)?.iter().position(|&c| c >= 0x80).map(|p| i + p)
}

/// The length of the UTF-8 sequence a lead byte starts.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        _ => 2,
    }
}

/// The characters of `text` that `unhide` changes: each with its offset
/// and what it becomes (`None`: removed).
fn changes(text: &str) -> impl Iterator<Item = (usize, char, Option<char>)> + '_ {
    let b = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        loop {
            let p = next_non_ascii(b, at)?;
            // Every byte before `p` since the last character is ASCII, so
            // `p` starts a character.
            let lead = b[p];
            if !MAY_HIDE[usize::from(lead)] {
                at = p + utf8_len(lead);
                continue;
            }
            let c = text.get(p..)?.chars().next()?;
            at = p + c.len_utf8();
            if is_invisible(c) {
                return Some((p, c, None));
            }
            if let Some(a) = fold(c) {
                return Some((p, c, Some(a)));
            }
        }
    })
}

/// Whether unhiding `text` could reveal something: an invisible character
/// with a visible ASCII or fullwidth character on each side (past any
/// further invisible ones), or a fullwidth letter or digit. Emoji sequences
/// (joiners, variation selectors) and a leading byte-order mark do not
/// qualify, and fullwidth punctuation alone is ordinary CJK text.
fn disguised(text: &str) -> bool {
    let visible = |c: Option<char>| c.is_some_and(|c| c.is_ascii_graphic() || fold(c).is_some());
    let mut skip_to = 0;
    for (at, c, folded) in changes(text) {
        if let Some(a) = folded {
            if a.is_ascii_alphanumeric() {
                return true;
            }
            continue;
        }
        if at < skip_to {
            continue;
        }
        let before = text.get(..at).and_then(|t| t.chars().next_back());
        let rest = text.get(at + c.len_utf8()..).unwrap_or_default();
        let after_run = rest.trim_start_matches(is_invisible);
        skip_to = text.len() - after_run.len();
        if visible(before) && visible(after_run.chars().next()) {
            return true;
        }
    }
    false
}

/// `text` without invisible characters and with fullwidth ASCII folded,
/// and the map back; `None` when that would reveal nothing.
pub(super) fn unhide(text: &str) -> Option<(String, OffsetMap)> {
    if !disguised(text) {
        return None;
    }
    let mut clean = String::with_capacity(text.len());
    let mut map = OffsetMap::default();
    let mut copied = 0;
    for (at, c, folded) in changes(text) {
        clean.push_str(text.get(copied..at)?);
        map.push(clean.len(), at);
        if let Some(a) = folded {
            clean.push(a);
        }
        copied = at + c.len_utf8();
        map.push(clean.len(), copied);
    }
    clean.push_str(text.get(copied..)?);
    Some((clean, map))
}
