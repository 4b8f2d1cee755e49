//! Detector tests for the PII classes, overlap resolution, custom classes and
//! the bench text.

use super::{
    Category, Classifier, ClassifyError, numbers,
    tests::{builtin, finds, finds_itself, found, misses},
};

#[test]
fn email() {
    finds_itself("jane.doe@example.com", "email");
    finds_itself("a.b+tag@sub.example.co.uk", "email");
    finds("see...bob@example.io.", "email", "bob@example.io");
    finds(".hidden.dot@example.io", "email", "hidden.dot@example.io");
    finds(
        "<mailto:JANE_DOE@Example.COM>",
        "email",
        "JANE_DOE@Example.COM",
    );
    for text in [
        "logo@2x.png",
        "user@localhost",
        "@handle",
        "foo@bar",
        "x@y.c",
        "a.@example.com",
    ] {
        misses(text, "email");
    }
}

#[test]
fn us_ssn() {
    finds_itself("123-45-6789", "us-ssn");
    finds_itself("078-05-1120", "us-ssn");
    for text in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-12-3456",
        "123-00-4567",
        "123-45-0000",
        "123456789",
        "1123-45-6789",
        "123-45-67890",
        "x123-45-6789",
        "1-123-45-6789",
    ] {
        misses(text, "us-ssn");
    }
}

#[test]
fn credit_card() {
    for card in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555555555554444",
        "2223003122003222",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "3530111333300000",
        "30569309025904",
        "4222222222222",
    ] {
        finds_itself(card, "credit-card");
    }
    finds(
        "paid with 4111 1111 1111 1111 2027 ok",
        "credit-card",
        "4111 1111 1111 1111",
    );
    for text in [
        "4111111111111112",
        "4111 1111 1111 1112",
        "0000 0000 0000 0000",
        "1234567890123456",
        "94111111111111111",
        "4111 1111-1111 1111",
        "4111  1111 1111 1111",
        "a4111111111111111",
        "4111111111111111111111",
        "41111111111111",
    ] {
        misses(text, "credit-card");
    }
    assert!(numbers::luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
    assert!(!numbers::luhn(&[]));
}

#[test]
fn iban() {
    for iban in [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "NO9386011117947",
        "BE68539007547034",
        "CH9300762011623852957",
        "IT60X0542811101000000123456",
        "MT84MALT011000012345MTLCAST001S",
    ] {
        finds_itself(iban, "iban");
    }
    finds(
        "to GB82WEST12345698765432 THANKS",
        "iban",
        "GB82WEST12345698765432",
    );
    for text in [
        "DE88370400440532013000",
        "DE8937040044053201300",
        "DE893704004405320130001",
        "ZZ89370400440532013000",
        "de89370400440532013000",
        "XDE89370400440532013000",
    ] {
        misses(text, "iban");
    }
}

#[test]
fn phone() {
    for phone in [
        "+1 (415) 555-0132",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "+44 20 7946 0958",
        "+14155552671",
        "1-800-555-0199",
        "020 7946 0958",
        "01 23 45 67 89",
    ] {
        finds_itself(phone, "phone");
    }
    for text in [
        "2024-01-15",
        "on 2024-01-15 2024",
        "15.01.2024 10",
        "5551234567",
        "1234567890123",
        "192.168.100.200",
        "555-1234",
        "+1234567",
        "v1.2.3.4",
        "id 12345-123-4567",
        "call 555-123-4567-89",
    ] {
        misses(text, "phone");
    }
}

#[test]
fn overlaps_keep_the_longer_then_the_earlier_class() {
    let custom = |name: &str, re: &str| (name.to_owned(), re.to_owned());
    let c = Classifier::new(&[
        custom("mailto-link", r"mailto:[^ ]+"),
        custom("contact", r"jane@example\.com"),
    ])
    .expect("valid custom classes");
    // Longer custom match swallows the email inside it.
    assert_eq!(
        found(&c, "x mailto:bob@example.com y"),
        [("mailto-link".into(), "mailto:bob@example.com".into())]
    );
    // Same span: the built-in `email` comes first in class order.
    assert_eq!(
        found(&c, "x jane@example.com y"),
        [("email".into(), "jane@example.com".into())]
    );
    // high-entropy never wins, even when its run is longer.
    let tok = "ghp_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpY";
    assert_eq!(
        found(builtin(), &format!("{tok}== x")),
        [("github-token".into(), tok.into())]
    );
    // Findings come sorted and non-overlapping.
    let text = "a@b.io 123-45-6789 AKIAIOSFODNN7EXAMPLE c@d.io";
    let f = builtin().scan(text);
    assert_eq!(f.len(), 4);
    assert!(f.windows(2).all(|w| w[0].end <= w[1].start));
}

