//! `scan_json` / `redact_json` tests, and no-panic loops over odd inputs.

use serde_json::{Value, json};

use super::{Classifier, MAX_JSON_DEPTH, json as reader, tests::builtin};

fn idx(name: &str) -> usize {
    builtin().class_index(name).unwrap_or(usize::MAX)
}

fn redact_all(body: &str) -> Option<(String, Vec<(usize, usize)>)> {
    builtin()
        .redact_json(body.as_bytes(), |_| true)
        .map(|(b, counts)| (String::from_utf8(b).unwrap_or_default(), counts))
}

#[test]
fn redacts_inside_string_values_and_keys() {
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "mail jane@example.com or call +1 (415) 555-0132"},
        ],
        "temperature": 0.2,
        "n": 4111111111111111_u64,
        "stream": true,
        "user": null,
        "jane@example.com": "key names carry data too",
    })
    .to_string();
    let (out, counts) = redact_all(&body).expect("something to redact");
    let mut expected: Value = serde_json::from_str(&body).expect("valid");
    expected["messages"][1]["content"] = json!("mail [REDACTED:email] or call [REDACTED:phone]");
    let map = expected.as_object_mut().expect("an object");
    let value = map.remove("jane@example.com").expect("the key");
    map.insert("[REDACTED:email]".into(), value);
    let got: Value = serde_json::from_str(&out).expect("output is JSON");
    assert_eq!(got, expected);
    assert_eq!(counts, [(idx("email"), 2), (idx("phone"), 1)]);
    assert_eq!(builtin().scan_json(body.as_bytes()), counts);
}

#[test]
fn everything_but_the_finding_is_byte_for_byte() {
    // Key order, duplicate keys, number spellings and whitespace all survive:
    // the body is never re-serialized, only spliced.
    let body = "{ \"z\": 1.0, \"a\" : [1e3, 12345678901234567890, -0.5E-2],\n  \"z\": \"to jane@example.com\" }";
    let (out, _) = redact_all(body).expect("redacted");
    assert_eq!(out, body.replace("jane@example.com", "[REDACTED:email]"));
}

#[test]
fn escapes_and_unicode_around_findings_are_kept() {
    let body = r#"{"c":"caf\u00e9\n\"jane@example.com\"\t\ud83d\ude00 naïve 😀 — 123-45-6789"}"#;
    let (out, counts) = redact_all(body).expect("redacted");
    assert_eq!(
        out,
        r#"{"c":"caf\u00e9\n\"[REDACTED:email]\"\t\ud83d\ude00 naïve 😀 — [REDACTED:us-ssn]"}"#
    );
    assert_eq!(counts, [(idx("email"), 1), (idx("us-ssn"), 1)]);
    let got: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        got["c"],
        "café\n\"[REDACTED:email]\"\t😀 naïve 😀 — [REDACTED:us-ssn]"
    );
}

#[test]
fn findings_written_with_escapes_are_found_and_replaced_whole() {
    // `\u0040` is `@`, `\u0020` a space, `\/` a slash: the value is scanned
    // decoded, and the whole raw span of the finding is replaced.
    let body = r#"["jane\u0040example.com", "4111\u00201111 1111 1111", "x LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5Ia\/ y"]"#;
    let (out, counts) = redact_all(body).expect("redacted");
    assert_eq!(
        out,
        r#"["[REDACTED:email]", "[REDACTED:credit-card]", "x [REDACTED:high-entropy] y"]"#
    );
    assert_eq!(counts.len(), 3);
}

