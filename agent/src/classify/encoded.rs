//! Encoded runs: base64 (standard and URL-safe alphabets, padded or not,
//! wrapped at line breaks), hex and percent-encoding, found in the windows
//! the plain scan marked, and decoded into text to scan again.
//!
//! A decoding that is text (UTF-8 without control characters) is scanned
//! whole. Anything else, an image in a data URL most often, is scanned only
//! for its printable ASCII runs of [`MIN_STRING`] bytes or more, as
//! `strings` would: in random bytes such runs are rare (one per ~16 KiB),
//! and finding them skips [`MIN_STRING`] bytes at a time, so a multi-MB
//! image costs one decode and a light pass.

use std::{borrow::Cow, sync::LazyLock};

use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurposeConfig, Simd},
};

use super::{
    MIN_BUILTIN_LEN,
    disguise::{Budget, OffsetMap},
};

/// Shortest base64 run decoded: 18 bytes' worth, a little under the 27
/// characters of a 20-byte AWS key id.
const MIN_BASE64: usize = 24;

/// Shortest hex run decoded: the 40 digits of a 20-byte key. Shorter ones
/// are ids, colours, short digests.
const MIN_HEX: usize = 40;

/// A line of base64 this long or longer may be wrapped (PEM wraps at 64,
/// MIME at 76): the run goes on over the line break. Also the shortest run
/// marked, as the run gate is 16 characters.
const MIN_WRAP: usize = 16;

/// Shortest printable run taken from a binary decoding.
const MIN_STRING: usize = 10;

/// Longest average word of a decoding that counts as prose.
const PROSE_WORD: usize = 24;

/// How much of a run the search for its alignment looks at.
const ALIGN_SAMPLE: usize = 4 << 10;

/// Where the plain scan's window gates point at encodings, in text order:
/// base64 runs of [`MIN_WRAP`]+ characters (start, and end on their first
/// line), and windows with percent escapes.
#[derive(Debug, Default)]
pub(super) struct Marks {
    pub runs: Vec<(usize, usize)>,
    pub percent: Vec<(usize, usize)>,
}

impl Marks {
    pub(super) fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.percent.is_empty()
    }

    /// Marks the runs in `from..to` (a window: it ends after a delimiter,
    /// so no run goes on past it but by a line break); returns the index of
    /// the first one added. A window is often a paragraph of words, which
    /// this skips [`MIN_WRAP`] bytes at a time.
    pub(super) fn mark_runs(&mut self, b: &[u8], from: usize, to: usize) -> usize {
        let first = self.runs.len();
        let done = self.runs.last().map_or(0, |&(_, end)| end);
        let from = from.max(done);
        let window = b.get(from..to).unwrap_or_default();
        for (s, e) in long_runs(window, MIN_WRAP, is_base64) {
            let mut start = from + s;
            // A window can begin inside a run.
            if s == 0 {
                start -= b
                    .get(done..start)
                    .map_or(0, |w| w.iter().rev().take_while(|&&c| is_base64(c)).count());
            }
            self.runs.push((start, from + e));
        }
        first
    }
}

/// Text decoded from `start..end` of the scanned text.
pub(super) struct Decoded {
    pub text: String,
    pub start: usize,
    pub end: usize,
    /// The decoding is prose: text with a space or line break at least
    /// every [`PROSE_WORD`] bytes on average, as no credential has.
    pub prose: bool,
    /// Where each stretch of a percent-decoding came from. Base64 and hex
    /// have none: a finding there is one over the whole run.
    pub map: Option<OffsetMap>,
}

/// Bytes of base64 (both alphabets, and padding), and of what may surround
/// a percent escape in a URL, a form body or a query.
const BASE64: u8 = 1;
const URL: u8 = 2;

static KIND: [u8; 256] = {
    let mut table = [0; 256];
    let mut c = 0x21;
    while c < 0x7f {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-') {
            table[c] |= BASE64;
        }
        if !matches!(b, b'"' | b'\'' | b'<' | b'>' | b'\\' | b'`') {
            table[c] |= URL;
        }
        c += 1;
    }
    table
};

fn is_base64(c: u8) -> bool {
    KIND[usize::from(c)] & BASE64 != 0
}

