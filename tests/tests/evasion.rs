//! The evasion corpus (issue 12) through the real proxy: with `data:
//! {secret: block, pii: redact}`, a secret never reaches the upstream — the
//! proxy decides on the request the upstream will interpret, or it does not
//! forward it.
//!
//! One agent, one lenient stand-in upstream (tests/standin/lenient_server.py,
//! which logs everything a forgiving server would read), and the corpus of
//! tests/tests/evasion/corpus.rs sent one client process per case. Every
//! case is checked and all failures are reported together at the end, then
//! one last check over everything the stand-in read: no corpus key, in any
//! form it decoded.

#[path = "evasion/corpus.rs"]
mod corpus;

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use corpus::{Case, Expect, Finding};
use modelgate_tests::standin::{HOST, Setup, setup_lenient, test_python};
use serde_json::{Value, json};

const POLICY: &str = r#"default_action: redirect
rules:
  - name: no-files
    match:
      path: ["/v1/files*", "/v1/files/**"]
    action: block
  - name: protect
    action: redirect
    controls:
      models:
        deny: ["denied-*"]
      max_prompt_bytes: 2000
      data:
        secret: block
        pii: redact
"#;

/// The header naming the case, so the stand-in's log says who sent what.
const CASE_HEADER: &str = "x-evasion-case";

#[test]
fn no_evasion_gets_a_secret_past_the_proxy() {
    let corpus = corpus::corpus();
    for (i, case) in corpus.iter().enumerate() {
        assert!(
            case.name.is_ascii() && corpus[..i].iter().all(|c| c.name != case.name),
            "case names go in a header and name log entries: ASCII and unique ({})",
            case.name
        );
    }
    let s = setup_lenient("evasion", "127.0.3.12", POLICY);
    let python = test_python("brotli and zstandard");
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/evasion_client.py");

    let mut failures = Vec::new();
    for case in &corpus {
        let problems = run_case(&s, &python, &client, case);
        if problems.is_empty() {
            eprintln!("evasion: PASS {}", case.name);
        } else {
            eprintln!("evasion: FAIL {}: {}", case.name, problems.join("; "));
            failures.push(format!(
                "{}:\n      {}",
                case.name,
                problems.join("\n      ")
            ));
        }
    }

    let passed = corpus.len() - failures.len();
    let leaks = leaked_keys(&s, &corpus);
    // Last, so its requests are not counted as leaks: every case sent
    // straight to the stand-in, to prove it reads what each case hides.
    failures.extend(calibrate(&s, &python, &client, &corpus));
    assert!(
        failures.is_empty() && leaks.is_empty(),
        "{passed} of {} evasion cases passed; {} failures:\n  - {}\n\n\
         corpus keys the upstream read ({}):\n  - {}",
        corpus.len(),
        failures.len(),
        failures.join("\n  - "),
        leaks.len(),
        leaks.join("\n  - "),
    );
}

/// Sends every case straight to the stand-in, from outside the test
/// cgroup (so not through the proxy), and checks the stand-in reads what
/// the case hides: its key, its personal data, its marker. A case the
/// stand-in cannot read would prove nothing about the proxy.
fn calibrate(s: &Setup, python: &Path, client: &Path, corpus: &[Case]) -> Vec<String> {
    let before = s.server.requests().len();
    let mut failures = Vec::new();
    for case in corpus {
        let wanted = match (&case.key, &case.expect) {
            (Some(key), _) => key.as_str(),
            (None, Expect::Redacted { original, .. }) => original,
            (None, Expect::Passes { marker }) => marker,
            (None, Expect::Refused { .. }) => continue,
        };
        let mut cmd = std::process::Command::new(python);
        let answer = send_with(&mut cmd, s, client, case, &s.pki.ca, "calibrate: ");
        let entries: Vec<Value> = s.server.requests().split_off(before);
        let label = format!("calibrate: {}", case.name);
        let read = entries
            .iter()
            .filter(|e| e["case"] == label.as_str())
            .any(|e| {
                e["akia"].to_string().contains(wanted)
                    || texts_of(e).iter().any(|t| t.contains(wanted))
            });
        if !read {
            failures.push(format!(
                "{label}: the stand-in, sent this case directly, did not read `{wanted}` \
                 (answer {:?}{}): the case proves nothing until it does",
                answer.status,
                answer.error.map(|e| format!(", {e}")).unwrap_or_default()
            ));
        }
    }
    failures
}

