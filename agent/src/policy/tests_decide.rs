//! Request decisions on what the upstream will read: unreadable bodies,
//! two models, text outside `messages`, findings that cannot be redacted.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::{
    Action, CgroupFacts, Policy, ProcFacts, RequestFacts,
    decide::{Content, RefuseKind, RequestDecision, decide},
};
use crate::{
    catalog::Catalog,
    inspect::{self, path::normalize},
    providers::{parse_request_json, reads_json},
};

const CATALOG: &str =
    "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n";
const KEY: &str = "AKIAQWERTYUIOPASDFGH";

fn policy(text: &str) -> Policy {
    let catalog = Catalog::parse("endpoints.yaml", CATALOG).unwrap();
    Policy::parse("policy.yaml", text, &catalog).unwrap_or_else(|e| panic!("{e}"))
}

const PROTECT: &str = r#"
default_action: redirect
rules:
  - name: no-files
    match: {path: ["/v1/files*"]}
    action: block
  - name: protect
    action: redirect
    controls:
      models: {deny: ["denied-*"]}
      max_prompt_bytes: 2000
      data: {secret: block, pii: redact}
"#;

struct Request<'a> {
    path: &'a str,
    query: Option<&'a str>,
    body: &'a [u8],
    encoding: Option<&'a str>,
    headers: HeaderMap,
}

impl<'a> Request<'a> {
    fn new(path: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            path,
            query: None,
            body,
            encoding: None,
            headers: HeaderMap::new(),
        }
    }

    /// What the proxy decides, read as the proxy reads it.
    fn decide<'p>(&self, policy: &'p Policy) -> RequestDecision<'p> {
        let path = normalize(self.path);
        let body = inspect::read_body(
            &Bytes::copy_from_slice(self.body),
            Some("application/json"),
            self.encoding,
            reads_json(&path),
        );
        let info = parse_request_json(&path, body.json());
        let proc = ProcFacts {
            comm: "python3",
            ..Default::default()
        };
        let request = RequestFacts {
            host: Some("api.openai.com"),
            model: info.model.as_deref(),
            path: &path,
            stream: info.stream,
        };
        decide(
            policy,
            Action::Redirect,
            &proc,
            &CgroupFacts::default(),
            "openai",
            &request,
            &info,
            &Content {
                body: &body,
                query: self.query,
                headers: &self.headers,
            },
        )
    }
}

fn refused(decision: &RequestDecision<'_>) -> Option<RefuseKind> {
    decision.refuse.as_ref().map(|(kind, _)| *kind)
}

fn chat(content: &str) -> String {
    serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
        .to_string()
}

#[test]
fn unreadable_bodies_are_refused_under_content_controls_only() {
    let p = policy(PROTECT);
    let nan = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"t":NaN}"#;
    let d = Request::new("/v1/chat/completions", nan).decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::Unreadable));
    let (_, why) = d.refuse.unwrap();
    assert!(why.contains("unparseable: allow"), "says what to do: {why}");

    let mut broken = Request::new("/v1/chat/completions", b"\x1f\x8b not gzip");
    broken.encoding = Some("gzip");
    assert_eq!(refused(&broken.decide(&p)), Some(RefuseKind::Unreadable));

    let allow = policy(&PROTECT.replace(
        "max_prompt_bytes: 2000",
        "max_prompt_bytes: 2000\n      unparseable: allow",
    ));
    assert_eq!(
        refused(&Request::new("/v1/chat/completions", nan).decide(&allow)),
        None
    );
    let plain = policy("default_action: redirect\nrules:\n  - name: all\n    action: redirect\n");
    assert_eq!(
        refused(&Request::new("/v1/chat/completions", nan).decide(&plain)),
        None,
        "a rule that does not read content does not refuse what it cannot read"
    );
}