#[test]
fn custom_classes() {
    let pair = |n: &str, r: &str| vec![(n.to_owned(), r.to_owned())];
    let c = Classifier::new(&pair("acme-id", r"ACME-[0-9]{6}")).expect("valid");
    let i = c.class_index("acme-id").expect("registered");
    assert_eq!(c.classes()[i].category, Category::Custom);
    assert_eq!(
        found(&c, "ticket ACME-123456 done"),
        [("acme-id".into(), "ACME-123456".into())]
    );
    // Custom patterns may span lines.
    let c =
        Classifier::new(&pair("secret-block", r"(?s)BEGIN SECRET.*?END SECRET")).expect("valid");
    let text = format!("x BEGIN SECRET\n{}\nEND SECRET y", "line\n".repeat(2000));
    assert_eq!(c.scan(&text).len(), 1);
    // A pattern that matches the empty string yields no empty findings.
    let c = Classifier::new(&pair("maybe", "x*")).expect("valid");
    assert_eq!(found(&c, "abc xx d"), [("maybe".into(), "xx".into())]);

    for bad in [
        "",
        "Bad",
        "a_b",
        "-a",
        "a-",
        "a--b",
        "email",
        "phone",
        "é",
        &"a".repeat(65),
    ] {
        assert!(
            matches!(
                Classifier::new(&pair(bad, "x")),
                Err(ClassifyError::BadName(_))
            ),
            "{bad:?}"
        );
    }
    let dup = vec![
        ("dup".to_owned(), "x".to_owned()),
        ("dup".to_owned(), "y".to_owned()),
    ];
    assert!(matches!(
        Classifier::new(&dup),
        Err(ClassifyError::BadName(_))
    ));
    match Classifier::new(&pair("broken", "(")) {
        Err(e @ ClassifyError::BadPattern { .. }) => {
            assert!(e.to_string().starts_with("custom pattern `broken`: "))
        }
        other => panic!("expected BadPattern, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn findings_in_bench_text() {
    let text = super::bench_text(32 * 1024);
    assert!(text.len() <= 32 * 1024 && text.len() > 32 * 1024 - 4);
    assert_eq!(text, super::bench_text(32 * 1024));
    let got = found(builtin(), &text);
    for class in [
        "email",
        "phone",
        "credit-card",
        "aws-access-key",
        "iban",
        "github-token",
        "us-ssn",
        "jwt",
    ] {
        assert_eq!(
            got.iter().filter(|(c, _)| c == class).count(),
            2,
            "{class}: {got:?}"
        );
    }
    assert_eq!(got.len(), 16, "{got:?}");
}

/// The windowed scan against the obvious one: every class's regex over the
/// whole text. Any difference is a bug in the first pass or the windows.
pub(super) fn reference(c: &Classifier, text: &str) -> Vec<super::Finding> {
    let mut cands = Vec::new();
    let mut spans = Vec::new();
    for (class, b) in super::detectors::BUILTINS.iter().enumerate() {
        for m in c.finders[class].find_iter(text) {
            spans.clear();
            (b.check)(text.as_bytes(), m.start(), m.end(), &mut spans);
            cands.extend(
                spans
                    .iter()
                    .map(|&(start, end)| super::Candidate { class, start, end }),
            );
        }
    }
    super::resolve(cands, |_| true)
}

/// Pieces of random texts: findings, their near misses, delimiters.
pub(super) const PIECES: &[&str] = &[
    "jane.doe@example.com",
    "(555) 123-4567",
    "+44 20 7946 0958",
    "555-123-4567",
    "123-45-6789",
    "4111 1111 1111 1111",
    "4111111111111111",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpY",
    "u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj",
    "sk-ant-api03-qFYY_kv5ZJr3J1TWDtkwtDDb-xHKas1VOqg6YYZYn9Zhy",
    "glpat-Ab3dEfGh1jKlMn0pQrSt",
    "xoxb-123456789012-1234567890123-AbCdEf",
    "sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj",
    "AIzaCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz9",
    "key",
    "task",
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0.",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "aws_secret_access_key = ",
    "Stqcbnr3yBdGBLEPH1qhT61qtc4xatws8phP9nhF",
    "MIIEowIBAAKCAQEAu8jzPde0IgxLd6Gnc",
    "\n",
    "\n",
    ";",
    "!",
    // Windows also end after the `.` of `. `.
    ". ",
    ".  ",
    " ",
    " ",
    " ",
    "-",
    ".",
    "@",
    "+",
    "(",
    ")",
    "=",
    "/",
    "_",
    "1",
    "12",
    "2024-01-15",
    "0",
    "A",
    "x",
    "é",
    "😀",
    "the",
    "and",
    "Zz9",
    "\t",
    "\"",
    "AB12",
];

/// `rounds` random texts of up to 40 [`PIECES`] (`CLASSIFY_FUZZ_ROUNDS`
/// overrides), the same on every run.
pub(super) fn random_texts(seed: u64, rounds: usize) -> Vec<String> {
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let rounds = std::env::var("CLASSIFY_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rounds);
    (0..rounds)
        .map(|_| {
            let n = next() % 40;
            (0..n)
                .map(|_| PIECES[(next() >> 7) as usize % PIECES.len()])
                .collect()
        })
        .collect()
}

#[test]
fn windowed_scan_matches_whole_text_reference() {
    let c = builtin();
    let mut texts = random_texts(0x1234_5678_9ABC_DEF1, 4000);
    texts.push(super::bench_text(64 * 1024));
    texts.push("(555) 123-4567\n".repeat(50));
    texts.push("a@b.io;123-45-6789!4111 1111 1111 1111\n".repeat(20));
    for text in &texts {
        // The plain scan alone is what the windows must not change.
        let mut plain = Vec::new();
        c.plain(text, &mut Default::default(), &mut plain);
        let expected = reference(c, text);
        assert_eq!(super::resolve(plain, |_| true), expected, "{text:?}");
        // None of these texts disguises anything (their runs decode to
        // binary), so the full scan must add nothing to it either.
        assert_eq!(c.scan(text), expected, "disguise layers added to {text:?}");
    }
}