fn is_url(c: u8) -> bool {
    KIND[usize::from(c)] & URL != 0
}

/// The maximal runs of bytes `is` accepts that are `min` bytes or longer.
/// Any such run holds the byte `min - 1` past wherever it starts, so the
/// search probes there and skips `min` bytes when that byte is not in a
/// run, as in random data it mostly is not.
fn long_runs(
    b: &[u8],
    min: usize,
    is: impl Fn(u8) -> bool,
) -> impl Iterator<Item = (usize, usize)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while let Some(&c) = b.get(i + min - 1) {
            let probe = i + min - 1;
            if !is(c) {
                i = probe + 1;
                continue;
            }
            let start = probe - b[i..probe].iter().rev().take_while(|&&c| is(c)).count();
            let end = probe + b[probe..].iter().take_while(|&&c| is(c)).count();
            i = end + 1;
            if end - start >= min {
                return Some((start, end));
            }
        }
        None
    })
}

/// Decodes the runs and percent-encoded regions `marks` points at, within
/// `budget`, but those that `skip(start, end)`.
pub(super) fn decode(
    text: &str,
    marks: &Marks,
    budget: &mut Budget,
    skip: impl Fn(usize, usize) -> bool,
) -> Vec<Decoded> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    // A wrapped run takes in the runs marked on its later lines.
    let mut runs_done = 0;
    for &(start, _) in &marks.runs {
        if start < runs_done {
            continue;
        }
        let run = Run::at(b, start);
        if run.end - run.start >= MIN_BASE64 && !skip(run.start, run.end) {
            decode_run(b, &run, budget, &mut out);
        }
        runs_done = run.end;
    }
    // Regions may outgrow their window; each is decoded once.
    let mut percent_done = 0;
    for &(from, to) in &marks.percent {
        let mut i = from.max(percent_done);
        while let Some(at) = b
            .get(i..to)
            .and_then(|w| memchr::memchr(b'%', w))
            .map(|p| i + p)
        {
            if hex_pair(b, at + 1).is_none() {
                i = at + 1;
                continue;
            }
            let start = at
                - b.get(percent_done..at)
                    .map_or(0, |w| w.iter().rev().take_while(|&&c| is_url(c)).count());
            let end = at + b[at..].iter().take_while(|&&c| is_url(c)).count();
            if !skip(start, end) {
                out.extend(percent_decode(b, start, end, budget));
            }
            percent_done = end;
            i = end;
        }
    }
    out
}

/// A run of base64 characters: its lines (one unless wrapped) and extent.
struct Run {
    start: usize,
    end: usize,
    lines: Vec<(usize, usize)>,
}

impl Run {
    /// The run from `start`, continued over line breaks while it looks
    /// wrapped: a first line of [`MIN_WRAP`]+ characters (possibly cut by
    /// text before it), a second at least as long that sets the width, then
    /// lines of that width, and a last one no longer.
    fn at(b: &[u8], start: usize) -> Run {
        let mut lines = Vec::new();
        let mut s = start;
        let mut width = None;
        loop {
            let e = s + b[s..].iter().take_while(|&&c| is_base64(c)).count();
            let len = e - s;
            let go_on = match (lines.last(), width) {
                (None, _) => len >= MIN_WRAP,
                (Some(&(ps, pe)), None) => {
                    width = Some(len);
                    len >= pe - ps
                }
                (Some(_), Some(w)) => len == w,
            };
            lines.push((s, e));
            let Some(next) = go_on.then(|| line_break(b, e)).flatten() else {
                break;
            };
            if !b.get(next).is_some_and(|&c| is_base64(c)) {
                break;
            }
            s = next;
        }
        let end = lines.last().map_or(start, |&(_, e)| e);
        Run { start, end, lines }
    }
}

/// Where the line after a line break at `at` starts: a newline, CRLF, or
/// their escapes `\n`, `\r\n` in JSON scanned as text, then indentation.
fn line_break(b: &[u8], at: usize) -> Option<usize> {
    let rest = b.get(at..)?;
    let n = [&b"\r\n"[..], b"\n", b"\\r\\n", b"\\n"]
        .iter()
        .find(|br| rest.starts_with(br))?
        .len();
    let indent = rest[n..]
        .iter()
        .take_while(|&&c| c == b' ' || c == b'\t')
        .count();
    Some(at + n + indent)
}

