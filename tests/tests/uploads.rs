//! Uploads through the real proxy (issue 14, point 5): a body larger than
//! what must be buffered streams upstream with flat memory, each piece
//! scanned before it leaves; a secret anywhere in it — split across the
//! client's writes, in the first or the last bytes, in a field after the
//! file — stops the upload, so the upstream never receives a complete
//! body nor the secret's bytes; form fields name the model and purpose;
//! and an HTTP/2 body over the limit gets a clean 413.
//!
//! The upstream is tests/standin/model_server.py, which reads uploads as
//! they stream and logs their size, hash, completeness and any AWS key
//! they held; the client is tests/standin/upload_client.py, which writes
//! its pieces separately with pauses.

use std::{
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use modelgate_tests::standin::{HOST, Setup, by_pid, setup_with_config, test_python};
use serde_json::{Value, json};

/// Blocks secrets; PII is redacted (which a streamed upload cannot do).
const POLICY: &str = r#"default_action: redirect
rules:
  - name: protect
    action: redirect
    controls:
      data:
        secret: block
        pii: redact
"#;

const KEY: &str = "AKIAQWERTYUIOPASDF12";
const BOUNDARY: &str = "modelgate-test-boundary";
const MIB: usize = 1 << 20;

fn field(name: &str, value: &str) -> String {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

fn file_head(name: &str) -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
}

fn end() -> String {
    format!("\r\n--{BOUNDARY}--\r\n")
}

fn text(t: &str) -> Value {
    json!({ "text": t })
}

fn fill(n: usize) -> Value {
    json!({ "fill": n })
}

struct Sent {
    pid: u32,
    answer: Value,
}

/// Sends `pieces` to `path` through the proxy, from a client in the
/// test's cgroup, `pause` seconds after each piece.
fn upload(s: &Setup, path: &str, pieces: &[Value], chunked: bool, pause: f64) -> Sent {
    let case = json!({
        "host": HOST,
        "ip": s.ip,
        "port": 443,
        "cafile": s.agent.ca(),
        "path": path,
        "headers": {
            "authorization": "Bearer sk-test-not-a-real-key-0000",
            "content-type": format!("multipart/form-data; boundary={BOUNDARY}"),
        },
        "chunked": chunked,
        "pause": pause,
        "pieces": pieces,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/upload_client.py");
    let mut child = s
        .cgroup
        .command(test_python("the standard library").to_str().unwrap())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/standin/upload_client.py");
    let pid = child.id();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(case.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let answer = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "upload_client.py printed no answer: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Sent { pid, answer }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn upload_entries(s: &Setup) -> Vec<Value> {
    s.server
        .requests()
        .into_iter()
        .filter(|e| e.get("upload").is_some())
        .collect()
}

#[test]
fn a_200_mb_upload_streams_through_with_flat_memory() {
    let s = setup_with_config("up-rss", "127.0.14.51", POLICY, 1, 0.0, false, "");
    let agent = s.agent.pid();
    // Warm up: connections, TLS, the classifier's first use.
    let small = [
        text(&field("purpose", "fine-tune")),
        text(&file_head("warm.jsonl")),
        fill(2 * MIB),
        text(&end()),
    ];
    let warm = upload(&s, "/v1/files", &small, false, 0.0);
    assert_eq!(warm.answer["status"], 200, "{}", warm.answer);
    thread::sleep(Duration::from_millis(300));

    let before = rss_kib(agent);
    let peak = Arc::new(AtomicU64::new(before));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (peak.clone(), running.clone());
        thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(agent), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let size = 200 * MIB;
    let head = field("model", "gpt-4o-mini") + &field("purpose", "batch") + &file_head("big.jsonl");
    let pieces = [text(&head), fill(size), text(&end())];
    let started = Instant::now();
    let sent = upload(&s, "/v1/files", &pieces, false, 0.0);
    let took = started.elapsed();
    running.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!(
        "200 MiB upload: {:.1}s, agent RSS {before} KiB before, peak growth {grew} KiB",
        took.as_secs_f64()
    );
    assert_eq!(sent.answer["status"], 200, "{}", sent.answer);
    let total = (head.len() + size + end().len()) as u64;
    let entries = upload_entries(&s);
    let last = entries.last().expect("the stand-in logged the upload");
    assert_eq!(last["upload"]["complete"], true, "{last:#}");
    assert_eq!(last["upload"]["bytes"], total, "{last:#}");
    assert_eq!(
        serde_json::from_str::<Value>(sent.answer["body"].as_str().unwrap()).unwrap()["bytes"],
        total
    );
    assert!(
        grew < 10 * 1024,
        "the agent's RSS grew by {grew} KiB while a 200 MiB upload passed; under 10 MiB expected"
    );
    let record = s
        .agent
        .wait_for_audit("the 200 MiB upload", by_pid(sent.pid));
    assert_eq!(record["outcome"], "ok", "{record:#}");
    assert_eq!(record["request_bytes"], total, "{record:#}");
    assert_eq!(record["request_streamed"], true, "{record:#}");
    assert_eq!(record["gen_ai.request.model"], "gpt-4o-mini", "{record:#}");
    assert_eq!(record["purpose"], "batch", "{record:#}");
}

/// One attack: its pieces, and whether any byte may reach the upstream.
struct Attack {
    name: String,
    pieces: Vec<Value>,
    chunked: bool,
}

fn attacks() -> Vec<Attack> {
    let mut out = Vec::new();
    let head = field("purpose", "fine-tune") + &file_head("notes.txt");
    // The key split at every kind of offset, each half its own write,
    // after more than the buffered head (so the body is streaming).
    for split in [1, 4, 10, 19] {
        for chunked in [false, true] {
            out.push(Attack {
                name: format!("split at {split} (chunked: {chunked})"),
                pieces: vec![
                    text(&head),
                    fill(3 * MIB),
                    text(&format!(" {}", &KEY[..split])),
                    text(&format!("{} ", &KEY[split..])),
                    fill(2 * MIB),
                    text(&end()),
                ],
                chunked,
            });
        }
    }
    // Split one byte a write, around the boundary the scan steps on.
    let mut bytewise = vec![text(&head), fill(2 * MIB - 7)];
    bytewise.extend(KEY.chars().map(|c| text(&c.to_string())));
    bytewise.extend([fill(MIB), text(&end())]);
    out.push(Attack {
        name: "one byte a write".into(),
        pieces: bytewise,
        chunked: false,
    });
    out.push(Attack {
        name: "in the file's first bytes".into(),
        pieces: vec![
            text(&head),
            text(&format!("{KEY}\n")),
            fill(3 * MIB),
            text(&end()),
        ],
        chunked: false,
    });
    out.push(Attack {
        name: "in the very last bytes".into(),
        pieces: vec![
            text(&head),
            fill(3 * MIB),
            text(&format!("\n{KEY}")),
            text(&end()),
        ],
        chunked: true,
    });
    out.push(Attack {
        name: "in a field after the file".into(),
        pieces: vec![
            text(&head),
            fill(3 * MIB),
            text("\r\n"),
            text(&field("note", KEY)),
            text(&format!("--{BOUNDARY}--\r\n")),
        ],
        chunked: false,
    });
    out.push(Attack {
        name: "in a field before the file".into(),
        pieces: vec![
            text(&field("note", KEY)),
            text(&head),
            fill(3 * MIB),
            text(&end()),
        ],
        chunked: false,
    });
    out
}

#[test]
fn a_secret_anywhere_in_a_streamed_upload_stops_it() {
    let s = setup_with_config("up-split", "127.0.14.52", POLICY, 1, 0.0, false, "");
    let mut failures = Vec::new();
    for attack in attacks() {
        let before = upload_entries(&s).len();
        let sent = upload(&s, "/v1/files", &attack.pieces, attack.chunked, 0.15);
        let mut problems = Vec::new();
        let answer = &sent.answer;
        let body: Value = answer["body"]
            .as_str()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        if answer["status"] != 403
            || body["error"]["code"] != "blocked_by_policy"
            || !message.contains("aws-access-key")
        {
            problems.push(format!(
                "the client got {answer}, not the 403 naming the key"
            ));
        }
        let record = s.agent.wait_for_audit(&attack.name, by_pid(sent.pid));
        let named = record["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["class"] == "aws-access-key"));
        if record["outcome"] != "data_blocked" || !named {
            problems.push(format!("audit: {record}"));
        }
        thread::sleep(Duration::from_millis(300));
        for entry in &upload_entries(&s)[before..] {
            let up = &entry["upload"];
            if up["complete"] != false || up["keys"] != json!([]) {
                problems.push(format!("the upstream read {up}"));
            }
        }
        eprintln!(
            "uploads: {} {}",
            if problems.is_empty() { "PASS" } else { "FAIL" },
            attack.name
        );
        if !problems.is_empty() {
            failures.push(format!("{}: {}", attack.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn streamed_uploads_that_cannot_be_scanned_are_refused_under_data_rules() {
    let s = setup_with_config("up-gz", "127.0.14.53", POLICY, 1, 0.0, false, "");
    // A gzip file part past the buffered head: the scan cannot read it.
    let notes = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"notes\"\r\n\r\n");
    let pieces = [
        text(&field("purpose", "fine-tune")),
        text(&notes),
        fill(2 * MIB),
        text("\r\n"),
        text(&file_head("notes.txt.gz")),
        json!({ "hex": "1f8b0800" }),
        fill(MIB),
        text(&end()),
    ];
    let sent = upload(&s, "/v1/files", &pieces, false, 0.0);
    assert_eq!(sent.answer["status"], 403, "{}", sent.answer);
    let record = s.agent.wait_for_audit("the gzip part", by_pid(sent.pid));
    assert_eq!(record["outcome"], "unreadable", "{record:#}");
    for entry in upload_entries(&s) {
        assert_eq!(entry["upload"]["complete"], false, "{entry:#}");
    }
}

#[test]
fn uploads_name_their_model_and_purpose() {
    let policy = "default_action: redirect\nrules:\n  - name: models\n    action: redirect\n    \
                  controls:\n      models:\n        deny: [\"denied-*\"]\n";
    let s = setup_with_config("up-model", "127.0.14.54", policy, 1, 0.0, false, "");
    let small = |model: &str| {
        [
            text(&field("model", model)),
            text(&file_head("a.wav")),
            fill(1000),
            text(&end()),
        ]
    };
    let sent = upload(
        &s,
        "/v1/audio/transcriptions",
        &small("whisper-1"),
        false,
        0.0,
    );
    assert_eq!(sent.answer["status"], 200, "{}", sent.answer);
    let record = s.agent.wait_for_audit("a transcription", by_pid(sent.pid));
    assert_eq!(record["gen_ai.request.model"], "whisper-1", "{record:#}");
    // A model control applies to the form field.
    let sent = upload(
        &s,
        "/v1/audio/transcriptions",
        &small("denied-x"),
        false,
        0.0,
    );
    assert_eq!(sent.answer["status"], 403, "{}", sent.answer);
    let record = s.agent.wait_for_audit("a denied model", by_pid(sent.pid));
    assert_eq!(record["outcome"], "model_refused", "{record:#}");
    // With no data rule a large upload streams unscanned; the model still
    // comes from its head.
    let big = [
        text(&field("model", "whisper-1")),
        text(&file_head("a.wav")),
        fill(4 * MIB),
        text(&end()),
    ];
    let sent = upload(&s, "/v1/audio/transcriptions", &big, false, 0.0);
    assert_eq!(sent.answer["status"], 200, "{}", sent.answer);
    let record = s
        .agent
        .wait_for_audit("a streamed transcription", by_pid(sent.pid));
    assert_eq!(record["request_streamed"], true, "{record:#}");
    assert_eq!(record["gen_ai.request.model"], "whisper-1", "{record:#}");
    let last = upload_entries(&s).pop().unwrap();
    assert_eq!(last["upload"]["complete"], true, "{last:#}");
    assert_eq!(
        record["request_bytes"], last["upload"]["bytes"],
        "{record:#}"
    );
    // And to a streamed one, from its head.
    let big = [
        text(&field("model", "denied-y")),
        text(&file_head("a.wav")),
        fill(4 * MIB),
        text(&end()),
    ];
    let sent = upload(&s, "/v1/audio/transcriptions", &big, true, 0.0);
    assert_eq!(sent.answer["status"], 403, "{}", sent.answer);
    let record = s
        .agent
        .wait_for_audit("a denied streamed model", by_pid(sent.pid));
    assert_eq!(record["outcome"], "model_refused", "{record:#}");
    assert_eq!(record["gen_ai.request.model"], "denied-y", "{record:#}");
}

/// curl, over `http`, sends `size` bytes of JSON, chunked or not; it must
/// show the 413 with the provider's JSON error naming the setting.
fn expect_413(s: &Setup, size: usize, runs: &[(&str, bool)]) {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    let prompt = "x".repeat(size);
    std::fs::write(
        &big,
        format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{prompt}"}}]}}"#),
    )
    .unwrap();
    for &(http, chunked) in runs {
        let ca = s.agent.ca();
        let mut cmd = s.curl(&ca, "/v1/chat/completions", None);
        cmd.args([http, "-H", "content-type: application/json"])
            .args(["-w", "\n%{http_code}", "--data-binary"])
            .arg(format!("@{}", big.display()));
        if chunked {
            cmd.args(["-H", "transfer-encoding: chunked"]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.ends_with("\n413"),
            "{http} (chunked: {chunked}): curl should get the 413, got {} {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_str(stdout.rsplit_once('\n').unwrap().0)
            .unwrap_or_else(|e| panic!("{http}: the 413 carries a JSON error ({e}): {stdout}"));
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("max_buffered_body"), "{body}");
    }
}

#[test]
fn a_body_over_the_default_limit_gets_a_413_over_http2() {
    let s = setup_with_config(
        "up-413d",
        "127.0.14.56",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
        "",
    );
    expect_413(&s, 33 * MIB, &[("--http2", false), ("--http1.1", false)]);
}

#[test]
fn a_body_over_the_configured_limit_gets_a_413_over_http2_and_http1() {
    let config = "client_limits:\n  max_buffered_body: 65536\n";
    let s = setup_with_config(
        "up-413",
        "127.0.14.55",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
        config,
    );
    expect_413(
        &s,
        4 * MIB,
        &[
            ("--http2", false),
            ("--http2", true),
            ("--http1.1", false),
            ("--http1.1", true),
        ],
    );
}
