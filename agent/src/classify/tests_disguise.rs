//! Disguised findings: invisible characters, fullwidth letters, keys glued
//! to words, and base64, hex and percent-encoded runs; their redaction, and
//! the near misses that must stay clean.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD},
};

use super::{
    disguise::{self, Budget},
    tests::{builtin, finds, found, misses, rate},
    tests_pii::{random_texts, reference},
};

const KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const AWS: &str = "aws-access-key";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn b64(text: &str) -> String {
    STANDARD.encode(text)
}

/// `text` broken into lines of `width` joined by `sep`.
fn wrap(text: &str, width: usize, sep: &str) -> String {
    text.as_bytes()
        .chunks(width)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join(sep)
}

/// Deterministic bytes, for binary payloads.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = seed;
    (0..len)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng.to_le_bytes()[3]
        })
        .collect()
}

/// `disguised` in a sentence is one aws-access-key finding spanning all of
/// it, and in a JSON body it is redacted to `[REDACTED:aws-access-key]` in
/// valid JSON with nothing of it left.
#[track_caller]
fn found_whole(disguised: &str) {
    finds(&format!("the key: {disguised} thanks"), AWS, disguised);
    redacted(disguised, "[REDACTED:aws-access-key]");
}

/// `redact_json` of a chat body holding `disguised` turns it into
/// `replaced`, and leaves valid JSON.
#[track_caller]
fn redacted(disguised: &str, replaced: &str) {
    let content = format!("the key: {disguised} thanks");
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}],
    });
    let raw = serde_json::to_vec(&body).expect("serializable");
    let (out, counts) = builtin()
        .redact_json(&raw, |_| true)
        .unwrap_or_else(|| panic!("nothing redacted in {content:?}"));
    let v: serde_json::Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("redacting {content:?} broke the JSON: {e}"));
    assert_eq!(
        v["messages"][0]["content"].as_str(),
        Some(format!("the key: {replaced} thanks").as_str()),
        "redacting {content:?}"
    );
    let aws = builtin().class_index(AWS);
    assert!(
        counts.iter().any(|&(c, _)| Some(c) == aws),
        "{content:?}: {counts:?}"
    );
}

#[track_caller]
fn clean(text: &str) {
    let got = found(builtin(), text);
    assert!(got.is_empty(), "expected nothing in {text:?}, got {got:?}");
}

#[test]
fn invisible_characters_inside_a_key() {
    let invisible = [
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{200E}',
        '\u{200F}',
        '\u{2060}',
        '\u{2061}',
        '\u{2062}',
        '\u{2063}',
        '\u{2064}',
        '\u{FEFF}',
        '\u{AD}',
        '\u{34F}',
        '\u{180E}',
        '\u{61C}',
        '\u{202A}',
        '\u{202B}',
        '\u{202C}',
        '\u{202D}',
        '\u{202E}',
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}',
        '\u{FE00}',
        '\u{FE0F}',
        '\u{E0000}',
        '\u{E0041}',
        '\u{E007F}',
        '\u{3164}',
        '\u{115F}',
        '\u{1160}',
        '\u{FFA0}',
    ];
    for c in invisible {
        found_whole(&format!("AKIA{c}IOSFODNN7EXAMPLE"));
    }
    // Several, between every character.
    let every: String = KEY.chars().flat_map(|c| [c, '\u{200B}']).collect();
    let every = every.trim_end_matches('\u{200B}');
    found_whole(every);
    // Other classes too.
    finds(
        "mail jane\u{AD}.doe@exam\u{200C}ple.com now",
        "email",
        "jane\u{AD}.doe@exam\u{200C}ple.com",
    );
    let ghp = "ghp_IhKtJ0RlgLKOmx\u{2060}gJTeKdNnFRIBXuDL7DxtpY";
    finds(&format!("token {ghp} ok"), "github-token", ghp);
}

#[test]
fn fullwidth_letters_read_as_ascii() {
    let wide: String = KEY
        .chars()
        .map(|c| char::from_u32(u32::from(c) + 0xFEE0).unwrap_or(c))
        .collect();
    assert!(wide.starts_with("ＡＫＩＡ"));
    found_whole(&wide);
    // Half fullwidth, with a zero-width space.
    found_whole("ＡＫＩＡIOSFODNN7\u{200B}ＥＸＡＭＰＬＥ");
    finds(
        "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        "email",
        "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
    );
}