fn decode_run(b: &[u8], run: &Run, budget: &mut Budget, out: &mut Vec<Decoded>) {
    let joined: Cow<[u8]> = match run.lines.as_slice() {
        [(s, e)] => Cow::Borrowed(&b[*s..*e]),
        lines => Cow::Owned(lines.iter().flat_map(|&(s, e)| &b[s..e]).copied().collect()),
    };
    let mut texts = Vec::new();
    for (s, e) in long_runs(&joined, MIN_HEX, |c| c.is_ascii_hexdigit()) {
        texts.extend(hex_decode(&joined[s..e], budget).and_then(readable));
    }
    // Base64 of anything is never all hex digits.
    if !joined.iter().all(u8::is_ascii_hexdigit) {
        for (piece, padding, url_safe) in base64_pieces(&joined) {
            texts.extend(base64_decode(piece, padding, url_safe, budget).and_then(readable));
        }
    }
    out.extend(texts.into_iter().map(|(text, prose)| Decoded {
        text,
        start: run.start,
        end: run.end,
        prose,
        map: None,
    }));
}

/// The stretches of `run` that can be one base64 encoding each, with the
/// padding after each and their alphabet. Padding ends a stretch; the two
/// characters of the alphabet less used in a stretch split it (`-` and `_`
/// in a path of standard base64, `/` in a URL-safe token's path).
fn base64_pieces(run: &[u8]) -> Vec<(&[u8], usize, bool)> {
    let mut pieces = Vec::new();
    let mut rest = run;
    while !rest.is_empty() {
        let n = memchr::memchr(b'=', rest).unwrap_or(rest.len());
        let padding = rest[n..].iter().take_while(|&&c| c == b'=').count();
        let seg = &rest[..n];
        rest = &rest[n + padding..];
        let count = |x: u8, y: u8| memchr::memchr2_iter(x, y, seg).count();
        let url_safe = count(b'-', b'_') > count(b'+', b'/');
        let (x, y) = if url_safe { (b'+', b'/') } else { (b'-', b'_') };
        let mut from = 0;
        for cut in memchr::memchr2_iter(x, y, seg).chain([seg.len()]) {
            if cut - from >= MIN_BASE64 {
                // Padding belongs to the last part only.
                let pad = if cut == seg.len() { padding } else { 0 };
                pieces.push((&seg[from..cut], pad, url_safe));
            }
            from = cut + 1;
        }
    }
    pieces
}

fn engine(url_safe: bool) -> &'static Simd {
    // Padding is taken off before decoding; trailing bits a strict decoder
    // rejects still leave the bytes before them readable.
    fn config() -> GeneralPurposeConfig {
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true)
    }
    static STANDARD: LazyLock<Simd> = LazyLock::new(|| Simd::standard(config()));
    static URL_SAFE: LazyLock<Simd> = LazyLock::new(|| Simd::url_safe(config()));
    if url_safe { &URL_SAFE } else { &STANDARD }
}

fn base64_decode(
    piece: &[u8],
    padding: usize,
    url_safe: bool,
    budget: &mut Budget,
) -> Option<Vec<u8>> {
    let body = piece.get(alignment(piece, padding)..)?;
    // A last group of one character holds no whole byte.
    let body = &body[..body.len() - usize::from(body.len() % 4 == 1)];
    if !budget.take(body.len() / 4 * 3 + 2) {
        return None;
    }
    engine(url_safe).decode(body).ok()
}

