//! Checks that a regex match must pass before it becomes a finding.
//!
//! The regexes only describe shapes; these checks carry the semantics that a
//! regex cannot (checksums, number ranges, what sits next to the match) and
//! are what keep the false-positive rate low enough to redact on.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// A validated `(start, end)` byte span in the scanned text.
pub(super) type Span = (usize, usize);

fn byte_at(t: &[u8], i: Option<usize>) -> Option<u8> {
    i.and_then(|i| t.get(i).copied())
}

/// Whether the neighbour of a number glues it to a longer token. A digit
/// string next to a letter or `_` is an identifier; next to `-`, `.`, `/`,
/// `+` or `,` that is itself next to a digit it is a version, a date, an
/// amount or a longer ID. Either way it is not a phone number or an SSN.
fn glued(near: Option<u8>, beyond: Option<u8>) -> bool {
    match near {
        Some(c) if c.is_ascii_alphanumeric() || c == b'_' => true,
        Some(b'-' | b'.' | b'/' | b'+' | b',') => beyond.is_some_and(|d| d.is_ascii_digit()),
        _ => false,
    }
}

pub(super) fn numeric_edges_ok(t: &[u8], start: usize, end: usize) -> bool {
    let before = glued(
        byte_at(t, start.checked_sub(1)),
        byte_at(t, start.checked_sub(2)),
    );
    let after = glued(t.get(end).copied(), byte_at(t, end.checked_add(1)));
    !before && !after
}

pub(super) fn accept(_: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    out.push((start, end));
}

/// Longest run of token bytes a prefix-led key may be glued into. A real
/// key glued to a word (`keyAKIA…`, `token=xghp_…`) has a short run on each
/// side; inside a base64 image or a hash, `AIza` or `AKIA` turns up by
/// chance (`AIza` about once per 16 MB of random base64), with thousands of
/// token bytes around it.
pub(super) const MAX_GLUE: usize = 64;

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn is_token(c: u8) -> bool {
    is_word(c) || b"+/=-".contains(&c)
}

/// How a prefix-led match at `start..end` sits among its neighbours:
/// `None` when a word byte touches it and the token run on that side is
/// longer than [`MAX_GLUE`] (a blob, not a key); otherwise whether a word
/// byte touches it on either side. A neighbour like `-`, `/` or `=` is a
/// word boundary, as the patterns had before they let keys be glued.
pub(super) fn glue(t: &[u8], start: usize, end: usize) -> Option<bool> {
    let before = t.get(..start).unwrap_or_default();
    let after = t.get(end..).unwrap_or_default();
    let mut glued = false;
    for (touching, run) in [
        (
            before.last().is_some_and(|&c| is_word(c)),
            before
                .iter()
                .rev()
                .take(MAX_GLUE + 1)
                .take_while(|&&c| is_token(c))
                .count(),
        ),
        (
            after.first().is_some_and(|&c| is_word(c)),
            after
                .iter()
                .take(MAX_GLUE + 1)
                .take_while(|&&c| is_token(c))
                .count(),
        ),
    ] {
        if touching && run > MAX_GLUE {
            return None;
        }
        glued |= touching;
    }
    Some(glued)
}

/// Keys whose prefix is distinctive enough on its own (`ghp_`, `glpat-`,
/// `sk-ant-`): any glue but a blob's.
pub(super) fn prefixed(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    if glue(t, start, end).is_some() {
        out.push((start, end));
    }
}

/// `ASIA` and `AKIA` also occur in upper-case words (`ASIAPACIFICSOUTHEAST`),
/// so a glued key id must hold a digit, as all but about 4% of random ones
/// do. A key id on its own needs nothing more.
pub(super) fn aws_key(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    let digit = || {
        t.get(start + 4..end)
            .is_some_and(|body| body.iter().any(u8::is_ascii_digit))
    };
    match glue(t, start, end) {
        Some(false) => out.push((start, end)),
        Some(true) if digit() => out.push((start, end)),
        _ => {}
    }
}

/// AWS secret keys are exactly 40 characters of base64 with no padding; the
/// regex ends on the 40th, so a following token character means a longer
/// string. Real keys mix cases and digits; placeholders like
/// `your_secret_access_key_goes_here` do not.
pub(super) fn aws_secret(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    let Some(tok_start) = end.checked_sub(40).filter(|&s| s >= start) else {
        return;
    };
    if t.get(end)
        .is_some_and(|&c| c.is_ascii_alphanumeric() || b"/+=".contains(&c))
    {
        return;
    }
    let tok = &t[tok_start..end];
    let upper = tok.iter().any(u8::is_ascii_uppercase);
    let lower = tok.iter().any(u8::is_ascii_lowercase);
    let other = tok
        .iter()
        .any(|c| c.is_ascii_digit() || *c == b'/' || *c == b'+');
    if upper && lower && other {
        out.push((tok_start, end));
    }
}

/// Slack tokens carry numeric team and user IDs; a digit-free tail is a word.
pub(super) fn slack(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    if glue(t, start, end).is_some() && t[start..end].iter().skip(5).any(u8::is_ascii_digit) {
        out.push((start, end));
    }
}

