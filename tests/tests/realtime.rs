//! Realtime sessions through the redirect: the WebSocket upgrade is carried
//! to the model API, admitted by policy before the 101, relayed message by
//! message both ways, and audited as one record with its model, duration,
//! messages and the usage the provider reported. Every client message is
//! judged like a request: a switch to a denied model or a secret in a
//! message ends the session before the model API hears it.

use modelgate_tests::standin::{HOST, Setup, run_checked, setup_realtime, test_python};
use serde_json::Value;

/// Runs `script` with the venv python inside the test cgroup, with a
/// private /etc/hosts naming the stand-in as HOST and the agent's CA
/// trusted: what an app on this host would do.
fn python(s: &Setup, script: &str, what: &str) -> (u32, String) {
    let hosts = s.pki.dir.path().join("client-hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{} {HOST}\n", s.ip)).unwrap();
    let mut cmd = s.cgroup.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(&hosts)
        .arg(test_python("openai and websockets"))
        .args(["-c", script])
        .env("SSL_CERT_FILE", s.agent.ca());
    // A client that fails says what the agent saw meanwhile: a refusal
    // that never reached it is otherwise indistinguishable from a hang.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_checked(&mut cmd, what))) {
        Ok(done) => done,
        Err(panic) => {
            let log = s.agent.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "{what}: the client failed; the agent's last log lines:\n{}\nits last records:\n{:#?}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                s.agent.audit_now().iter().rev().take(3).collect::<Vec<_>>()
            );
            std::panic::resume_unwind(panic)
        }
    }
}

/// What the stand-in logged: the opening, each message, the close.
fn upstream_events(s: &Setup) -> Vec<Value> {
    s.server.requests()
}

fn session_record(s: &Setup, pid: u32) -> Value {
    s.agent.wait_for_audit("the session", |r| {
        r["identity"]["tgid"] == pid && r["session"].is_object()
    })
}

/// A raw WebSocket client (the `websockets` package, as the SDK uses):
/// connects to `path`, then runs `body` with `ws` open.
fn raw_client(path: &str, body: &str) -> String {
    format!(
        r#"
import json, ssl, sys, time
from websockets.sync.client import connect
from websockets.exceptions import InvalidStatus, ConnectionClosed
try:
    ws = connect("wss://{HOST}{path}", additional_headers={{"Authorization": "Bearer sk-test-rt-0000"}},
                 compression="deflate", open_timeout=10)
except InvalidStatus as e:
    print("REFUSED", e.response.status_code, e.response.body.decode(errors="replace"))
    sys.exit(0)
def recv_json():
    return json.loads(ws.recv(timeout=10))
{body}
"#
    )
}

#[test]
fn a_realtime_session_through_the_redirect_is_relayed_and_audited_as_one_record() {
    let s = setup_realtime(
        "rt-sdk",
        "127.0.0.201",
        "default_action: redirect\nrules: []\n",
    );
    // The openai SDK, as an app would use it, with its defaults.
    let script = r#"
import openai
client = openai.OpenAI(api_key="sk-test-rt-0000", base_url="https://api.openai.com/v1")
with client.realtime.connect(model="gpt-realtime") as conn:
    conn.session.update(session={"type": "realtime", "instructions": "be brief", "output_modalities": ["text"]})
    conn.conversation.item.create(item={"type": "message", "role": "user",
                                        "content": [{"type": "input_text", "text": "Say hello"}]})
    conn.response.create()
    text = ""
    for event in conn:
        if event.type == "session.created":
            print("CREATED", event.session.model)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.done":
            print("USAGE", event.response.usage.input_tokens, event.response.usage.output_tokens)
            break
print("TEXT", text.strip())
"#;
    let (pid, out) = python(&s, script, "the openai SDK's realtime session");
    assert!(out.contains("CREATED gpt-realtime"), "{out}");
    assert!(out.contains("USAGE 12 18"), "{out}");
    assert!(out.contains("TEXT w0 w1 w2"), "{out}");

    let record = session_record(&s, pid);
    assert_eq!(record["decision"], "redirect", "{record:#}");
    assert_eq!(record["outcome"], "ok", "{record:#}");
    assert_eq!(record["status"], 101, "{record:#}");
    assert_eq!(record["gen_ai.operation.name"], "realtime", "{record:#}");
    assert_eq!(record["gen_ai.request.model"], "gpt-realtime", "{record:#}");
    assert_eq!(record["path"], "/v1/realtime", "{record:#}");
    assert_eq!(record["gen_ai.usage.input_tokens"], 12, "{record:#}");
    assert_eq!(record["gen_ai.usage.output_tokens"], 18, "{record:#}");
    assert_eq!(
        record["gen_ai.usage.cache_read.input_tokens"], 4,
        "{record:#}"
    );
    assert_eq!(record["session"]["protocol"], "websocket", "{record:#}");
    assert_eq!(record["session"]["client_messages"], 3, "{record:#}");
    // session.created, session.updated, item.created, response.created,
    // three deltas and response.done.
    assert_eq!(record["session"]["upstream_messages"], 8, "{record:#}");
    assert_eq!(record["session"]["closed_by"], "client", "{record:#}");
    assert!(
        record["request_bytes"].as_u64().unwrap() > 100,
        "{record:#}"
    );
    assert!(
        record["response_bytes"].as_u64().unwrap() > 300,
        "{record:#}"
    );
    assert!(record["latency_ms"].as_f64().unwrap() > 0.0, "{record:#}");
    assert!(record["prompt_sha256"].is_string(), "{record:#}");
    // One record for the session, not one per message.
    let all: Vec<Value> = s
        .agent
        .audit_now()
        .into_iter()
        .filter(|r| r["identity"]["tgid"] == pid)
        .collect();
    assert_eq!(all.len(), 1, "{all:#?}");

    let seen = upstream_events(&s);
    let open = seen.iter().find(|e| e["event"] == "open").expect("opened");
    assert_eq!(open["path"], "/v1/realtime?model=gpt-realtime", "{open}");
    assert_eq!(
        open["headers"]["authorization"], "Bearer sk-test-rt-0000",
        "{open}"
    );
    let texts: Vec<&str> = seen
        .iter()
        .filter(|e| e["event"] == "text")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 3, "{seen:#?}");
    assert!(texts[1].contains("Say hello"), "{texts:?}");
}