#[test]
fn invisible_characters_elsewhere_cost_nothing_and_find_nothing() {
    for text in [
        // Emoji: a joiner and a variation selector between non-ASCII.
        "family 👨\u{200D}👩\u{200D}👧 and ❤\u{FE0F} ok",
        "\u{FEFF}a byte-order mark first",
        "Japanese punctuation： （注）！ ok",
        "caf\u{E9} na\u{EF}ve \u{2014} \u{201C}quoted\u{201D}",
    ] {
        assert!(
            disguise::unhide(text).is_none(),
            "{text:?} needs no unhiding"
        );
        clean(text);
    }
    // A soft hyphen in a word is unhidden, and still only a word.
    assert!(disguise::unhide("Donau\u{AD}dampfschiff").is_some());
    clean("Donau\u{AD}dampfschiff");
}

#[test]
fn keys_glued_to_word_characters() {
    for (text, class, key) in [
        ("keyAKIAIOSFODNN7EXAMPLE", AWS, KEY),
        ("xAKIAIOSFODNN7EXAMPLE", AWS, KEY),
        ("AKIAIOSFODNN7EXAMPLEXYZ", AWS, KEY),
        ("idASIAL1VFZ3ZFKKIBJ3J4x", AWS, "ASIAL1VFZ3ZFKKIBJ3J4"),
        (
            "tokenghp_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpYmore",
            "github-token",
            "ghp_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpY",
        ),
        (
            "patglpat-Ab3dEfGh1jKlMn0pQrSt",
            "gitlab-token",
            "glpat-Ab3dEfGh1jKlMn0pQrSt",
        ),
        (
            "slackxoxb-123456789012-1234567890123-AbCdEf",
            "slack-token",
            "xoxb-123456789012-1234567890123-AbCdEf",
        ),
        (
            "keysk-ant-api03-qFYY_kv5ZJr3J1TWDtkwtDDb-xHKas1VOq",
            "anthropic-key",
            "sk-ant-api03-qFYY_kv5ZJr3J1TWDtkwtDDb-xHKas1VOq",
        ),
        (
            "gAIzaCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz9Q",
            "google-api-key",
            "AIzaCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz9",
        ),
        (
            "keysk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj",
            "openai-key",
            "sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj",
        ),
        (
            "task-sk-proj-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdo",
            "openai-key",
            "sk-proj-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdo",
        ),
        (
            "bearereyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
            "jwt",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
        ),
    ] {
        finds(&format!("see {text} now"), class, key);
    }
    redacted(
        "keyAKIAIOSFODNN7EXAMPLEXYZ",
        "key[REDACTED:aws-access-key]XYZ",
    );
}

#[test]
fn glued_near_misses() {
    // Upper-case words and kebab-case slugs that hold a prefix.
    misses("the ASIAPACIFICSOUTHEASTERN region", AWS);
    misses("MALAKIAIOSFODNNEXAMPLES", AWS);
    for text in [
        "task-queue-worker-2024-01-15-retry-backoff",
        "risk-assessment-2024-q3-final-review-v2",
        "disk-3f2a9c0e1b7d4a5f8e6c2b1a0d9e8f7c",
        "task-Build-2024-Frontend-Refactor-Plan-Notes",
        "task-management-dashboard-component-2024",
    ] {
        misses(text, "openai-key");
    }
    // `eyJ` inside identifiers: dotted, long, but no JSON header.
    misses("keyJsonMapper.readValueAsTree.somethingElse", "jwt");
    misses("honeyJarFactory.buildDefaultInstance.withConfig", "jwt");
    // A prefix deep inside a long token (a blob) is chance, not a key.
    let blob = format!(
        "{}AIzaCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz9{}",
        "Qx7".repeat(40),
        "k9Z".repeat(40)
    );
    misses(&blob, "google-api-key");
    misses(&format!("{}{KEY}", "AB3".repeat(30)), AWS);
}

#[test]
fn base64_runs() {
    let padded = b64(KEY);
    assert_eq!(padded, "QUtJQUlPU0ZPRE5ON0VYQU1QTEU=");
    found_whole(&padded);
    found_whole(padded.trim_end_matches('='));
    // URL-safe, of a key whose encoding needs `-` or `_`.
    let key = "AKIA2E0A8F3B244C9986";
    let url = URL_SAFE_NO_PAD.encode(format!("id>>{key}??"));
    assert!(url.contains(['-', '_']), "{url}");
    finds(&format!("k: {url} ."), AWS, &url);
    // Glued to a word: the alignment comes from the padding, or without it
    // from the text's shape.
    found_whole(&format!("key{padded}"));
    found_whole(&format!("xy{}", padded.trim_end_matches('=')));
    // A key inside a long text, base64'd: over 512 characters.
    let long = b64(&format!(
        "{} the key is {KEY} and {}",
        "lorem ipsum ".repeat(40),
        "dolor sit ".repeat(40)
    ));
    assert!(long.len() > 512);
    found_whole(&long);
    // A key inside binary data, base64'd.
    let mut blob = noise(30_000, 7);
    blob.splice(20_000..20_000, format!("\0{KEY}\0").bytes());
    found_whole(&STANDARD_NO_PAD.encode(&blob));
}