/// `sk-` is also the start of kebab-case words; real OpenAI keys are random
/// and always contain digits and letters. `sk-ant-` belongs to Anthropic.
///
/// With no word boundary in the pattern, a match can begin inside a word
/// (`task-sk-proj-…` matches from the first `sk-`), so every `sk-` in the
/// match is tried: the first that stands on its own, else the first glued
/// one that passes.
pub(super) fn openai(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    let Some(m) = t.get(start..end) else { return };
    let valid = m
        .windows(3)
        .enumerate()
        .filter(|(_, w)| *w == b"sk-")
        .map(|(p, _)| start + p)
        .filter_map(|at| openai_at(t, at, end).map(|glued| (glued, at)));
    if let Some((_, at)) = valid.min() {
        out.push((at, end));
    }
}

/// `Some(glued)` when the `sk-` at `start` begins a key.
fn openai_at(t: &[u8], start: usize, end: usize) -> Option<bool> {
    let tok = &t[start..end];
    if tok.starts_with(b"sk-ant-") {
        return None;
    }
    let mut body = &tok[3..];
    for scope in [&b"proj-"[..], b"svcacct-", b"admin-"] {
        if let Some(rest) = body.strip_prefix(scope) {
            body = rest;
            break;
        }
    }
    let digit = body.iter().any(u8::is_ascii_digit);
    let letter = body.iter().any(u8::is_ascii_alphabetic);
    let glued = glue(t, start, end)?;
    let valid = if glued {
        // Glued to a word (`risk-2024-…`, `task-queue-…`, `keysk-…`): only
        // what looks random, as keys do and slugs, dates and ids do not.
        body.len() >= 32
            && digit
            && body.iter().any(u8::is_ascii_uppercase)
            && body.iter().any(u8::is_ascii_lowercase)
            && word_fraction(body) * 2 < body.len()
    } else {
        body.len() >= 20 && digit && letter
    };
    valid.then_some(glued)
}

/// Google keys have a fixed length: a longer token holds one in its first
/// 39 characters, as a reader sees it.
pub(super) fn google(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    prefixed(t, start, end, out);
}

/// A glued `eyJ` (`honeyJar.config.something`, `keyJson.read.value`) counts
/// only when its header decodes to a JSON object, as a token's does.
pub(super) fn jwt(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    if end - start < 30 {
        return;
    }
    let header_ok = || {
        let header = t[start..end]
            .split(|&c| c == b'.')
            .next()
            .unwrap_or_default();
        URL_SAFE_NO_PAD
            .decode(header)
            .is_ok_and(|h| h.ends_with(b"}") && h.iter().all(|c| (0x20..0x7f).contains(c)))
    };
    match glue(t, start, end) {
        Some(false) => out.push((start, end)),
        Some(true) if header_ok() => out.push((start, end)),
        _ => {}
    }
}

/// Minimum and maximum length, and minimum Shannon entropy in bits per
/// character, of a `high-entropy` token. 32 characters is the shortest common
/// API secret; 4.0 bits is above any hex string (at most 4.0 by construction,
/// ~3.9 in practice) and below random base64 of that length (~4.6). Tokens
/// over 512 characters are data (base64 images, file uploads), not secrets.
pub(super) const ENTROPY_MIN_LEN: usize = 32;
pub(super) const ENTROPY_MAX_LEN: usize = 512;
pub(super) const ENTROPY_MIN_BITS: f64 = 4.0;

pub(super) fn high_entropy(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    let tok = &t[start..end];
    if !(ENTROPY_MIN_LEN..=ENTROPY_MAX_LEN).contains(&tok.len()) {
        return;
    }
    if !tok.iter().any(u8::is_ascii_alphabetic) || !tok.iter().any(u8::is_ascii_digit) {
        return;
    }
    // UUIDs, commit hashes and digests are identifiers. Hex alone would stay
    // under the entropy bar, but a UUID's dashes add a symbol that can push
    // it over, so hex-with-dashes is excluded outright.
    if tok.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-') {
        return;
    }
    // Subresource-integrity hashes (`integrity="sha384-…"`) are public.
    if [&b"sha1-"[..], b"sha256-", b"sha384-", b"sha512-"]
        .iter()
        .any(|p| tok.starts_with(p))
    {
        return;
    }
    if entropy(tok) < ENTROPY_MIN_BITS || word_fraction(tok) * 2 >= tok.len() {
        return;
    }
    out.push((start, end));
}

