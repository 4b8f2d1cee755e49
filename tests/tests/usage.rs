//! The usage store end to end: real clients of different executables in
//! different cgroups call through the proxy; `modelgate usage` reports each
//! from the store with exact counts.

use std::{collections::BTreeMap, time::Duration};

use modelgate_tests::{
    agent_bin, output,
    standin::{HOST, run_checked, setup},
};
use serde_json::Value;

/// A client that is neither curl nor a copy of it: raw TLS from Python.
const PY_CLIENT: &str = r#"
import socket, ssl, sys
ca, ip, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
ctx = ssl.create_default_context(cafile=ca)
with ctx.wrap_socket(socket.create_connection((ip, 443), timeout=10), server_hostname=sys.argv[4]) as t:
    t.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + sys.argv[4].encode() +
              b"\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-test-not-a-real-key-0000"
              b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while chunk := t.recv(65536):
        data += chunk
status = data.split(b"\r\n", 1)[0]
print(status.decode())
sys.exit(0 if b" 200 " in status else 1)
"#;

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello"}}]}}"#)
}

fn usage(state_dir: &std::path::Path, args: &[&str]) -> Vec<Value> {
    let out = output(
        std::process::Command::new(agent_bin())
            .arg("usage")
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .arg("--json"),
    );
    assert!(
        out.status.success(),
        "modelgate usage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("usage --json is JSON")
}

#[test]
fn usage_by_exe_and_model_counts_each_process_exactly() {
    let s = setup(
        "usage",
        "127.0.0.121",
        "default_action: redirect\nrules: []\n",
        3,
        0.0,
        false,
    );
    let ca = s.agent.ca();
    let dir = tempfile::tempdir().unwrap();
    let curl_copy = dir.path().join("curl-copy");
    std::fs::copy("/usr/bin/curl", &curl_copy).unwrap();
    let (a, b, c) = (
        s.cgroup.child("a"),
        s.cgroup.child("b"),
        s.cgroup.child("c"),
    );

    for _ in 0..2 {
        // `setup`'s arguments, run in another cgroup than its parent one.
        let cmd = s.curl(&ca, "/v1/chat/completions", Some(&chat("gpt-4o-mini")));
        run_checked(a.command("curl").args(cmd.get_args()), "curl");
    }
    let python = std::env::var("MODELGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    run_checked(
        b.command(&python).args([
            "-c",
            PY_CLIENT,
            &ca.display().to_string(),
            s.ip,
            &chat("gpt-4o"),
            HOST,
        ]),
        "python client",
    );
    for _ in 0..3 {
        let cmd = s.curl(&ca, "/v1/chat/completions", Some(&chat("gpt-4.1")));
        run_checked(
            c.command(curl_copy.to_str().unwrap()).args(cmd.get_args()),
            "curl copy",
        );
    }

    let state = s.agent.state_dir();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = usage(&state, &["--by", "exe"]);
        let requests: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        if requests >= 6 || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    // What the audit trail says, per exe: requests, input and output tokens.
    let mut expected: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for record in s.agent.audit_now() {
        let exe = record["identity"]["exe"].as_str().unwrap().to_string();
        let e = expected.entry(exe).or_default();
        e.0 += 1;
        e.1 += record["gen_ai.usage.input_tokens"].as_u64().unwrap();
        e.2 += record["gen_ai.usage.output_tokens"].as_u64().unwrap();
    }
    assert_eq!(expected.len(), 3, "three executables: {expected:?}");
    let got: BTreeMap<String, (u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                (
                    r["requests"].as_u64().unwrap(),
                    r["input_tokens"].as_u64().unwrap(),
                    r["output_tokens"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, expected, "usage --by exe: {rows:#?}");
    assert_eq!(got[curl_copy.to_str().unwrap()], (3, 33, 21));
    assert_eq!(got["/usr/bin/curl"], (2, 22, 14));
    // Sorted by tokens, all governed, latency measured.
    assert_eq!(rows[0]["key"], curl_copy.to_str().unwrap());
    for row in &rows {
        assert_eq!(row["governed"], row["requests"], "{row}");
        assert!(row["p50_ms"].as_f64().unwrap() > 0.0, "{row}");
    }

    let by_model: BTreeMap<String, u64> = usage(&state, &["--by", "model"])
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_model,
        BTreeMap::from([
            ("gpt-4.1".to_string(), 3),
            ("gpt-4o".to_string(), 1),
            ("gpt-4o-mini".to_string(), 2)
        ])
    );

    std::thread::sleep(Duration::from_millis(1500));
    assert!(usage(&state, &["--since", "1s"]).is_empty());
    assert_eq!(usage(&state, &["--since", "1h"]).len(), 3);
}