/// Where the base64 in `piece` starts: 0, unless characters glued before
/// it (`keyQUtJ…`) shift it. With padding after the piece, the shift
/// follows from the length. Without, it is where ASCII text's groups of four
/// start: a group's first character holds a byte's top six bits, which for
/// ASCII are below 32 (`A`..`Z`, `a`..`f`), while at the other three offsets
/// about half the characters are. So offset 0 stands unless under 60% of
/// its group starts are low and another offset has 90%: text glued to
/// junk. Binary decodings, UTF-8 heavy text and clean runs keep offset 0.
/// One pass over at most [`ALIGN_SAMPLE`] characters.
fn alignment(piece: &[u8], padding: usize) -> usize {
    if padding > 0 {
        return (piece.len() + padding) % 4;
    }
    let sample = &piece[..piece.len().min(ALIGN_SAMPLE)];
    let mut low = [0usize; 4];
    for (i, &c) in sample.iter().enumerate() {
        low[i % 4] += usize::from(c.is_ascii_uppercase() || (b'a'..=b'f').contains(&c));
    }
    let share = |k: usize| {
        let groups = sample.len().saturating_sub(k).div_ceil(4).max(1);
        low[k] * 100 / groups
    };
    if share(0) >= 60 {
        return 0;
    }
    (1..4).find(|&k| share(k) >= 90).unwrap_or(0)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex_pair(b: &[u8], at: usize) -> Option<u8> {
    Some(hex_value(*b.get(at)?)? << 4 | hex_value(*b.get(at + 1)?)?)
}

/// An odd run has one digit too many at one end: glued before it when its
/// pairs from offset 1 look like ASCII (first digits `0`..`7`), else after.
fn hex_decode(run: &[u8], budget: &mut Budget) -> Option<Vec<u8>> {
    let ascii = |k: usize| {
        let pairs = run.len().saturating_sub(k) / 2;
        let low = (k..run.len())
            .step_by(2)
            .take(pairs)
            .filter(|&i| run[i] <= b'7')
            .count();
        low * 10 >= pairs * 9
    };
    let k = usize::from(run.len() % 2 == 1 && !ascii(0) && ascii(1));
    let pairs = (run.len() - k) / 2;
    if !budget.take(pairs) {
        return None;
    }
    (0..pairs).map(|p| hex_pair(run, k + 2 * p)).collect()
}

/// The percent-decoding of `start..end`, with the map back; escapes of
/// non-ASCII bytes stay escaped when the whole would not be UTF-8.
fn percent_decode(b: &[u8], start: usize, end: usize, budget: &mut Budget) -> Option<Decoded> {
    let raw = b.get(start..end)?;
    if raw.len() < MIN_BUILTIN_LEN || !budget.take(raw.len()) {
        return None;
    }
    let unescape = |ascii_only: bool| {
        let mut out = Vec::with_capacity(raw.len());
        let mut map = OffsetMap::default();
        map.push(0, start);
        let mut i = 0;
        while let Some(&c) = raw.get(i) {
            match hex_pair(raw, i + 1).filter(|&v| c == b'%' && (!ascii_only || v < 0x80)) {
                Some(v) => {
                    map.push(out.len(), start + i);
                    out.push(v);
                    i += 3;
                    map.push(out.len(), start + i);
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        (out, map)
    };
    let (bytes, map) = unescape(false);
    let (text, map) = match String::from_utf8(bytes) {
        Ok(text) => (text, map),
        Err(_) => {
            let (bytes, map) = unescape(true);
            (String::from_utf8(bytes).ok()?, map)
        }
    };
    Some(Decoded {
        text,
        start,
        end,
        prose: false,
        map: Some(map),
    })
}

fn is_printable(c: u8) -> bool {
    (0x20..0x7f).contains(&c) || matches!(c, b'\t' | b'\n' | b'\r')
}

/// What of a decoding is worth scanning: all of it when it is text, else
/// its printable runs, each ending with a blank line so that no run joins
/// the next. And whether it is prose.
fn readable(bytes: Vec<u8>) -> Option<(String, bool)> {
    if bytes.len() < MIN_BUILTIN_LEN {
        return None;
    }
    let control = |c: u8| c < 0x80 && !is_printable(c);
    let bytes = match String::from_utf8(bytes) {
        Ok(text) if !text.bytes().any(control) => {
            let spaces = text.bytes().filter(u8::is_ascii_whitespace).count();
            let prose = spaces * PROSE_WORD >= text.len();
            return Some((text, prose));
        }
        Ok(text) => text.into_bytes(),
        Err(e) => e.into_bytes(),
    };
    let mut out = String::new();
    for (s, e) in long_runs(&bytes, MIN_STRING, is_printable) {
        out.extend(bytes[s..e].iter().map(|&c| char::from(c)));
        out.push_str("\n\n");
    }
    (!out.is_empty()).then_some((out, false))
}