pub(super) fn entropy(tok: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &c in tok {
        counts[usize::from(c)] += 1;
    }
    let n = tok.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// How many bytes of `tok` sit in word-like runs (`Profile`, `settings`,
/// `PAYLOAD`). Paths, slugs and camelCase identifiers are mostly words and
/// can reach 4+ bits of entropy; random secrets rarely hold pronounceable
/// runs. A run counts when it has 3+ letters, a quarter of them vowels and no
/// four consonants in a row.
pub(super) fn word_fraction(tok: &[u8]) -> usize {
    let mut covered = 0;
    let mut i = 0;
    while i < tok.len() {
        let run = if tok[i].is_ascii_uppercase() {
            let lower = tok[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_lowercase())
                .count();
            if lower >= 2 {
                1 + lower
            } else {
                let upper = tok[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_uppercase())
                    .count();
                if upper >= 3 { upper } else { 0 }
            }
        } else if tok[i].is_ascii_lowercase() {
            tok[i..]
                .iter()
                .take_while(|c| c.is_ascii_lowercase())
                .count()
        } else {
            0
        };
        if run == 0 {
            i += 1;
            continue;
        }
        if is_wordlike(&tok[i..i + run]) {
            covered += run;
        }
        i += run;
    }
    covered
}

fn is_wordlike(w: &[u8]) -> bool {
    let vowel = |c: &u8| b"aeiouyAEIOUY".contains(c);
    let vowels = w.iter().filter(|c| vowel(c)).count();
    let mut streak = 0;
    let mut max_streak = 0;
    for c in w {
        streak = if vowel(c) { 0 } else { streak + 1 };
        max_streak = max_streak.max(streak);
    }
    w.len() >= 3 && vowels * 4 >= w.len() && max_streak < 4
}

pub(super) fn email(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    let Some(at) = t[start..end]
        .iter()
        .position(|&c| c == b'@')
        .map(|p| start + p)
    else {
        return;
    };
    // The local-part class allows dots, so prose like `see...bob@x.io` hands
    // over `see...bob`; an address cannot hold `..`, so it starts after the
    // last one (and after any leading dot).
    let local_start = t[start..at]
        .windows(2)
        .rposition(|w| w == b"..")
        .map_or(start, |p| start + p + 2);
    let local_start = local_start
        + t[local_start..at]
            .iter()
            .take_while(|&&c| c == b'.')
            .count();
    let local = &t[local_start..at];
    if local.is_empty() || local.ends_with(b".") {
        return;
    }
    // The pattern caps the local part at 64 bytes (RFC 5321); a longer run
    // before the `@` is not an address.
    if start
        .checked_sub(1)
        .and_then(|i| t.get(i))
        .is_some_and(|&c| c.is_ascii_alphanumeric() || b"._%+-_".contains(&c))
    {
        return;
    }
    if t.get(end)
        .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
    {
        return;
    }
    // `logo@2x.png`: retina asset names look like addresses.
    let label = t[at + 1..end]
        .split(|&c| c == b'.')
        .next()
        .unwrap_or_default();
    if label.len() >= 2
        && label.ends_with(b"x")
        && label[..label.len() - 1].iter().all(u8::is_ascii_digit)
    {
        return;
    }
    out.push((local_start, end));
}

/// Digit groups of a number-like match with the single separator byte that
/// follows each group (0 after the last, or when more than one byte sits
/// between groups).
fn digit_groups(raw: &[u8]) -> Vec<(u32, usize, u8)> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if !raw[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let len = raw[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        let value = raw[i..i + len]
            .iter()
            .take(9)
            .fold(0u32, |v, c| v * 10 + u32::from(c - b'0'));
        i += len;
        let sep = match (raw.get(i), raw.get(i + 1)) {
            (Some(&s), Some(d)) if d.is_ascii_digit() => s,
            _ => 0,
        };
        groups.push((value, len, sep));
    }
    groups
}

fn looks_like_date_or_ip(raw: &[u8]) -> bool {
    let g = digit_groups(raw);
    let date = g.windows(3).any(|w| {
        let (a, b, c) = (w[0], w[1], w[2]);
        let same_sep = a.2 == b.2 && b"-./".contains(&a.2);
        let ymd =
            a.1 == 4 && b.1 <= 2 && c.1 <= 2 && (1..=12).contains(&b.0) && (1..=31).contains(&c.0);
        let dmy = a.1 <= 2 && b.1 <= 2 && c.1 == 4 && a.0 <= 31 && b.0 <= 31 && a.0.min(b.0) <= 12;
        same_sep && (ymd || dmy)
    });
    let ip = g.len() == 4
        && g.iter().take(3).all(|x| x.2 == b'.')
        && g.iter().all(|x| x.1 <= 3 && x.0 <= 255);
    date || ip
}

/// E.164 allows up to 15 digits; with a `+` the number is unambiguous from 8
/// digits, without one we want 9+ so that short figures and dates do not
/// qualify.
pub(super) fn phone(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    if !numeric_edges_ok(t, start, end) {
        return;
    }
    let raw = &t[start..end];
    let digits = raw.iter().filter(|c| c.is_ascii_digit()).count();
    let min = if raw.first() == Some(&b'+') { 8 } else { 9 };
    if (min..=15).contains(&digits) && !looks_like_date_or_ip(raw) {
        out.push((start, end));
    }
}

pub(super) fn us_ssn(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    if end - start != 11 || !numeric_edges_ok(t, start, end) {
        return;
    }
    let num = |a: usize, b: usize| {
        t[start + a..start + b]
            .iter()
            .fold(0u32, |v, c| v * 10 + u32::from(c.wrapping_sub(b'0')))
    };
    let (area, group, serial) = (num(0, 3), num(4, 6), num(7, 11));
    if area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 {
        out.push((start, end));
    }
}
