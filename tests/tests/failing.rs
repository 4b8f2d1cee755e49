//! The proxy in front of failing model servers: a stream cut by a reset, a
//! stream that stops, a server that never answers, one that answers with
//! bytes that are not HTTP. The client always gets a clean error in the
//! provider's shape, and the audit record says what happened.

use modelgate_tests::{
    output,
    standin::{HOST, Setup, setup_with_config},
};
use serde_json::Value;

/// A chat request over TLS; prints the status line, then the body as read
/// (chunked framing included) on the following lines.
const CLIENT: &str = r#"
import socket, ssl, sys
ca, ip, model, stream = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
body = ('{"model":"%s","stream":%s,"messages":[{"role":"user","content":"hi"}]}' % (model, "true" if stream else "false")).encode()
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(socket.create_connection((ip, 443), timeout=20), server_hostname="api.openai.com")
t.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
data = b""
try:
    while chunk := t.recv(65536):
        data += chunk
except (ConnectionResetError, ssl.SSLError) as e:
    data += b"\n<connection error: " + type(e).__name__.encode() + b">"
head, _, rest = data.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode())
print(rest.decode("utf-8", "replace"))
"#;

fn call(s: &Setup, model: &str, stream: bool) -> (String, String) {
    let out = output(s.cgroup.command("python3").args([
        "-c",
        CLIENT,
        &s.agent.ca().display().to_string(),
        s.ip,
        model,
        if stream { "1" } else { "0" },
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), body.to_string())
}

fn record(s: &Setup, model: &str) -> Value {
    s.agent
        .wait_for_audit(model, |r| r["gen_ai.request.model"] == model)
}

fn setup(name: &str, ip: &'static str) -> Setup {
    setup_with_config(
        name,
        ip,
        "default_action: redirect\nrules: []\n",
        3,
        0.0,
        false,
        "upstream_timeouts:\n  response: 2s\n  idle: 2s\n",
    )
}

/// The `data:` line of the stream's error event, parsed.
fn error_event(body: &str) -> Value {
    let line = body
        .lines()
        .find(|l| l.starts_with("data: {\"error\""))
        .unwrap_or_else(|| panic!("no error event in the stream:\n{body}"));
    serde_json::from_str(&line["data: ".len()..]).unwrap()
}

#[test]
fn a_stream_cut_by_a_reset_ends_with_a_provider_shaped_error_event() {
    let s = setup("fail-reset", "127.0.0.171");
    let (status, body) = call(&s, "fail-reset", true);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("w0 "), "the first chunk got through: {body}");
    let event = error_event(&body);
    assert_eq!(event["error"]["type"], "upstream_error", "{event}");
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke off"),
        "{event}"
    );
    assert!(
        body.contains("\r\n0\r\n\r\n"),
        "the stream ends cleanly after it: {body:?}"
    );
    let audit = record(&s, "fail-reset");
    assert_eq!(audit["outcome"], "upstream_error", "{audit:#}");
    assert!(
        audit["error"].as_str().unwrap().contains("broke off"),
        "{audit:#}"
    );
}

#[test]
fn a_stream_that_stops_is_ended_at_the_idle_timeout() {
    let s = setup("fail-stall", "127.0.0.172");
    let started = std::time::Instant::now();
    let (status, body) = call(&s, "fail-stall", true);
    assert!(
        started.elapsed().as_secs() < 15,
        "cut at the idle timeout, not the stand-in's 30 s"
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let event = error_event(&body);
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing for 2s"),
        "{event}"
    );
    let audit = record(&s, "fail-stall");
    assert_eq!(audit["outcome"], "upstream_timeout", "{audit:#}");
}

#[test]
fn a_server_that_never_answers_gives_a_504_and_one_that_speaks_garbage_a_502() {
    let s = setup("fail-headers", "127.0.0.173");
    let (status, body) = call(&s, "fail-stall-headers", false);
    assert!(status.starts_with("HTTP/1.1 504"), "{status}\n{body}");
    let json: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(json["error"]["type"], "upstream_error", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 2s")
    );
    assert_eq!(
        record(&s, "fail-stall-headers")["outcome"],
        "upstream_timeout"
    );

    let (status, body) = call(&s, "fail-garbage", false);
    assert!(status.starts_with("HTTP/1.1 502"), "{status}\n{body}");
    let json: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(json["error"]["code"], "upstream_unavailable", "{json}");
    let audit = record(&s, "fail-garbage");
    assert_eq!(audit["outcome"], "upstream_error", "{audit:#}");
    assert_eq!(audit["status"], 502, "{audit:#}");
    let _ = HOST;
}

