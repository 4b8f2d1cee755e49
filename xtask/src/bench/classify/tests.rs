//! `bench classify`'s unit tests: the prompt, the policies, reading and
//! checking the helper's rows, labels and redaction markers.

use super::*;

#[test]
fn the_prompt_is_32_kb_of_prose_with_two_addresses() {
    let body = prompt_body(BODY_BYTES);
    assert!(body.len() <= BODY_BYTES, "{}", body.len());
    assert!(body.len() > BODY_BYTES - 200, "{}", body.len());
    assert_eq!(prompt_body(BODY_BYTES), body, "deterministic");
    let request: Value = serde_json::from_slice(&body).unwrap();
    let prompt = request["messages"][1]["content"].as_str().unwrap();
    for email in EMAILS {
        assert_eq!(prompt.matches(email).count(), 1, "{email}");
    }
    assert_eq!(prompt.matches('@').count(), EMAILS.len());
    // Nothing a secret or number detector could take for a finding.
    assert!(!prompt.bytes().any(|b| b.is_ascii_digit()));
    assert!(prompt.is_ascii());
    let longest = prompt
        .split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c)))
        .map(str::len)
        .max()
        .unwrap();
    assert!(longest < 32, "a {longest}-byte token looks high-entropy");
    let first = prompt.find(EMAILS[0]).unwrap();
    let second = prompt.find(EMAILS[1]).unwrap();
    assert!(
        first > prompt.len() / 4 && first < second && second < prompt.len() * 3 / 4,
        "{first} {second} of {}",
        prompt.len()
    );
    assert!(prompt.contains("\n\n"));
}

#[test]
fn the_contact_sentences_hold_the_addresses() {
    for (sentence, email) in CONTACT_SENTENCES.iter().zip(EMAILS) {
        assert!(sentence.contains(email), "{sentence}");
    }
}

#[test]
fn the_policies_differ_only_in_the_rule() {
    assert!(NO_CONTROLS_YAML.contains("rules: []"));
    assert!(DATA_CONTROLS_YAML.contains("secret: block"));
    assert!(DATA_CONTROLS_YAML.contains("pii: redact"));
}

const OUTPUT: &str = r#"{"operation":"scan_json","bytes":1043,"iterations":100,"mb_per_s":104.3,"us_per_body":10.0}
{"operation":"redact_json","bytes":1043,"iterations":50,"mb_per_s":52.15,"us_per_body":20.0}
{"operation":"scan_json","bytes":32790,"iterations":10,"mb_per_s":327.9,"us_per_body":100.0}
{"operation":"redact_json","bytes":32790,"iterations":10,"mb_per_s":327.9,"us_per_body":100.0}
{"operation":"scan_json","bytes":1048600,"iterations":3,"mb_per_s":349.5333,"us_per_body":3000.0}
{"operation":"redact_json","bytes":1048600,"iterations":3,"mb_per_s":349.5333,"us_per_body":3000.0}
"#;

#[test]
fn parses_and_checks_the_rows() {
    let rows = parse_rows(OUTPUT).unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!(
        rows[1],
        Row {
            operation: "redact_json".into(),
            bytes: 1043,
            iterations: 50,
            mb_per_s: 52.15,
            us_per_body: 20.0,
        }
    );
    assert_eq!(check_rows(&rows), Vec::<String>::new());

    let mut wrong = rows.clone();
    wrong[0].mb_per_s = 500.0;
    wrong.pop();
    wrong[2].operation = "scan".into();
    assert_eq!(
        check_rows(&wrong),
        [
            "scan_json of 1043 bytes: 100 iterations, 500 MB/s and 10 µs per body do not \
             agree",
            "unknown operation \"scan\"",
            "0 scan_json rows for bodies of about 32 KB, expected 1",
            "0 redact_json rows for bodies of about 1 MB, expected 1",
        ]
    );
    wrong[0].bytes = 4096;
    assert!(
        check_rows(&wrong)
            .last()
            .unwrap()
            .contains("a body of 4096 bytes is not about")
    );
}

#[test]
fn rejects_output_that_is_not_rows() {
    assert!(parse_rows("").is_err());
    assert!(parse_rows("hello\n").is_err());
    assert!(parse_rows(r#"{"operation":"scan_json","bytes":1}"#).is_err());
}

#[test]
fn labels_sizes() {
    assert_eq!(size_label(1024), "1 KB");
    assert_eq!(size_label(1043), "1 KB");
    assert_eq!(size_label(32 * 1024), "32 KB");
    assert_eq!(size_label(1_048_600), "1 MB");
    assert_eq!(nominal_size(1043), Some(1024));
    assert_eq!(nominal_size(4096), None);
}

#[test]
fn counts_markers() {
    let text = r#"{"c":"a [REDACTED:email] b [REDACTED:email] c [REDACTED:phone] [REDACTED:x y] [REDACTED:"}"#;
    let found = markers(text);
    assert_eq!(found.get("email"), Some(&2));
    assert_eq!(found.get("phone"), Some(&1));
    assert_eq!(found.len(), 2);
    assert!(contains(b"abc", b"bc"));
    assert!(!contains(b"abc", b"cb"));
}

#[test]
fn seconds_must_be_positive() {
    assert_eq!(positive_seconds("0.5"), Ok(0.5));
    assert!(positive_seconds("0").is_err());
    assert!(positive_seconds("nan").is_err());
    assert!(positive_seconds("x").is_err());
}
