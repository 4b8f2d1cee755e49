//! Detector tests for the secret classes (with the shared helpers). PII,
//! overlaps and custom classes are in `tests_pii.rs`; JSON and robustness in
//! `tests_json.rs`.

use std::sync::OnceLock;

use super::{Category, Classifier, validate};

pub(super) fn builtin() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| Classifier::new(&[]).expect("built-in patterns compile"))
}

/// `(class name, matched text)` for every finding.
pub(super) fn found(c: &Classifier, text: &str) -> Vec<(String, String)> {
    c.scan(text)
        .into_iter()
        .map(|f| {
            (
                c.classes()[f.class].name.clone(),
                text[f.start..f.end].to_owned(),
            )
        })
        .collect()
}

#[track_caller]
pub(super) fn finds(text: &str, class: &str, expected: &str) {
    let got = found(builtin(), text);
    assert!(
        got.iter().any(|(c, t)| c == class && t == expected),
        "expected {class} {expected:?} in {text:?}, got {got:?}"
    );
}

#[track_caller]
pub(super) fn misses(text: &str, class: &str) {
    let got = found(builtin(), text);
    assert!(
        !got.iter().any(|(c, _)| c == class),
        "unexpected {class} in {text:?}: {got:?}"
    );
}

#[track_caller]
pub(super) fn finds_itself(text: &str, class: &str) {
    finds(&format!("value: {text} end"), class, text);
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
const AWS_SECRET: &str = "Stqcbnr3yBdGBLEPH1qhT61qtc4xatws8phP9nhF";
const RANDOM_48: &str = "u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj";

#[test]
fn class_table_is_stable() {
    let c = builtin();
    let names: Vec<&str> = c.classes().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "aws-access-key",
            "aws-secret-key",
            "github-token",
            "gitlab-token",
            "slack-token",
            "openai-key",
            "anthropic-key",
            "google-api-key",
            "private-key",
            "jwt",
            "high-entropy",
            "email",
            "us-ssn",
            "credit-card",
            "iban",
            "phone",
        ]
    );
    assert_eq!(c.class_index("high-entropy"), Some(super::HIGH_ENTROPY));
    assert_eq!(
        c.class_index("email").map(|i| c.classes()[i].category),
        Some(Category::Pii)
    );
    assert_eq!(c.classes()[0].category, Category::Secret);
    assert_eq!(c.class_index("nope"), None);
    assert_eq!(
        serde_json::to_string(&Category::Pii).ok().as_deref(),
        Some("\"pii\"")
    );
}

#[test]
fn classifier_is_shareable() {
    fn check<T: Send + Sync>() {}
    check::<Classifier>();
}

#[test]
fn aws_access_key() {
    finds_itself("AKIAIOSFODNN7EXAMPLE", "aws-access-key");
    finds_itself("ASIAL1VFZ3ZFKKIBJ3J4", "aws-access-key");
    misses("AKIAIOSFODNN7EXAMPL", "aws-access-key");
    misses("akiaiosfodnn7example", "aws-access-key");
    misses("ABCDIOSFODNN7EXAMPLE", "aws-access-key");
    // Glued to word characters, a key id is still one to whoever reads it
    // (tests_disguise has more of this).
    finds(
        "AKIAIOSFODNN7EXAMPLEX",
        "aws-access-key",
        "AKIAIOSFODNN7EXAMPLE",
    );
    finds(
        "XAKIAIOSFODNN7EXAMPLE",
        "aws-access-key",
        "AKIAIOSFODNN7EXAMPLE",
    );
}

#[test]
fn aws_secret_key_needs_its_name_nearby() {
    for text in [
        format!("aws_secret_access_key = {AWS_SECRET}"),
        format!("AWS_SECRET_ACCESS_KEY={AWS_SECRET}\n"),
        format!("{{\"SecretAccessKey\": \"{AWS_SECRET}\"}}"),
        format!("aws secret: '{AWS_SECRET}'"),
    ] {
        finds(&text, "aws-secret-key", AWS_SECRET);
    }
    // The bare token is only a high-entropy string.
    misses(&format!("token {AWS_SECRET} here"), "aws-secret-key");
    // Too far from the name, one character too long, a placeholder.
    misses(
        &format!("aws_secret_access_key is kept in the vault, not {AWS_SECRET}"),
        "aws-secret-key",
    );
    misses(
        &format!("aws_secret_access_key={AWS_SECRET}x"),
        "aws-secret-key",
    );
    misses(
        "aws_secret_access_key=your_secret_access_key_goes_here_please",
        "aws-secret-key",
    );
}

#[test]
fn github_token() {
    finds_itself("ghp_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpY", "github-token");
    finds_itself("gho_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpY", "github-token");
    let pat = "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";
    finds_itself(pat, "github-token");
    misses("ghp_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7Dxtp", "github-token");
    misses("ghx_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpY", "github-token");
    // The fixed length is the token; what follows is glued on.
    finds(
        "ghp_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpYZ",
        "github-token",
        "ghp_IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpY",
    );
}

#[test]
fn gitlab_and_slack_tokens() {
    finds_itself("glpat-Ab3dEfGh1jKlMn0pQrSt", "gitlab-token");
    misses("glpat-Ab3dEfGh1jKlMn0pQrS", "gitlab-token");
    finds_itself(
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "slack-token",
    );
    finds_itself(
        "xoxp-1234567890-1234567890-1234567890-abcdef0123456789abcdef0123456789",
        "slack-token",
    );
    misses("xoxb-not-a-real-token-at-all", "slack-token");
    misses("xoxz-123456789012-1234567890123", "slack-token");
}