#[test]
fn binary_messages_pings_and_closes_pass_and_a_compression_offer_is_declined() {
    let s = setup_realtime(
        "rt-raw",
        "127.0.0.202",
        "default_action: redirect\nrules: []\n",
    );
    let body = r#"
print("EXTENSIONS", ws.response.headers.get("Sec-WebSocket-Extensions"))
print("CREATED", recv_json()["type"])
ws.send(bytes(range(256)) * 64)
echo = ws.recv(timeout=10)
print("ECHO", len(echo), echo == bytes(range(256)) * 64)
ws.ping(b"are you there").wait(10)
print("PONG")
ws.send(json.dumps({"type": "response.create"}))
while recv_json()["type"] != "response.done":
    pass
ws.close(code=4001, reason="app done")
print("CLOSED")
"#;
    let (pid, out) = python(
        &s,
        &raw_client("/v1/realtime?model=gpt-realtime-mini", body),
        "a websockets client",
    );
    assert!(out.contains("EXTENSIONS None"), "{out}");
    assert!(out.contains("CREATED session.created"), "{out}");
    assert!(out.contains("ECHO 16384 True"), "{out}");
    assert!(out.contains("PONG"), "{out}");
    assert!(out.contains("CLOSED"), "{out}");
    let record = session_record(&s, pid);
    assert_eq!(record["outcome"], "ok", "{record:#}");
    assert_eq!(record["session"]["close_code"], 4001, "{record:#}");
    assert_eq!(record["session"]["closed_by"], "client", "{record:#}");
    assert_eq!(
        record["gen_ai.request.model"], "gpt-realtime-mini",
        "{record:#}"
    );
    assert_eq!(record["gen_ai.usage.output_tokens"], 18, "{record:#}");
    let seen = upstream_events(&s);
    let open = seen.iter().find(|e| e["event"] == "open").unwrap();
    assert!(
        open["headers"].get("sec-websocket-extensions").is_none(),
        "{open}"
    );
    assert!(
        seen.iter()
            .any(|e| e["event"] == "binary" && e["bytes"] == 16384),
        "{seen:#?}"
    );
    let closed = seen.iter().find(|e| e["event"] == "closed").unwrap();
    assert_eq!(closed["code"], 4001, "{seen:#?}");
}

const POLICY: &str = r#"default_action: redirect
rules:
  - name: governed-realtime
    action: redirect
    controls:
      models:
        deny: ["gpt-4o-realtime*"]
      data:
        secret: block
        pii: redact
"#;

