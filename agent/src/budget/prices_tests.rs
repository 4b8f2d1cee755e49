use std::path::Path;

use super::{
    prices::{FILE_NAME as PRICES_FILE_NAME, PriceError},
    *,
};

const SAMPLE: &str = r#"
providers:
  openai:
    - model: "gpt-4o-mini*"
      input: 0.15
      output: 0.60
    - model: "gpt-4o*"
      input: 2.50
      output: 10
  anthropic:
    - model: claude-3-5-sonnet*
      input: 3
      output: 15
"#;

#[test]
fn cost_uses_the_first_matching_glob() {
    let prices = Prices::parse("prices.yaml", SAMPLE).expect("parse");
    let cost = |p, m, i, o| prices.cost(p, m, i, o);
    assert_eq!(
        cost("openai", "gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000),
        Some(0.75)
    );
    assert_eq!(cost("openai", "GPT-4o-2024-08-06", 2_000_000, 0), Some(5.0));
    assert_eq!(
        cost("anthropic", "claude-3-5-sonnet-20241022", 0, 1000),
        Some(0.015)
    );
    assert_eq!(cost("openai", "o3", 1, 1), None, "unknown model");
    assert_eq!(cost("mistral", "gpt-4o", 1, 1), None, "unknown provider");
    assert_eq!(
        prices.price("openai", "gpt-4o").map(|p| p.model.as_str()),
        Some("gpt-4o*")
    );
    assert!(Prices::default().cost("openai", "gpt-4o", 1, 1).is_none());
}

#[test]
fn a_missing_table_is_empty_and_a_bad_one_joins_file_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prices = Prices::load_dir(dir.path()).expect("no file: empty");
    assert!(prices.cost("openai", "gpt-4o", 1, 1).is_none());
    std::fs::write(dir.path().join(PRICES_FILE_NAME), "providers: 3\n").expect("write");
    let err = Prices::load_dir(dir.path()).expect_err("invalid");
    assert_eq!(err.line, Some(1), "{err}");
    let joined = crate::yaml::FileErrors::from(err.clone());
    assert_eq!(joined.to_string(), err.to_string(), "same rendering");
}

fn parse_err(text: &str) -> PriceError {
    Prices::parse("prices.yaml", text).expect_err("an error")
}

#[test]
fn price_errors_name_file_line_and_field() {
    let negative = SAMPLE.replace("output: 10", "output: -10");
    let err = parse_err(&negative);
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(9), Some("providers.openai[1].output"))
    );
    assert!(err.to_string().starts_with("prices.yaml:9:"), "{err}");
    assert!(err.message.contains("non-negative"), "{err}");

    let unknown = SAMPLE.replace("      input: 3\n", "      input: 3\n      cached: 1\n");
    let err = parse_err(&unknown);
    assert_eq!(err.line, Some(13), "{err}");
    assert!(err.message.contains("unknown field `cached`"), "{err}");

    let err = parse_err("providers:\n  openai: []\n  xai: []\n  openai: []\n");
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(4), Some("providers.openai")),
        "{err}"
    );
    let err = parse_err("providers:\n  OpenAI: []\n");
    assert_eq!(err.line, Some(2), "{err}");
    let err = parse_err(
        "providers:\n  openai:\n    - model: \"gpt-[\"\n      input: 1\n      output: 1\n",
    );
    assert_eq!(err.line, Some(3), "{err}");
    assert_eq!(
        parse_err("").file,
        "prices.yaml",
        "an empty file is an error too"
    );
}

#[test]
fn shadowed_globs_are_rejected() {
    let swapped =
        SAMPLE
            .replacen("gpt-4o-mini*", "TMP", 1)
            .replacen("\"gpt-4o*\"", "\"gpt-4o-mini*\"", 1);
    let swapped = swapped.replacen("TMP", "gpt-4o*", 1);
    let err = parse_err(&swapped);
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(7), Some("providers.openai[1].model"))
    );
    assert!(err.message.contains("on line 4"), "{err}");
    let duplicate = SAMPLE.replace("\"gpt-4o*\"", "\"GPT-4o-mini*\"");
    assert_eq!(parse_err(&duplicate).line, Some(7));
    let literal = SAMPLE.replace("\"gpt-4o*\"", "gpt-4o-mini-2024-07-18");
    assert_eq!(
        parse_err(&literal).field.as_deref(),
        Some("providers.openai[1].model")
    );
    let flush = "providers:\n  openai:\n  - model: a*\n    input: 1\n    output: 1\n  - model: ab*\n    input: 1\n    output: 1\n";
    assert_eq!(
        parse_err(flush).line,
        Some(6),
        "a list at its key's indentation"
    );
    // Different providers never shadow each other.
    let other = SAMPLE.replace("claude-3-5-sonnet*", "gpt-4o*");
    assert!(Prices::parse("prices.yaml", &other).is_ok());
}

#[test]
fn shipped_price_table_parses_and_orders_its_globs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/prices.yaml");
    let prices = Prices::load(&path).unwrap_or_else(|err| panic!("{err}"));
    let input = |provider: &str, model: &str| prices.price(provider, model).map(|p| p.input);
    let cases = [
        ("openai", "gpt-4o-mini-2024-07-18", 0.15),
        ("openai", "gpt-4o-2024-11-20", 2.50),
        ("openai", "gpt-4.1-nano", 0.10),
        ("openai", "gpt-4.1-mini-2025-04-14", 0.40),
        ("openai", "gpt-4.1", 2.00),
        ("openai", "o4-mini", 1.10),
        ("openai", "o3-mini", 1.10),
        ("openai", "o3", 2.00),
        ("openai", "gpt-5-mini", 0.25),
        ("openai", "gpt-5-2025-08-07", 1.25),
        ("openai", "text-embedding-3-small", 0.02),
        ("anthropic", "claude-opus-4-1-20250805", 15.0),
        ("anthropic", "claude-opus-4-20250514", 15.0),
        ("anthropic", "claude-opus-4-5-20251101", 5.0),
        ("anthropic", "claude-sonnet-4-5-20250929", 3.0),
        ("anthropic", "claude-haiku-4-5-20251001", 1.0),
        ("anthropic", "claude-3-5-haiku-20241022", 0.80),
        ("anthropic", "claude-3-haiku-20240307", 0.25),
        ("gemini", "gemini-2.5-flash-lite", 0.10),
        ("gemini", "gemini-2.5-flash", 0.30),
        ("gemini", "gemini-2.0-flash-001", 0.10),
        ("mistral", "mistral-large-2411", 2.0),
        ("mistral", "mistral-large-latest", 0.50),
        ("deepseek", "deepseek-reasoner", 0.28),
        ("groq", "llama-3.3-70b-versatile", 0.59),
        ("xai", "grok-3-mini", 0.30),
        ("xai", "grok-4-1-fast-reasoning", 0.20),
    ];
    for (provider, model, expected) in cases {
        assert_eq!(input(provider, model), Some(expected), "{provider} {model}");
    }
    assert_eq!(
        input("openai", "gpt-5.4"),
        None,
        "newer models are not guessed at"
    );
    assert_eq!(input("xai", "grok-4.3"), None);
}