#[test]
fn openai_and_anthropic_keys() {
    finds_itself(&format!("sk-{RANDOM_48}"), "openai-key");
    finds_itself(&format!("sk-proj-{RANDOM_48}"), "openai-key");
    let anthropic = "sk-ant-api03-qFYY_kv5ZJr3J1TWDtkwtDDb-xHKas1VOqg6YYZYn9ZhyiA4uoRgnatmUdjAWtGSU8po-799NksnRH9ucAUsdMlHUvTCQ-AA";
    finds_itself(anthropic, "anthropic-key");
    misses(anthropic, "openai-key");
    misses(&format!("see {anthropic}"), "high-entropy");
    misses("sk-short1234", "openai-key");
    misses("sk-proj-abc123", "openai-key");
    misses(
        "a sk-this-is-a-long-kebab-case-slug-without-digits here",
        "openai-key",
    );
    misses("task-management-dashboard-component-2024", "openai-key");
}

#[test]
fn google_api_key() {
    finds_itself("AIzaCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz9", "google-api-key");
    misses("AIzaCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz", "google-api-key");
    finds(
        "AIzaCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz9-x",
        "google-api-key",
        "AIzaCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz9",
    );
}

#[test]
fn private_key_blocks() {
    let block = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,5A0F3E\n\nMIIEowIBAAKCAQEAu8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj\nLXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5Ia==\n-----END RSA PRIVATE KEY-----";
    finds(&format!("my key:\n{block}\nthanks"), "private-key", block);
    let ossh = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----";
    let two = format!("{ossh}\nand\n{ossh}");
    let got = found(builtin(), &two);
    assert_eq!(
        got.iter()
            .filter(|(c, t)| c == "private-key" && t == ossh)
            .count(),
        2,
        "{got:?}"
    );
    // Without an END line: the BEGIN line and the base64 right after it.
    let cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
    finds(&format!("{cut}\n(truncated)"), "private-key", cut);
    // JSON scanned as text: `\n` escapes separate the lines.
    let escaped = block.replace('\n', "\\n");
    finds(&format!("\"{escaped}\""), "private-key", &escaped);
    finds(
        "-----BEGIN EC PRIVATE KEY----- and nothing else",
        "private-key",
        "-----BEGIN EC PRIVATE KEY-----",
    );
    misses(
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
        "private-key",
    );
    misses("-----BEGIN CERTIFICATE-----", "private-key");
}

#[test]
fn jwt() {
    finds_itself(JWT, "jwt");
    misses(&format!("t {JWT} t"), "high-entropy");
    finds_itself("eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0.", "jwt");
    misses("eyJhbGciOiJIUzI1NiJ9.eyJzdWIi", "jwt");
    misses("eyJa.eyJb.sig", "jwt");
}

#[test]
fn high_entropy_is_conservative() {
    finds_itself(RANDOM_48, "high-entropy");
    finds_itself("LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5Ia", "high-entropy");
    for text in [
        "550e8400-e29b-41d4-a716-446655440000",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "d41d8cd98f00b204e9800998ecf8427e",
        "AbstractSingletonProxyFactoryBean2Impl",
        "ThisIsAVeryLongCamelCaseName1234567890",
        "/api/v1/users/12345/profile/settings",
        "/home/user/projects/modelgate/agent/src/classify2",
        "some_long_snake_case_identifier_v2_final",
        "kubernetes-deployment-frontend-7d9f8b6c5-x2k4p",
        "v1/projects/my-project-123/locations/us-central1",
        "sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC",
        "internationalization and incomprehensibilities are long words",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
    ] {
        misses(text, "high-entropy");
    }
    // A base64 payload (an image) is data, not a secret.
    let blob = RANDOM_48.repeat(20);
    misses(&blob, "high-entropy");
}

#[test]
fn entropy_helpers() {
    assert!(validate::entropy(b"aaaa") < 0.01);
    assert!((validate::entropy(b"abcd") - 2.0).abs() < 1e-9);
    assert_eq!(validate::word_fraction(b"xq7Z9"), 0);
    assert_eq!(validate::word_fraction(b"ProfileSettings"), 15);
}

/// MB/s of `f` over `bytes`-byte inputs, run for 0.8 s: for the ignored
/// throughput tests.
pub(super) fn rate(bytes: usize, f: &dyn Fn() -> usize) -> f64 {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let mut n = 0;
    let mut sink = 0;
    while start.elapsed() < Duration::from_millis(800) {
        sink += f();
        n += 1;
    }
    std::hint::black_box(sink);
    (bytes * n) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Release-build throughput; run with
/// `cargo test --release -- --ignored --nocapture throughput`.
#[test]
#[ignore = "benchmark"]
fn throughput() {
    let c = builtin();
    for size in [1 << 10, 32 << 10, 1 << 20] {
        let text = super::bench_text(size);
        let body = super::bench_json(size);
        let scan = rate(text.len(), &|| c.scan(&text).len());
        let redact = rate(body.len(), &|| {
            c.redact_json(&body, |_| true).map_or(0, |r| r.0.len())
        });
        println!("{size:>8} B: scan {scan:6.0} MB/s, redact_json {redact:6.0} MB/s");
    }
}