#[test]
fn private_keys_span_escaped_newlines() {
    let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu8jzPde0IgxLd6Gnc\n-----END RSA PRIVATE KEY-----";
    let body = json!({"content": format!("key:\n{key}\nbye")}).to_string();
    let (out, counts) = redact_all(&body).expect("redacted");
    assert_eq!(out, r#"{"content":"key:\n[REDACTED:private-key]\nbye"}"#);
    assert_eq!(counts, [(idx("private-key"), 1)]);
    // Scanned as text (not JSON), the escapes are still line breaks to it.
    let broken = format!("{{\"content\": \"{}\"", key.replace('\n', "\\n"));
    assert_eq!(
        builtin().scan_json(broken.as_bytes()),
        [(idx("private-key"), 1)]
    );
}

#[test]
fn custom_classes_are_redacted_and_counted() {
    let c = Classifier::new(&[("acme-id".to_owned(), "ACME-[0-9]{6}".to_owned())]).expect("valid");
    let acme = c.class_index("acme-id").unwrap_or_default();
    let body = br#"{"a":"ACME-123456 and ACME-654321","b":{"ACME-111111":1}}"#;
    assert_eq!(c.scan_json(body), [(acme, 3)]);
    let (out, counts) = c.redact_json(body, |k| k == acme).expect("redacted");
    assert_eq!(
        out,
        br#"{"a":"[REDACTED:acme-id] and [REDACTED:acme-id]","b":{"[REDACTED:acme-id]":1}}"#
    );
    assert_eq!(counts, [(acme, 3)]);
}

#[test]
fn lone_surrogates_are_left_as_they_were() {
    let body = r#"{"c":"\ud800 jane@example.com \udc00"}"#;
    let (out, _) = redact_all(body).expect("redacted");
    assert_eq!(out, r#"{"c":"\ud800 [REDACTED:email] \udc00"}"#);
}

#[test]
fn redaction_follows_the_predicate() {
    let body = r#"{"a":"jane@example.com 123-45-6789","b":["bob@example.org"]}"#;
    let email = idx("email");
    let (out, counts) = builtin()
        .redact_json(body.as_bytes(), |c| c == email)
        .expect("emails redacted");
    assert_eq!(
        String::from_utf8(out).ok().as_deref(),
        Some(r#"{"a":"[REDACTED:email] 123-45-6789","b":["[REDACTED:email]"]}"#)
    );
    assert_eq!(counts, [(email, 2)]);
    assert!(builtin().redact_json(body.as_bytes(), |_| false).is_none());
    assert!(redact_all(r#"{"a":"nothing to see here"}"#).is_none());
}

#[test]
fn a_redacted_class_is_not_hidden_by_an_unredacted_overlap() {
    let c =
        Classifier::new(&[("mailto-link".to_owned(), "mailto:[^ \"]+".to_owned())]).expect("valid");
    let email = c.class_index("email").unwrap_or_default();
    let body = br#"{"a":"write to mailto:jane@example.com now"}"#;
    let (out, _) = c.redact_json(body, |k| k == email).expect("email redacted");
    assert_eq!(out, br#"{"a":"write to mailto:[REDACTED:email] now"}"#);
}

#[test]
fn top_level_scalars_and_empty_containers() {
    assert_eq!(
        redact_all(r#" "jane@example.com" "#).map(|r| r.0),
        Some(r#" "[REDACTED:email]" "#.to_owned())
    );
    for body in [
        "{}",
        "[]",
        "0",
        "-1.5e+3",
        "true",
        "null",
        r#""""#,
        "[[],{},[{}]]",
    ] {
        assert!(
            reader::string_values(body.as_bytes(), MAX_JSON_DEPTH).is_some(),
            "{body}"
        );
        assert!(redact_all(body).is_none());
        assert!(builtin().scan_json(body.as_bytes()).is_empty());
    }
}

#[test]
fn invalid_json_is_scanned_as_text_and_never_rewritten() {
    let email = idx("email");
    for body in [
        &br#"{"content": "jane@example.com""#[..],
        br#"{"content": "jane@example.com"} trailing"#,
        br#"{'content': 'jane@example.com'}"#,
        b"\xEF\xBB\xBF{\"c\":\"jane@example.com\"}",
        b"{\"c\":\"jane@example.com \xff\xfe\"}",
        b"plain text jane@example.com",
    ] {
        assert_eq!(
            builtin().scan_json(body),
            [(email, 1)],
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(builtin().redact_json(body, |_| true).is_none());
    }
}

fn nested(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn depth_is_bounded() {
    let inner = r#""jane@example.com""#;
    let ok = nested(MAX_JSON_DEPTH, inner);
    assert!(redact_all(&ok).is_some());
    let deep = nested(MAX_JSON_DEPTH + 1, inner);
    assert!(redact_all(&deep).is_none());
    assert_eq!(builtin().scan_json(deep.as_bytes()), [(idx("email"), 1)]);
    let objects = format!(
        "{}{inner}{}",
        r#"{"a":"#.repeat(MAX_JSON_DEPTH + 1),
        "}".repeat(MAX_JSON_DEPTH + 1)
    );
    assert!(redact_all(&objects).is_none());
    for body in [
        nested(10_000, inner),
        "[".repeat(100_000),
        "{\"a\":".repeat(50_000),
    ] {
        assert!(redact_all(&body).is_none());
        let _ = builtin().scan_json(body.as_bytes());
    }
}

/// The reader must accept exactly what serde_json accepts (within the depth
/// limit).
#[test]
fn reader_agrees_with_serde_json() {
    let docs = [
        "{}",
        "[]",
        "1",
        "-0",
        "0.5",
        "1e5",
        "1E+5",
        "-1.25e-5",
        "\"\"",
        "\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\"",
        "[1,2]",
        "{\"a\":{\"b\":[null,true,false]}}",
        " \t\n\r[ 1 , \"x\" ] \n",
        "01",
        "1.",
        ".5",
        "+1",
        "-",
        "1e",
        "--1",
        "[1,]",
        "{\"a\":1,}",
        "{a:1}",
        "{\"a\" 1}",
        "[",
        "]",
        "\"abc",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\u12G4\"",
        "\"tab\there\"",
        "nul",
        "tru",
        "[1 2]",
        "{\"a\":1 \"b\":2}",
        "",
        " ",
        "[]]",
        "{}{}",
        "\"\\ud83d\\ude00\"",
        "[1e999]",
        "{\"\":\"\"}",
        "[\"\u{7f}\"]",
        "\"\u{2028}\"",
    ];
    for doc in docs {
        let ours = reader::string_values(doc.as_bytes(), MAX_JSON_DEPTH).is_some();
        let theirs = serde_json::from_str::<serde::de::IgnoredAny>(doc).is_ok();
        assert_eq!(ours, theirs, "{doc:?}");
    }
}

/// Deterministic pseudo-random bodies: JSON-ish fragments, findings, odd
/// bytes. Nothing may panic; a rewritten body must still parse whenever the
/// input did, with the same shape.
#[test]
fn no_panics_on_odd_bodies() {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"a\":",
        "\"x\"",
        "\\",
        "\\u",
        "\\ud83d",
        "\\n",
        "1",
        "-2.5e3",
        "true",
        "null",
        " ",
        "\n",
        "jane@example.com",
        "4111 1111 1111 1111",
        "123-45-6789",
        "AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN RSA PRIVATE KEY-----",
        "é",
        "😀",
        "\u{0}",
        "sk-ant-",
        "eyJ",
        "+1 ",
        "DE89",
        ";",
        "@",
    ];
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let c = builtin();
    for round in 0..3000 {
        let mut body: Vec<u8> = Vec::new();
        let len = next() % 40;
        for _ in 0..len {
            let r = next();
            if r % 11 == 0 {
                body.push((r >> 8) as u8);
            } else {
                body.extend_from_slice(PIECES[(r >> 8) as usize % PIECES.len()].as_bytes());
            }
        }
        // Every third body is wrapped into a valid document.
        if round % 3 == 0 {
            let text = String::from_utf8_lossy(&body).into_owned();
            body = serde_json::to_vec(&json!({"messages": [{"content": text}], "n": round}))
                .unwrap_or_default();
        }
        let _ = c.scan_json(&body);
        let _ = c.scan(&String::from_utf8_lossy(&body));
        let Some((out, counts)) = c.redact_json(&body, |_| true) else {
            continue;
        };
        assert!(!counts.is_empty());
        if let Ok(before) = serde_json::from_slice::<Value>(&body) {
            let after: Value = serde_json::from_slice(&out).expect("redacted body parses");
            assert_eq!(shape(&before), shape(&after));
        }
    }
}

/// The document with every string replaced by "": redaction may only change
/// string contents.
fn shape(v: &Value) -> Value {
    match v {
        Value::String(_) => Value::String(String::new()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        other => other.clone(),
    }
}

#[test]
fn no_panics_on_odd_text() {
    let c = builtin();
    let big_token = "A".repeat(300_000);
    let odd: Vec<String> = vec![
        String::new(),
        "a".into(),
        "@".repeat(10_000),
        "a@".repeat(10_000),
        format!("{}@", "a.".repeat(20_000)),
        "1 ".repeat(20_000),
        "1-".repeat(20_000),
        "4111 ".repeat(10_000),
        "+1".repeat(10_000),
        "-----BEGIN RSA PRIVATE KEY-----\n".repeat(2_000),
        format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}",
            "QUJD\n".repeat(20_000)
        ),
        "eyJ.".repeat(10_000),
        "sk-".repeat(10_000),
        "DE89 ".repeat(10_000),
        "\u{0}\u{1}\u{7f}\u{feff}\u{10ffff}".repeat(1000),
        "é😀—".repeat(10_000),
        ";!?{}[]<|*#&~^$\r\n".repeat(1000),
        big_token.clone(),
        format!("{big_token}1"),
        format!(
            "x {RANDOM} ",
            RANDOM = "u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj"
        )
        .repeat(2000),
    ];
    for text in &odd {
        for f in c.scan(text) {
            assert!(f.start < f.end && f.end <= text.len());
            assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        }
        let body = serde_json::to_vec(&json!([text])).unwrap_or_default();
        if let Some((out, _)) = c.redact_json(&body, |_| true) {
            assert!(serde_json::from_slice::<Value>(&out).is_ok());
        }
    }
}