#[test]
fn wrapped_base64() {
    let long = b64(&format!(
        "config:\n  aws_key_id: {KEY}\n  region: eu-west-1\n"
    ));
    for (width, sep) in [(76, "\n"), (64, "\r\n"), (64, "\n    ")] {
        let wrapped = wrap(&long, width, sep);
        assert!(wrapped.lines().count() > 1);
        finds(&format!("file:\n{wrapped}\nend"), AWS, &wrapped);
    }
    // JSON scanned as text: the line breaks are `\n` escapes.
    let escaped = wrap(&long, 64, "\\n");
    finds(&format!("{{\"pem\": \"{escaped}\"}}"), AWS, &escaped);
    // In a JSON body the value holds real line breaks.
    redacted(&wrap(&long, 64, "\n"), "[REDACTED:aws-access-key]");
}

#[test]
fn hex_runs() {
    let lower = hex(KEY.as_bytes());
    assert_eq!(lower.len(), 40);
    found_whole(&lower);
    found_whole(&lower.to_uppercase());
    let mixed: String = lower
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 3 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    found_whole(&mixed);
    finds(&format!("bytes 0x{lower} end"), AWS, &format!("0x{lower}"));
    // An odd run: one digit glued before.
    found_whole(&format!("a{lower}"));
}

#[test]
fn percent_encoding() {
    let all = percent(KEY.as_bytes());
    found_whole(&all);
    found_whole("AKIA%49%4FSFODNN7EXAMPLE");
    // In a URL, only the key's bytes are the finding.
    let url = format!("https://x.example/cb?user=bob&k={all}&page=2");
    finds(&format!("open {url} now"), AWS, &all);
    redacted(
        &format!("https://x.example/?k={all}&p=2"),
        "https://x.example/?k=[REDACTED:aws-access-key]&p=2",
    );
    // A zero-width space, percent-encoded, inside the key.
    found_whole("AKIAIOSF%E2%80%8BODNN7EXAMPLE");
}

#[test]
fn nested_encodings_to_depth_two() {
    found_whole(&b64(&b64(KEY)));
    found_whole(&b64(&hex(KEY.as_bytes())));
    found_whole(&percent(b64(KEY).as_bytes()));
    found_whole(&hex(b64(KEY).as_bytes()));
    // Three layers is past the bound.
    misses(&format!("x {} y", b64(&b64(&b64(KEY)))), AWS);
}

#[test]
fn base64_credentials_stay_high_entropy() {
    // Decoded, it is no finding; encoded, it is a secret-looking token, and
    // prose it is not.
    let password = b64("s3cr3t-P@ssw0rd-for-the-prod-db!!");
    finds(&format!("pw {password} end"), "high-entropy", &password);
    // Prose that holds a random token: the token is found in the decoding.
    let note = b64("use the token u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj for the api");
    finds(&format!("note {note} end"), "high-entropy", &note);
}

#[test]
fn encoded_near_misses() {
    clean(&b64(
        "The quarterly report is attached; revenue grew 14% to 4.2 million.",
    ));
    clean(&format!(
        "{} and {}",
        URL_SAFE_NO_PAD.encode("please summarize the following meeting notes"),
        hex(b"ordinary words, nothing to see in here at all")
    ));
    for text in [
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "id 550e8400-e29b-41d4-a716-446655440000",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 fixed it",
        "see https://example.com/search?q=hello%20world%21&lang=en",
        "AbstractSingletonProxyFactoryBeanImplementationFactory",
        "the task-management-dashboard-component-2024 ticket",
    ] {
        clean(text);
    }
    // An image in a data URL: a PNG header and random pixel data.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\0\0\0\x01\0\x08\x06\0\0\0".to_vec();
    png.extend(noise(48 << 10, 11));
    png.extend(b"\0\0\0\0IEND\xaeB`\x82");
    let url = format!("data:image/png;base64,{}", STANDARD.encode(&png));
    clean(&url);
    let body = serde_json::to_vec(&serde_json::json!({
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}],
    }))
    .expect("serializable");
    assert!(builtin().scan_json(&body).is_empty());
    assert!(builtin().redact_json(&body, |_| true).is_none());
}