#[test]
fn the_path_model_wins_and_a_conflicting_body_is_refused() {
    let p = policy(PROTECT);
    let body = br#"{"model":"gpt-4o","contents":[{"parts":[{"text":"hi"}]}]}"#;
    let d = Request::new("/v1beta/models/denied-pro:generateContent", body).decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::ModelConflict));
    let plain = policy("default_action: redirect\nrules: []\n");
    let d = Request::new("/v1beta/models/other:generateContent", body).decide(&plain);
    assert_eq!(
        refused(&d),
        Some(RefuseKind::ModelConflict),
        "with no rule too"
    );
    // Dot segments cannot smuggle another model past the path.
    let body = br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
    let d = Request::new(
        "/v1beta/models/gemini-ok/../denied-pro:generateContent",
        body,
    )
    .decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::ModelRefused));
    // Bedrock ARNs with unescaped slashes still name the model.
    let arns = policy(&PROTECT.replace("\"denied-*\"", "\"*/denied-*\""));
    let d = Request::new(
        "/model/arn:aws:bedrock:us-east-1:1:inference-profile/denied-x/converse",
        br#"{"messages":[]}"#,
    )
    .decide(&arns);
    assert_eq!(refused(&d), Some(RefuseKind::ModelRefused));
    // Azure: the deployment is served, and the body's model must pass too.
    let d = Request::new(
        "/openai/deployments/prod/chat/completions",
        br#"{"model":"denied-4","messages":[]}"#,
    )
    .decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::ModelRefused));
}

#[test]
fn text_outside_messages_counts_towards_max_prompt_bytes() {
    let p = policy(PROTECT);
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {
            "name": "f", "description": "x".repeat(4000),
            "parameters": {"type": "object", "properties": {}}}}],
    })
    .to_string();
    let d = Request::new("/v1/chat/completions", body.as_bytes()).decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::TooLarge));
    let keys = serde_json::json!({
        "model": "gpt-4o", "messages": [],
        "metadata": {"k".repeat(2100): "v"},
    })
    .to_string();
    let d = Request::new("/v1/chat/completions", keys.as_bytes()).decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::TooLarge), "keys are text too");
    let ok = chat(&"y".repeat(1900));
    assert_eq!(
        refused(&Request::new("/v1/chat/completions", ok.as_bytes()).decide(&p)),
        None
    );
}

#[test]
fn path_rules_match_the_normalised_path() {
    let p = policy(PROTECT);
    for path in ["//v1/files", "/v1/./files", "/v1/%66iles", "/v1/x/../files"] {
        let d = Request::new(path, b"").decide(&p);
        assert_eq!(refused(&d), Some(RefuseKind::Blocked), "{path}");
    }
}

#[test]
fn findings_name_their_places_and_unredactable_ones_refuse() {
    let p = policy(PROTECT);
    let mut r = Request::new("/v1/chat/completions", b"");
    let body = chat("hello");
    r.body = body.as_bytes();
    r.headers
        .insert("x-note", HeaderValue::from_static("mail jane@example.com"));
    let d = r.decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::DataBlocked), "{d:?}");
    assert_eq!(d.findings[0].places, ["header:x-note"]);

    // The same address in the body is redacted, not refused.
    let body = chat("mail jane@example.com");
    let d = Request::new("/v1/chat/completions", body.as_bytes()).decide(&p);
    assert_eq!(refused(&d), None);
    assert!(d.redact);
    assert_eq!(d.findings[0].places, ["body"]);

    let query = format!("note={KEY}");
    let mut r = Request::new("/v1/chat/completions", b"");
    let body = chat("hello");
    r.body = body.as_bytes();
    r.query = Some(&query);
    let d = r.decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::DataBlocked));
    assert_eq!(d.findings[0].places, ["query"]);
}

#[test]
fn a_signed_body_is_refused_rather_than_redacted() {
    let p = policy(PROTECT);
    let body = chat("mail jane@example.com");
    let sigv4 = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=abc";
    let mut r = Request::new("/v1/chat/completions", body.as_bytes());
    r.headers
        .insert("authorization", HeaderValue::from_static(sigv4));
    let d = r.decide(&p);
    assert_eq!(refused(&d), Some(RefuseKind::DataBlocked), "{d:?}");
    let (_, why) = d.refuse.as_ref().unwrap();
    assert!(why.contains("signed (AWS SigV4)"), "says why: {why}");
    assert!(why.contains("block or alert"), "says what to do: {why}");

    // The same body signed with an unsigned payload may be rewritten.
    r.headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    let d = r.decide(&p);
    assert_eq!(refused(&d), None);
    assert!(d.redact);

    // Nothing to redact: a signed request goes as it is.
    let clean = chat("hello");
    let mut r = Request::new("/v1/chat/completions", clean.as_bytes());
    r.headers
        .insert("authorization", HeaderValue::from_static(sigv4));
    assert_eq!(refused(&r.decide(&p)), None);
}
