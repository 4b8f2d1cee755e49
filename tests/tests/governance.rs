//! Policy as code through the real proxy: data rules, model allow-lists,
//! managed credentials, budgets, and reload under load.

use std::{fs, process::Stdio, time::Duration};

use modelgate_tests::standin::{HOST, Setup, by_pid, run_checked, setup, setup_no_usage};
use serde_json::Value;

fn chat(model: &str, content: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]})
        .to_string()
}

/// Runs curl in the test cgroup; returns (pid, status code, body).
fn call(s: &Setup, body: &str, extra: &[&str]) -> (u32, u16, String) {
    let mut cmd = s.curl(&s.agent.ca(), "/v1/chat/completions", Some(body));
    cmd.args(["-o", "-", "-w", "\n%{http_code}"]).args(extra);
    let (pid, out) = run_checked(&mut cmd, "curl");
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (pid, code.parse().expect("status code"), body.to_string())
}

const PROTECT: &str = r#"default_action: redirect
rules:
  - name: protect-data
    action: redirect
    controls:
      data:
        secret: block
        pii: redact
"#;

#[test]
fn a_secret_is_blocked_and_personal_data_is_redacted() {
    let s = setup("data", "127.0.1.9", PROTECT, 1, 0.0, false);
    let (pid, status, body) = call(
        &s,
        &chat("gpt-4o-mini", "use AKIAIOSFODNN7EXAMPLE to deploy"),
        &[],
    );
    assert_eq!(status, 403, "{body}");
    let error: Value = serde_json::from_str(&body).expect("JSON error");
    let message = error["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("protect-data"),
        "names the rule: {message}"
    );
    assert!(
        message.contains("aws-access-key"),
        "names the class: {message}"
    );
    assert!(
        s.server.requests().is_empty(),
        "the secret never left the host"
    );
    let record = s.agent.wait_for_audit("the blocked request", by_pid(pid));
    assert_eq!(record["outcome"], "data_blocked", "{record:#}");
    let alert = wait_for_alert(&s, "data-finding");
    assert!(
        alert["classes"].to_string().contains("aws-access-key"),
        "{alert:#}"
    );

    let prompt = "mail jane.doe@example.com, card 4111 1111 1111 1111, about the order";
    let (pid, status, body) = call(&s, &chat("gpt-4o-mini", prompt), &[]);
    assert_eq!(
        status, 200,
        "redacted requests still get their answer: {body}"
    );
    assert!(body.contains("Hello from the stand-in."), "{body}");
    let seen = s.server.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let sent: Value =
        serde_json::from_str(seen[0]["body"].as_str().unwrap()).expect("valid JSON upstream");
    let content = sent["messages"][0]["content"].as_str().unwrap();
    assert_eq!(
        content, "mail [REDACTED:email], card [REDACTED:credit-card], about the order",
        "what the upstream saw"
    );
    let record = s.agent.wait_for_audit("the redacted request", by_pid(pid));
    assert_eq!(record["redacted"]["email"], 1, "{record:#}");
    assert_eq!(record["redacted"]["credit-card"], 1, "{record:#}");
}