#[test]
fn policy_applies_before_the_upgrade_and_to_every_message() {
    let s = setup_realtime("rt-policy", "127.0.0.203", POLICY);

    // A denied model in the URL: refused before the 101, never opened.
    let (pid, out) = python(
        &s,
        &raw_client(
            "/v1/realtime?model=gpt-4o-realtime-preview",
            "print('OPENED')",
        ),
        "a session for a denied model",
    );
    assert!(out.contains("REFUSED 403"), "{out}");
    assert!(out.contains("gpt-4o-realtime-preview"), "{out}");
    let record = s
        .agent
        .wait_for_audit("the denied session", |r| r["identity"]["tgid"] == pid);
    assert_eq!(record["outcome"], "model_refused", "{record:#}");
    assert_eq!(record["decision"], "refused", "{record:#}");
    // The URL naming the denied model beside an allowed one, however the
    // key is spelled or whichever key the server reads.
    for (query, status, outcome) in [
        (
            "model=gpt-realtime&mod%65l=gpt-4o-realtime-preview",
            "400",
            "model_conflict",
        ),
        (
            "model=gpt-realtime&model=gpt-4o-realtime-preview",
            "400",
            "model_conflict",
        ),
        (
            "model=gpt-realtime&deployment=gpt-4o-realtime-preview",
            "403",
            "model_refused",
        ),
    ] {
        let (pid, out) = python(
            &s,
            &raw_client(&format!("/v1/realtime?{query}"), "print('OPENED')"),
            "a session naming two models",
        );
        assert!(out.contains(&format!("REFUSED {status}")), "{query}: {out}");
        let record = s
            .agent
            .wait_for_audit("the two-model session", |r| r["identity"]["tgid"] == pid);
        assert_eq!(record["outcome"], outcome, "{query}: {record:#}");
    }
    assert!(
        !upstream_events(&s).iter().any(|e| e["event"] == "open"),
        "a refused session reached the model API: {:#?}",
        upstream_events(&s)
    );

    // A switch to a denied model mid-session, at once and after a
    // response: closed with 1008, the switch never relayed.
    for (n, before) in ["", "ws.send(json.dumps({'type': 'response.create'}))\nwhile recv_json()['type'] != 'response.done': pass"]
        .iter()
        .enumerate()
    {
        let body = format!(
            r#"
recv_json()
{before}
ws.send(json.dumps({{"type": "session.update", "session": {{"type": "realtime", "model": "gpt-4o-realtime-preview"}}}}))
try:
    while True:
        ws.recv(timeout=10)
except ConnectionClosed as e:
    print("CLOSED", e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else "")
"#
        );
        let (pid, out) = python(
            &s,
            &raw_client("/v1/realtime?model=gpt-realtime", &body),
            "a session switching to a denied model",
        );
        assert!(out.contains("CLOSED 1008"), "case {n}: {out}");
        let record = session_record(&s, pid);
        assert_eq!(record["outcome"], "model_refused", "case {n}: {record:#}");
        assert_eq!(record["session"]["closed_by"], "modelgate", "{record:#}");
    }

    // A secret in a message, plainly and disguised the ways data controls
    // see through: the session ends, the model API never hears it.
    let secrets = [
        ("plain", "deploy with AKIAIOSFODNN7EXAMPLE now"),
        ("zero-width", "deploy with AKIA\u{200b}IOSFODNN7EXAMPLE now"),
        (
            "base64",
            "run QUtJQUlPU0ZPRE5ON0VYQU1QTEUgYXdzIGtleQ== please",
        ),
    ];
    let cases = secrets
        .iter()
        .map(|(name, text)| (*name, *text, "", "data_blocked"))
        // The same message as a binary frame (Gemini Live reads JSON in
        // either), and a secret in a text frame that is not JSON.
        .chain([(
            "binary",
            "deploy with AKIAIOSFODNN7EXAMPLE now",
            ".encode()",
            "data_blocked",
        )]);
    for (name, text, encode, outcome) in cases {
        let item = serde_json::json!({
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": text}]}
        });
        let body = format!(
            r#"
recv_json()
ws.send({item}{encode})
try:
    while True:
        ws.recv(timeout=10)
except ConnectionClosed as e:
    print("CLOSED", e.rcvd.code if e.rcvd else None)
"#,
            item = serde_json::to_string(&item.to_string()).unwrap()
        );
        let (pid, out) = python(
            &s,
            &raw_client("/v1/realtime?model=gpt-realtime", &body),
            "a session sending a secret",
        );
        assert!(out.contains("CLOSED 1008"), "{name}: {out}");
        let record = session_record(&s, pid);
        assert_eq!(record["outcome"], outcome, "{name}: {record:#}");
        assert_eq!(
            record["findings"][0]["class"], "aws-access-key",
            "{record:#}"
        );
    }
    let body = r#"
recv_json()
ws.send("deploy with AKIAIOSFODNN7EXAMPLE now")
try:
    while True:
        ws.recv(timeout=10)
except ConnectionClosed as e:
    print("CLOSED", e.rcvd.code if e.rcvd else None)
"#;
    let (pid, out) = python(
        &s,
        &raw_client("/v1/realtime?model=gpt-realtime", body),
        "a session sending text that is not JSON",
    );
    assert!(out.contains("CLOSED 1008"), "{out}");
    assert_eq!(session_record(&s, pid)["outcome"], "unreadable");

    // Personal data is redacted in the message the model API gets.
    let body = r#"
recv_json()
ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "mail jane.doe@example.com the summary"}]}}))
print("GOT", recv_json()["type"])
ws.close()
"#;
    let (pid, out) = python(
        &s,
        &raw_client("/v1/realtime?model=gpt-realtime", body),
        "a session sending an email address",
    );
    assert!(out.contains("GOT conversation.item.created"), "{out}");
    let record = session_record(&s, pid);
    assert_eq!(record["outcome"], "ok", "{record:#}");
    assert_eq!(record["redacted"]["email"], 1, "{record:#}");

    let heard: String = upstream_events(&s)
        .iter()
        .filter(|e| e["event"] == "text")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    for needle in [
        "AKIA",
        "QUtJQUlPU0ZPRE5ON0VYQU1QTEU",
        "gpt-4o-realtime",
        "jane.doe@example.com",
    ] {
        assert!(
            !heard.contains(needle),
            "the model API heard `{needle}`: {heard}"
        );
    }
    assert!(heard.contains("the summary"), "{heard}");
}