/// Fills the tmpfs under the state directory to the last byte.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    // dd stops with "No space left on device": that is the point.
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    filler
}

/// Requests until one is answered `want` (or gives up after `tries`).
fn until_status(s: &Setup, want: &str, tries: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..tries {
        let (status, body) = call(s, "gpt-4o-mini", false);
        let done = status.contains(want);
        seen.push(format!("{status} {}", body.trim()));
        if done {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    seen
}

fn alerts_in(path: &std::path::Path) -> Vec<Value> {
    modelgate_tests::json_lines(path)
}

#[test]
fn a_full_audit_disk_blocks_requests_alerts_and_recovers_by_itself() {
    let outside = tempfile::tempdir().unwrap();
    let alerts = outside.path().join("alerts.jsonl");
    let config = format!(
        "alerts:\n  fold_window: 0s\n  file:\n    path: {}\n",
        alerts.display()
    );
    let s = modelgate_tests::standin::setup_on_tmpfs("audit-full", "127.0.0.174", &config, "16m");
    let state = s.agent.state_dir();
    assert!(call(&s, "gpt-4o-mini", false).0.contains("200"));

    let filler = fill(&state);
    let seen = until_status(&s, "503", 6);
    let mut refusals = seen.iter().filter(|s| s.contains("503")).count();
    let last = seen.last().unwrap();
    assert!(
        last.contains("503"),
        "requests must be refused once the audit fails: {seen:#?}"
    );
    assert!(last.contains("audit_failure: block"), "{last}");
    let failure = alerts_in(&alerts)
        .into_iter()
        .find(|a| a["type"] == "audit-failure")
        .expect("an audit-failure alert");
    assert_eq!(failure["severity"], "critical", "{failure:#}");

    std::fs::remove_file(&filler).unwrap();
    let seen = until_status(&s, "200", 20);
    assert!(
        seen.last().unwrap().contains("200"),
        "recovers by itself: {seen:#?}"
    );
    refusals += seen.iter().filter(|s| s.contains("503")).count();
    let recovered = alerts_in(&alerts)
        .into_iter()
        .find(|a| a["type"] == "audit-failure" && a["recovered"] == true)
        .expect("a recovery alert");
    assert!(
        recovered["written_late"].as_u64().unwrap() >= 1,
        "{recovered:#}"
    );

    // Every request has its record, none torn: the refusals made while the
    // disk refused waited in memory. How many there were depends on how fast
    // the writer notices the freed space, so count what was answered.
    let audit = s.agent.audit_now();
    let refused = audit
        .iter()
        .filter(|r| r["outcome"] == "audit_unavailable")
        .count();
    assert_eq!(refused, refusals, "{audit:#?}");
    assert!(audit.iter().all(|r| r["identity"]["tgid"].is_u64()));
}

#[test]
fn with_audit_failure_allow_requests_are_served_and_their_records_written_later() {
    let outside = tempfile::tempdir().unwrap();
    let alerts = outside.path().join("alerts.jsonl");
    let config = format!(
        "audit_failure: allow\nalerts:\n  fold_window: 0s\n  file:\n    path: {}\n",
        alerts.display()
    );
    let s = modelgate_tests::standin::setup_on_tmpfs("audit-allow", "127.0.0.175", &config, "16m");
    let state = s.agent.state_dir();
    let filler = fill(&state);
    for _ in 0..5 {
        let (status, body) = call(&s, "gpt-4o-mini", false);
        assert!(
            status.contains("200"),
            "served under allow: {status} {body}"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !alerts_in(&alerts)
        .iter()
        .any(|a| a["type"] == "audit-failure")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no audit-failure alert"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while s.agent.audit_now().len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the kept records were not written: {:#?}",
            s.agent.audit_now()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(s.agent.audit_now().iter().all(|r| r["outcome"] == "ok"));
}