/// What the client saw.
struct Answer {
    pid: u32,
    status: Option<u64>,
    modelgate_error: bool,
    body: String,
    error: Option<String>,
}

fn send(s: &Setup, python: &Path, client: &Path, case: &Case) -> Answer {
    let mut cmd = s
        .cgroup
        .command(python.to_str().expect("a UTF-8 python path"));
    send_with(&mut cmd, s, client, case, &s.agent.ca(), "")
}

/// Runs the client `cmd` (a python) for `case`, trusting `ca`, with the
/// case header `label` + the case's name.
fn send_with(
    cmd: &mut Command,
    s: &Setup,
    client: &Path,
    case: &Case,
    ca: &Path,
    label: &str,
) -> Answer {
    let mut headers: Vec<(String, String)> = case.request.headers.clone();
    headers.push((CASE_HEADER.into(), format!("{label}{}", case.name)));
    let spec = json!({
        "method": case.request.method,
        "path": case.request.path,
        "headers": headers,
        "body": case.request.body,
    });
    let child = cmd
        .arg(client)
        .arg(ca)
        .arg(s.ip)
        .arg(HOST)
        .arg(spec.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the evasion client");
    let pid = child.id();
    let out = child
        .wait_with_output()
        .expect("wait for the evasion client");
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        json!({ "error": format!(
            "the client failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )})
    });
    Answer {
        pid,
        status: parsed["status"].as_u64(),
        modelgate_error: parsed["headers"]["x-modelgate-error"] == "1",
        body: parsed["body"].as_str().unwrap_or("").to_string(),
        error: parsed["error"].as_str().map(str::to_string),
    }
}

/// The audit records of the client `pid`, waiting up to 5 s for the first.
fn audit_of(s: &Setup, pid: u32) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records: Vec<Value> = s
            .agent
            .audit_now()
            .into_iter()
            .filter(|r| r["identity"]["pid"] == pid)
            .collect();
        if !records.is_empty() || Instant::now() > deadline {
            return records;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What the stand-in logged for `case`.
fn upstream_of(s: &Setup, case: &Case) -> Vec<Value> {
    s.server
        .requests()
        .into_iter()
        .filter(|r| r["case"] == case.name)
        .collect()
}

fn texts_of(entry: &Value) -> Vec<&str> {
    let mut texts: Vec<&str> = entry["seen"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    texts.extend(entry["raw_body"].as_str());
    texts
}

fn short(text: &str) -> String {
    let cut: String = text.chars().take(240).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Every way `case` went wrong; empty when it held.
fn run_case(s: &Setup, python: &Path, client: &Path, case: &Case) -> Vec<String> {
    let answer = send(s, python, client, case);
    let mut problems = Vec::new();
    if let Some(error) = &answer.error {
        problems.push(format!("no HTTP answer: {error}"));
    }
    let records = audit_of(s, answer.pid);
    let upstream = upstream_of(s, case);
    let record = records.first();
    if records.len() > 1 {
        problems.push(format!(
            "{} audit records for one request (expected one)",
            records.len()
        ));
    }
    match &case.expect {
        Expect::Refused { outcomes, finding } => {
            if let Some(status @ 200..=299) = answer.status {
                // Let through: one line says it all.
                let read_key = case.key.as_ref().is_some_and(|key| {
                    upstream
                        .iter()
                        .any(|e| e["akia"].to_string().contains(key.as_str()))
                });
                problems.push(format!(
                    "FORWARDED: answered {status}, audit {}/{}, the upstream got {} request(s){}",
                    record.map_or(Value::Null, |r| r["decision"].clone()),
                    record.map_or(Value::Null, |r| r["outcome"].clone()),
                    upstream.len(),
                    if read_key { " and read the key" } else { "" },
                ));
                return problems;
            }
            if let Some(status) = answer.status
                && !(400..500).contains(&status)
            {
                problems.push(format!(
                    "answered {status} (expected a 4xx refusal): {}",
                    short(&answer.body)
                ));
            }
            if answer.status.is_some() && !answer.modelgate_error {
                problems.push("no `x-modelgate-error: 1` header on the answer".into());
            }
            match record {
                None => problems.push("no audit record for the request".into()),
                Some(record) => {
                    check_refusal_record(record, outcomes, finding, &mut problems);
                }
            }
            if !upstream.is_empty() {
                problems.push(format!(
                    "reached the upstream ({} request(s), as {})",
                    upstream.len(),
                    upstream[0]["raw_path"]
                ));
            }
        }
        Expect::Redacted { class, original } => {
            if answer.status != Some(200) {
                problems.push(format!(
                    "answered {:?} (expected 200, redacted and forwarded): {}",
                    answer.status,
                    short(&answer.body)
                ));
            }
            match record {
                None => problems.push("no audit record for the request".into()),
                Some(record) => {
                    if record["redacted"][class] != 1 {
                        problems.push(format!(
                            "audit `redacted` is {} (expected {{\"{class}\": 1}})",
                            record["redacted"]
                        ));
                    }
                }
            }
            if upstream.len() != 1 {
                problems.push(format!(
                    "the upstream got {} request(s) (expected one)",
                    upstream.len()
                ));
            }
            let replacement = format!("[REDACTED:{class}]");
            for entry in &upstream {
                let texts = texts_of(entry);
                if texts.iter().any(|t| t.contains(original)) {
                    problems.push(format!("the upstream read `{original}` unredacted"));
                }
                if !texts.iter().any(|t| t.contains(&replacement)) {
                    problems.push(format!("the upstream did not read `{replacement}`"));
                }
            }
        }
        Expect::Passes { marker } => {
            if answer.status != Some(200) || answer.modelgate_error {
                problems.push(format!(
                    "a benign request was not answered 200 by the upstream: {:?} {}",
                    answer.status,
                    short(&answer.body)
                ));
            }
            match record {
                None => problems.push("no audit record for the request".into()),
                Some(record) if record["decision"] == "refused" => problems.push(format!(
                    "a benign request was refused: {}",
                    record["outcome"]
                )),
                Some(_) => {}
            }
            if upstream.is_empty() {
                problems.push("the upstream never got it".into());
            }
            for entry in &upstream {
                if !texts_of(entry).iter().any(|t| t.contains(marker)) {
                    problems.push(format!(
                        "the upstream did not read `{marker}` (errors: {})",
                        entry["errors"]
                    ));
                }
            }
        }
    }
    problems
}

fn check_refusal_record(
    record: &Value,
    outcomes: &[&str],
    finding: &Finding,
    problems: &mut Vec<String>,
) {
    if record["decision"] != "refused" {
        problems.push(format!(
            "audit decision is {} (expected \"refused\")",
            record["decision"]
        ));
    }
    let outcome = record["outcome"].as_str().unwrap_or("");
    if !outcomes.contains(&outcome) {
        problems.push(format!(
            "audit outcome is {} (expected one of {outcomes:?})",
            record["outcome"]
        ));
    }
    if outcome != "data_blocked" {
        return;
    }
    let Some(findings) = record["findings"].as_array() else {
        problems.push(format!(
            "the data_blocked audit record has no `findings` list: {}",
            record["findings"]
        ));
        return;
    };
    let class_ok = |f: &&Value| finding.class.is_none_or(|c| f["class"] == c);
    let place_ok = |f: &&Value| {
        finding.place.is_none_or(|p| {
            f["where"].as_array().is_some_and(|w| {
                w.iter()
                    .any(|w| w.as_str().is_some_and(|w| w.starts_with(p)))
            })
        })
    };
    if !findings.iter().any(|f| class_ok(&f) && place_ok(&f)) {
        problems.push(format!(
            "no finding of class {} with a `where` starting {:?}: findings {}",
            finding.class.unwrap_or("(any)"),
            finding.place.unwrap_or("(any)"),
            Value::from(findings.clone())
        ));
    }
}

/// Every corpus key the stand-in read, in any request, in any form it
/// decoded (its `seen` texts, its `akia` list) or in the raw request.
fn leaked_keys(s: &Setup, corpus: &[Case]) -> Vec<String> {
    let mut leaks = Vec::new();
    for entry in s.server.requests() {
        let mut places: Vec<String> = texts_of(&entry).into_iter().map(str::to_string).collect();
        places.push(entry["raw_path"].to_string());
        places.push(entry["headers"].to_string());
        places.push(entry["akia"].to_string());
        for case in corpus {
            let Some(key) = &case.key else { continue };
            if places.iter().any(|p| p.contains(key.as_str())) {
                leaks.push(format!(
                    "{key} (case `{}`) in the request logged for case `{}`",
                    case.name,
                    entry["case"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    leaks
}