fn wait_for_alert(s: &Setup, kind: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(alert) = s.agent.alerts_now().into_iter().find(|a| a["type"] == kind) {
            return alert;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{kind}` alert; alerts: {:#?}",
            s.agent.alerts_now()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_model_outside_the_allow_list_is_refused() {
    let policy = "default_action: redirect\nrules:\n  - name: small-models-only\n    action: redirect\n    controls:\n      models:\n        allow: [\"gpt-4o-mini*\"]\n";
    let s = setup("models", "127.0.1.19", policy, 1, 0.0, false);
    let (_, status, _) = call(&s, &chat("gpt-4o-mini", "hi"), &[]);
    assert_eq!(status, 200);
    let (pid, status, body) = call(&s, &chat("gpt-4.1", "hi"), &[]);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("small-models-only") && body.contains("gpt-4.1"),
        "{body}"
    );
    let record = s.agent.wait_for_audit("the refused model", by_pid(pid));
    assert_eq!(record["outcome"], "model_refused", "{record:#}");
    assert_eq!(
        s.server.requests().len(),
        1,
        "only the allowed call went upstream"
    );
}

#[test]
fn the_gateway_injects_the_credential_and_flags_apps_own_keys() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("openai");
    fs::write(&key_file, "sk-managed-by-the-gateway-000111\n").unwrap();
    let policy = format!(
        "default_action: redirect\nrules:\n  - name: managed-openai-key\n    action: redirect\n    controls:\n      credential:\n        file: {}\n      managed_keys: true\n",
        key_file.display()
    );
    let s = setup("credential", "127.0.1.29", &policy, 1, 0.0, false);

    // An app that sends no key at all.
    let mut cmd = s.cgroup.command("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(s.agent.ca())
        .args(["--resolve", &format!("{HOST}:443:{}", s.ip)])
        .arg(format!("https://{HOST}/v1/chat/completions"))
        .args([
            "-H",
            "content-type: application/json",
            "--data",
            &chat("gpt-4o-mini", "hi"),
        ]);
    let (_, body) = run_checked(&mut cmd, "curl without a key");
    assert!(body.contains("Hello from the stand-in."), "{body}");
    let seen = s.server.requests();
    assert_eq!(
        seen[0]["headers"]["authorization"], "Bearer sk-managed-by-the-gateway-000111",
        "the upstream got the managed key"
    );
    assert!(s.agent.alerts_now().is_empty(), "no key sent, no alert");

    // An app with a key of its own (the Setup's curl sends one).
    let (_, status, _) = call(&s, &chat("gpt-4o-mini", "hi"), &[]);
    assert_eq!(status, 200);
    let alert = wait_for_alert(&s, "unmanaged-key");
    let fingerprint = alert["key_fingerprint"].as_str().expect("a fingerprint");
    assert!(fingerprint.starts_with("sha256:"), "{alert:#}");
    assert_eq!(alert["identity"]["exe"], "/usr/bin/curl", "{alert:#}");
    assert_eq!(
        s.server.requests()[1]["headers"]["authorization"],
        "Bearer sk-managed-by-the-gateway-000111",
        "the app's key was replaced"
    );
    // Neither key is written anywhere the agent writes.
    for entry in fs::read_dir(s.agent.state_dir()).unwrap().flatten() {
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        assert!(
            !text.contains("sk-test-not-a-real-key"),
            "the app's key leaked into {:?}",
            entry.path()
        );
        assert!(
            !text.contains("sk-managed-by-the-gateway"),
            "the managed key leaked into {:?}",
            entry.path()
        );
    }
    let log = s.agent.log_text();
    assert!(!log.contains("sk-managed-by-the-gateway") && !log.contains("sk-test-not-a-real-key"));
}

#[test]
fn a_budget_lets_n_requests_through_also_across_a_restart() {
    let policy = "default_action: redirect\nrules:\n  - name: three-a-day\n    action: redirect\n    controls:\n      budget:\n        per: exe\n        requests_per_day: 3\n";
    let mut s = setup("budget", "127.0.1.39", policy, 1, 0.0, false);
    for n in 1..=3 {
        let (_, status, body) = call(&s, &chat("gpt-4o-mini", "hi"), &[]);
        assert_eq!(status, 200, "request {n} of 3: {body}");
    }
    let (_, status, body) = call(&s, &chat("gpt-4o-mini", "hi"), &["-D", "/dev/stderr"]);
    assert_eq!(status, 429, "the fourth is over budget: {body}");
    assert!(
        body.contains("three-a-day") && body.contains("requests_per_day"),
        "{body}"
    );

    s.agent.restart();
    let (pid, status, body) = call(&s, &chat("gpt-4o-mini", "hi"), &[]);
    assert_eq!(status, 429, "the budget survived the restart: {body}");
    let record = s.agent.wait_for_audit("the refused request", by_pid(pid));
    assert_eq!(record["outcome"], "budget_exceeded", "{record:#}");
    assert_eq!(
        s.server.requests().len(),
        3,
        "three calls reached the upstream"
    );
}

#[test]
fn a_token_budget_counts_streams_that_did_not_ask_for_usage() {
    // Each default stream (no `stream_options`, as the SDKs send it) costs
    // 11 + 2 tokens; the proxy must learn that to stop the fourth.
    let policy = "default_action: redirect\nrules:\n  - name: thirty-tokens\n    action: redirect\n    controls:\n      budget:\n        per: exe\n        tokens_per_day: 30\n";
    let s = setup("token-budget", "127.0.1.59", policy, 2, 0.0, false);
    let stream =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for n in 1..=3 {
        let (pid, status, body) = call(&s, stream, &[]);
        assert_eq!(status, 200, "stream {n}: {body}");
        assert!(!body.contains("usage"), "the client did not ask: {body}");
        let record = s.agent.wait_for_audit("a default stream", by_pid(pid));
        assert_eq!(record["gen_ai.usage.output_tokens"], 2, "{record:#}");
    }
    let (pid, status, body) = call(&s, stream, &[]);
    assert_eq!(status, 429, "39 tokens used of 30: {body}");
    assert!(body.contains("tokens_per_day"), "{body}");
    let record = s.agent.wait_for_audit("the refused stream", by_pid(pid));
    assert_eq!(record["outcome"], "budget_exceeded", "{record:#}");
}

#[test]
fn a_server_that_reports_no_usage_is_counted_by_estimate_and_its_budget_holds() {
    // An OpenAI-compatible server that ignores `stream_options` and sends no
    // usage: left uncounted, it would be a way around `tokens_per_day`.
    let policy = "default_action: redirect\nrules:\n  - name: forty-tokens\n    action: redirect\n    controls:\n      budget:\n        per: exe\n        tokens_per_day: 40\n";
    let s = setup_no_usage("no-usage", "127.0.1.69", policy, 3);
    let stream =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let asked = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    // o200k_base: "hi" is 1 token, plus 3 for the message and 3 priming the
    // reply; "w0 w1 w2 " (the stand-in's three chunks) is 7.
    for (n, body) in [stream, asked].into_iter().enumerate() {
        let (pid, status, answer) = call(&s, body, &[]);
        assert_eq!(status, 200, "stream {n}: {answer}");
        assert!(answer.contains("w2"), "{answer}");
        let record = s
            .agent
            .wait_for_audit("a stream without usage", by_pid(pid));
        assert_eq!(record["gen_ai.usage.input_tokens"], 7, "{record:#}");
        assert_eq!(record["gen_ai.usage.output_tokens"], 7, "{record:#}");
        assert_eq!(
            record["tokens_estimated"],
            serde_json::json!({"by": "o200k_base", "input": true, "output": true}),
            "{record:#}"
        );
    }
    // A whole answer without usage: "Hello from the stand-in." is 6.
    let (pid, status, answer) = call(&s, &chat("gpt-4o-mini", "hi"), &[]);
    assert_eq!(status, 200, "{answer}");
    let record = s
        .agent
        .wait_for_audit("an answer without usage", by_pid(pid));
    assert_eq!(record["gen_ai.usage.output_tokens"], 6, "{record:#}");
    assert_eq!(record["tokens_estimated"]["output"], true, "{record:#}");
    // 14 + 14 + 13 = 41 tokens of 40: the next call is refused.
    let (pid, status, answer) = call(&s, stream, &[]);
    assert_eq!(status, 429, "41 estimated tokens used of 40: {answer}");
    assert!(answer.contains("tokens_per_day"), "{answer}");
    let record = s.agent.wait_for_audit("the refused stream", by_pid(pid));
    assert_eq!(record["outcome"], "budget_exceeded", "{record:#}");
    assert!(record.get("tokens_estimated").is_none(), "{record:#}");
}

#[test]
fn a_server_that_reports_usage_is_never_estimated() {
    let s = setup(
        "usage-reported",
        "127.0.1.79",
        "default_action: redirect\nrules: []\n",
        3,
        0.0,
        false,
    );
    let stream =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for body in [stream.to_string(), chat("gpt-4o-mini", "hi")] {
        let (pid, status, answer) = call(&s, &body, &[]);
        assert_eq!(status, 200, "{answer}");
        let record = s.agent.wait_for_audit("a reported answer", by_pid(pid));
        assert_eq!(record["gen_ai.usage.input_tokens"], 11, "{record:#}");
        assert!(record.get("tokens_estimated").is_none(), "{record:#}");
    }
}

const RELOAD_CLIENTS: &str = r#"
import http.client, json, ssl, sys, threading, time
ca, ip, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
results, lock = [], threading.Lock()
def worker(n):
    end = time.time() + seconds
    while time.time() < end:
        model = "gpt-4o" if n % 2 else "gpt-4o-mini"
        started = time.time()
        try:
            c = http.client.HTTPSConnection(ip, 443, context=ctx, timeout=10)
            c._tunnel_host = None
            c.sock = ctx.wrap_socket(__import__("socket").create_connection((ip, 443)), server_hostname="api.openai.com")
            body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
            c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", "host": "api.openai.com"})
            r = c.getresponse()
            data = r.read().decode()
            ok = r.status == 200 and "data: [DONE]" in data
            with lock:
                results.append({"model": model, "status": r.status, "complete": ok, "started": started, "ended": time.time()})
        except Exception as e:
            with lock:
                results.append({"model": model, "status": 0, "error": repr(e), "started": started, "ended": time.time()})
threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"#;

#[test]
fn a_policy_change_under_load_applies_to_new_requests_and_breaks_none() {
    // 4 chunks 100 ms apart: each streamed answer is in flight ~0.3 s.
    let s = setup(
        "reload",
        "127.0.1.49",
        "default_action: redirect\nrules: []\n",
        4,
        0.1,
        false,
    );
    let ca = s.agent.ca().display().to_string();
    let clients = s
        .cgroup
        .command("python3")
        .args(["-c", RELOAD_CLIENTS, &ca, s.ip, "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut agent = s.agent;
    fs::write(
        agent.policies_dir().join("policy.yaml"),
        "default_action: redirect\nrules:\n  - name: no-big-models\n    action: redirect\n    controls:\n      models:\n        deny: [\"gpt-4o\"]\n",
    )
    .unwrap();
    // No signal: the agent watches its policy files.
    agent.wait_for_log("policy reloaded", Duration::from_secs(10));
    let reloaded_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let out = clients.wait_with_output().unwrap();
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("client results");
    assert!(results.len() > 10, "enough traffic: {}", results.len());
    let broken: Vec<&Value> = results
        .iter()
        .filter(|r| !(r["status"] == 403 || (r["status"] == 200 && r["complete"] == true)))
        .collect();
    assert!(
        broken.is_empty(),
        "requests failed or were cut off: {broken:#?}"
    );
    let refused_before = results
        .iter()
        .filter(|r| r["status"] == 403 && r["ended"].as_f64().unwrap() < reloaded_at - 1.0)
        .count();
    assert_eq!(refused_before, 0, "nothing was refused before the change");
    let refused_after = results
        .iter()
        .filter(|r| r["model"] == "gpt-4o" && r["started"].as_f64().unwrap() > reloaded_at)
        .all(|r| r["status"] == 403);
    assert!(
        refused_after,
        "every gpt-4o request started after the reload is refused"
    );
    assert!(
        results.iter().any(|r| r["status"] == 403),
        "the new rule took effect during the run"
    );
    agent.stop();
}