#[test]
fn decoding_stays_within_its_budget() {
    let mut budget = Budget::new(10);
    assert!(budget.take(4096 + 20));
    assert!(!budget.take(1));
    // Five runs whose decodings hold runs too (600 + 450 bytes decoded
    // each), then the key in 900 bytes of text. In a budget of 4 KiB, depth
    // first would spend it on the first three and a half runs; as every run
    // of a text is decoded before any decoding is scanned, the key's run
    // (3,000 + 900 bytes) is decoded, and only decodings of decodings go
    // short.
    let decoys: Vec<String> = (0..5)
        .map(|i| b64(&STANDARD.encode(noise(450, i))))
        .collect();
    let key = b64(&format!("{}{KEY}", "lorem ipsum ".repeat(73)));
    let text = format!("{} {key}", decoys.join(" "));
    let c = builtin();
    let mut out = Vec::new();
    c.layer(&text, 0, &mut Budget::new(0), &mut out);
    let aws = c.class_index(AWS);
    assert!(
        out.iter()
            .any(|f| Some(f.class) == aws && text[f.start..f.end] == key),
        "{out:?}"
    );
}

/// Every finding of a random text is found, with the same text, when the
/// text has a zero-width space after every character.
#[test]
fn zero_width_spaces_hide_nothing() {
    let c = builtin();
    let strip = |found: Vec<(String, String)>| -> Vec<(String, String)> {
        found
            .into_iter()
            .map(|(class, t)| (class, t.replace('\u{200B}', "")))
            .collect()
    };
    for text in random_texts(0x5EED_0FD1_5C01_2345, 600) {
        let spaced: String = text.chars().flat_map(|c| [c, '\u{200B}']).collect();
        assert_eq!(
            strip(found(c, &spaced)),
            found(c, &text),
            "zero-width spaces in {text:?}"
        );
    }
}

/// Every class the plain scan finds in a random text is found in each of
/// its encodings long enough to be decoded.
#[test]
fn encodings_hide_nothing() {
    let c = builtin();
    for text in random_texts(0x0DDB_A115_EED7_7123, 600) {
        let mut classes: Vec<usize> = reference(c, &text)
            .iter()
            .map(|f| f.class)
            .filter(|&class| class != super::HIGH_ENTROPY)
            .collect();
        classes.sort_unstable();
        classes.dedup();
        let mut encodings = vec![percent(text.as_bytes())];
        if text.len() >= 18 {
            encodings.push(b64(&text));
            encodings.push(URL_SAFE_NO_PAD.encode(&text));
            encodings.push(wrap(&b64(&text), 76, "\n"));
        }
        if text.len() >= 20 {
            encodings.push(hex(text.as_bytes()));
        }
        for encoded in encodings {
            let got: Vec<usize> = c.candidates(&encoded).iter().map(|f| f.class).collect();
            let missing: Vec<&str> = classes
                .iter()
                .filter(|class| !got.contains(class))
                .map(|&class| c.classes()[class].name.as_str())
                .collect();
            assert!(
                missing.is_empty(),
                "{missing:?} of {text:?} not found in {encoded:?}"
            );
        }
    }
}

/// Release-build throughput of the disguise paths; run with
/// `cargo test --release -- --ignored --nocapture disguise_throughput`.
#[test]
#[ignore = "benchmark"]
fn disguise_throughput() {
    let c = builtin();
    let body = |content: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": content}],
        }))
        .unwrap_or_default()
    };
    let image = |size: usize| {
        let url = format!(
            "data:image/png;base64,{}",
            STANDARD.encode(noise(size / 4 * 3, 5))
        );
        body(serde_json::json!([
            {"type": "text", "text": "what is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]))
    };
    let text = super::bench_text(1 << 20);
    let cases = [
        ("bench text", body(text.clone().into())),
        ("1 MiB image", image(1 << 20)),
        ("4 MiB image", image(4 << 20)),
        (
            "zero-width spaces",
            body(text.replace("the ", "t\u{200B}he ").into()),
        ),
        (
            "base64 of prose",
            body(b64(&text[..text.len() / 4 * 3]).into()),
        ),
        (
            "prose, base64 runs",
            body(
                text.replace(
                    ". ",
                    &format!(". {} ", b64("a short line of text, base64'd")),
                )
                .into(),
            ),
        ),
    ];
    for (name, b) in cases {
        let scan = rate(b.len(), &|| c.scan_json(&b).len());
        let redact = rate(b.len(), &|| {
            c.redact_json(&b, |_| true).map_or(0, |r| r.0.len())
        });
        println!(
            "{name:>20} {:>8} B: scan_json {scan:6.0} MB/s, redact_json {redact:6.0} MB/s",
            b.len()
        );
    }
}
