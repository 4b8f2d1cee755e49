//! Checksum-validated numbers: payment cards (Luhn + issuer ranges) and IBANs
//! (ISO 13616 mod-97 + per-country length). The checksums are what make
//! redacting these safe: a random 16-digit number passes Luhn one time in ten
//! and an issuer range far less often.

use super::validate::Span;

/// Shortest and longest card number (ISO/IEC 7812 PANs).
const CARD_MIN: usize = 13;
const CARD_MAX: usize = 19;

pub(super) fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let v = u32::from(d) * if i % 2 == 1 { 2 } else { 1 };
            if v > 9 { v - 9 } else { v }
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Issuer ranges and the lengths each network issues, so that a Luhn-valid
/// but impossible number (a 14-digit Visa) is not a card.
fn issuer_ok(d: &[u8]) -> bool {
    let prefix = |k: usize| d.iter().take(k).fold(0u32, |v, &x| v * 10 + u32::from(x));
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    let n = d.len();
    if p1 == 4 {
        matches!(n, 13 | 16 | 19)
    } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        n == 16
    } else if p2 == 34 || p2 == 37 {
        n == 15
    } else if p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || p2 == 35 {
        (16..=19).contains(&n)
    } else if p2 == 36 || p2 == 38 || (300..=305).contains(&p3) {
        (14..=19).contains(&n)
    } else {
        false
    }
}

/// The regex hands over a maximal run of digits with single spaces or dashes
/// (`[0-9](?:[ -]?[0-9]){12,}`), which may hold a card next to other numbers
/// (`4111 1111 1111 1111 2027`). Each card is a contiguous range of the run's
/// groups: either one unbroken group of 13–19 digits, or 3–6-digit groups
/// joined by one kind of separator (4-4-4-4, Amex 4-6-5, Diners 4-6-4). The
/// first group of each card must be leftmost; among ranges starting there the
/// longest valid one wins.
pub(super) fn credit_card(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    let edge = |i: Option<usize>| {
        i.and_then(|i| t.get(i))
            .is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if edge(start.checked_sub(1)) || edge(Some(end)) {
        return;
    }
    // (start, end, separator after the group)
    let mut groups: Vec<(usize, usize, u8)> = Vec::new();
    let mut i = start;
    while i < end {
        let len = t[i..end].iter().take_while(|c| c.is_ascii_digit()).count();
        let sep = if i + len < end { t[i + len] } else { 0 };
        groups.push((i, i + len, sep));
        i += len + usize::from(sep != 0);
    }
    let mut first = 0;
    while first < groups.len() {
        let mut digits = [0u8; CARD_MAX];
        let mut n = 0;
        let mut best = None;
        for last in first..groups.len() {
            let (gs, ge, _) = groups[last];
            if n + (ge - gs) > CARD_MAX {
                break;
            }
            if last > first && groups[last - 1].2 != groups[first].2 {
                break;
            }
            for (slot, c) in digits[n..].iter_mut().zip(&t[gs..ge]) {
                *slot = c - b'0';
            }
            n += ge - gs;
            let shape = last == first
                || groups[first..=last]
                    .iter()
                    .all(|g| (3..=6).contains(&(g.1 - g.0)));
            if n >= CARD_MIN && shape && luhn(&digits[..n]) && issuer_ok(&digits[..n]) {
                best = Some(last);
            }
        }
        match best {
            Some(last) => {
                out.push((groups[first].0, groups[last].1));
                first = last + 1;
            }
            None => first += 1,
        }
    }
}

/// IBAN lengths per country (SWIFT IBAN registry). Only listed countries are
/// accepted: a mod-97 check alone passes 1 in 97 random product codes.
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// ISO 13616: move the first four characters to the end, read letters as
/// 10..35, and the whole number mod 97 must be 1.
fn iban_mod97(compact: &[u8]) -> u32 {
    let (head, tail) = compact.split_at(4.min(compact.len()));
    tail.iter().chain(head).fold(0u32, |r, &c| match c {
        b'0'..=b'9' => (r * 10 + u32::from(c - b'0')) % 97,
        b'A'..=b'Z' => (r * 100 + u32::from(c - b'A') + 10) % 97,
        _ => 97,
    })
}

/// The regex is greedy and may run into a following all-caps word
/// (`GB82WEST12345698765432 THANKS` takes ` THAN`), so the IBAN is cut to its
/// country's length, and the cut must then fall on a token boundary.
pub(super) fn iban(t: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    if start
        .checked_sub(1)
        .and_then(|i| t.get(i))
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return;
    }
    let Some(&(_, len)) = IBAN_LENGTHS
        .iter()
        .find(|(cc, _)| t.get(start..start + 2) == Some(&cc[..]))
    else {
        return;
    };
    let mut compact = [0u8; 34];
    let mut n = 0;
    let mut i = start;
    while i < end && n < len {
        if t[i] != b' ' {
            compact[n] = t[i];
            n += 1;
        }
        i += 1;
    }
    if n == len
        && !t.get(i).is_some_and(|c| c.is_ascii_alphanumeric())
        && iban_mod97(&compact[..n]) == 1
    {
        out.push((start, i));
    }
}
