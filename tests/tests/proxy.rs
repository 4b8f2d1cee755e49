//! The redirect path end to end: real clients, the real kernel redirect,
//! the proxy terminating TLS with its CA, a TLS stand-in upstream.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use modelgate_tests::{
    Agent, AgentSpec, TestCgroup, output, require_root,
    standin::{HOST, ModelServer, Pki, by_pid, run_checked, setup},
};
use serde_json::Value;

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello"}]}"#;

#[test]
fn curl_through_the_proxy_plain_and_streaming_with_audit() {
    let s = setup(
        "curl",
        "127.0.0.9",
        "default_action: redirect\nrules: []\n",
        5,
        0.0,
        false,
    );
    let ca = s.agent.ca();

    let (pid, body) = run_checked(
        &mut s.curl(&ca, "/v1/chat/completions", Some(CHAT)),
        "curl chat",
    );
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from the stand-in."
    );
    let record = s.agent.wait_for_audit("curl's chat", by_pid(pid));
    assert_eq!(record["decision"], "redirect", "{record:#}");
    assert_eq!(record["outcome"], "ok", "{record:#}");
    assert_eq!(record["identity"]["exe"], "/usr/bin/curl", "{record:#}");
    assert_eq!(record["gen_ai.request.model"], "gpt-4o-mini", "{record:#}");
    assert_eq!(record["gen_ai.usage.input_tokens"], 11, "{record:#}");
    assert_eq!(record["gen_ai.usage.output_tokens"], 7, "{record:#}");
    assert_eq!(record["status"], 200, "{record:#}");
    assert_eq!(record["host"], HOST, "{record:#}");
    assert_eq!(record["destination"]["ip"], s.ip, "{record:#}");
    assert!(
        record["prompt_sha256"].is_string(),
        "store_prompts=hash: {record:#}"
    );
    assert!(
        record.get("prompt").is_none(),
        "no prompt text under hash: {record:#}"
    );

    let mut cmd = s.curl(&ca, "/v1/chat/completions", Some(CHAT_STREAM));
    cmd.arg("--http2");
    let (pid, body) = run_checked(&mut cmd, "curl stream");
    assert!(
        body.contains("data: [DONE]"),
        "the whole stream arrived: {body}"
    );
    let record = s.agent.wait_for_audit("curl's stream", by_pid(pid));
    assert_eq!(record["stream"], true, "{record:#}");
    assert_eq!(record["http_version"], "HTTP/2.0", "{record:#}");
    assert_eq!(record["gen_ai.usage.input_tokens"], 11, "{record:#}");
    assert_eq!(record["gen_ai.usage.output_tokens"], 5, "{record:#}");
    assert_eq!(record["outcome"], "ok", "{record:#}");

    // An Anthropic-shaped stream: usage from message_start + message_delta.
    let messages = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (pid, body) = run_checked(
        &mut s.curl(&ca, "/v1/messages", Some(messages)),
        "curl messages",
    );
    assert!(body.contains("message_stop"), "{body}");
    let record = s.agent.wait_for_audit("the messages stream", by_pid(pid));
    assert_eq!(record["gen_ai.operation.name"], "messages", "{record:#}");
    assert_eq!(
        record["gen_ai.request.model"], "claude-sonnet-4-5",
        "{record:#}"
    );
    assert_eq!(record["gen_ai.usage.input_tokens"], 13, "{record:#}");
    assert_eq!(record["gen_ai.usage.output_tokens"], 5, "{record:#}");

    // What reached the upstream: the app's request, on the right host.
    let seen = s.server.requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(seen[0]["headers"]["host"], HOST, "{seen:#?}");
    assert_eq!(seen[0]["body"], CHAT);

    // No key ever reaches the audit trail.
    let audit = std::fs::read_to_string(s.agent.state_dir().join("audit.jsonl")).unwrap();
    assert!(
        !audit.contains("sk-test-not-a-real-key"),
        "a key leaked into the audit: {audit}"
    );
}

#[test]
fn a_stream_reaches_the_client_chunk_by_chunk() {
    // 6 chunks, 300 ms apart: the upstream needs 1.5 s to finish.
    let s = setup(
        "chunks",
        "127.0.0.19",
        "default_action: redirect\nrules: []\n",
        6,
        0.3,
        false,
    );
    let ca = s.agent.ca();
    let mut cmd = s.curl(&ca, "/v1/chat/completions", Some(CHAT_STREAM));
    cmd.arg("-N");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").expect("readable");
    assert!(first.starts_with("data: "), "first SSE line: {first}");
    assert!(
        !s.server.marker.exists(),
        "the client saw the first chunk only after the upstream had sent the last: the proxy buffered"
    );
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(rest.iter().any(|l| l == "data: [DONE]"), "{rest:?}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn openai_python_sdk_through_the_proxy() {
    let python = std::env::var("MODELGATE_TEST_PYTHON").expect(
        "MODELGATE_TEST_PYTHON (a python with the `openai` package) is set by `cargo xtask test`",
    );
    let s = setup(
        "sdk",
        "127.0.0.29",
        "default_action: redirect\nrules: []\n",
        4,
        0.0,
        false,
    );
    let script = r#"
import os, openai
client = openai.OpenAI(api_key="sk-test-sdk-0000000000000000", base_url="https://api.openai.com/v1")
r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
print("PLAIN", r.choices[0].message.content, r.usage.prompt_tokens, r.usage.completion_tokens)
parts = []
for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
    if chunk.usage:
        print("USAGE", chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
print("STREAM", "".join(parts).strip())
# The SDK's defaults: no stream_options, so no usage chunk for the app.
parts, usage = [], []
for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                            stream=True):
    usage.append(chunk.usage)
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
print("DEFAULT", "".join(parts).strip(), "usage seen:", any(u is not None for u in usage))
"#;
    // The SDK resolves api.openai.com itself: give it a private /etc/hosts.
    let hosts = s.pki.dir.path().join("client-hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{} {HOST}\n", s.ip)).unwrap();
    let mut cmd = s.cgroup.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(&hosts)
        .arg(&python)
        .args(["-c", script])
        .env("SSL_CERT_FILE", s.agent.ca());
    let (pid, out) = run_checked(&mut cmd, "the openai SDK");
    assert!(out.contains("PLAIN Hello from the stand-in. 11 7"), "{out}");
    assert!(out.contains("USAGE 11 4"), "{out}");
    assert!(out.contains("STREAM w0 w1 w2 w3"), "{out}");
    assert!(
        out.contains("DEFAULT w0 w1 w2 w3 usage seen: False"),
        "{out}"
    );
    let records: Vec<Value> = loop {
        let records: Vec<Value> = s
            .agent
            .audit_now()
            .into_iter()
            .filter(by_pid(pid))
            .collect();
        if records.len() >= 3 {
            break records;
        }
        s.agent.wait_for_audit("the SDK's calls", by_pid(pid));
        std::thread::sleep(Duration::from_millis(50));
    };
    for record in &records {
        assert_eq!(record["gen_ai.request.model"], "gpt-4o-mini", "{record:#}");
        assert_eq!(record["gen_ai.usage.input_tokens"], 11, "{record:#}");
        let exe = record["identity"]["exe"].as_str().unwrap_or("");
        assert!(exe.contains("python"), "the SDK's process: {record:#}");
    }
    // Both streams counted: the one that asked and the default one.
    let streams: Vec<&Value> = records.iter().filter(|r| r["stream"] == true).collect();
    assert_eq!(streams.len(), 2, "{records:#?}");
    for record in streams {
        assert_eq!(record["gen_ai.usage.output_tokens"], 4, "{record:#}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["stream"] == false && r["gen_ai.usage.output_tokens"] == 7)
    );
}

#[test]
fn a_direct_connection_to_the_proxy_port_is_refused_and_reported() {
    let s = setup(
        "direct",
        "127.0.0.39",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
    );
    let port = s.agent.proxy_port();
    let mut cmd = s.cgroup.command("curl");
    cmd.args(["-sS", "--max-time", "5", "-k"])
        .arg(format!("https://127.0.0.1:{port}/v1/models"));
    let out = output(&mut cmd);
    assert!(
        !out.status.success(),
        "the proxy must not serve a direct connection"
    );
    let record = s
        .agent
        .wait_for_audit("the refusal", |r| r["outcome"] == "no_redirect_record");
    assert_eq!(record["decision"], "refused", "{record:#}");
    assert!(
        s.server.requests().is_empty(),
        "nothing reached the upstream"
    );
}

#[test]
fn the_proxys_upstream_connection_is_not_redirected_again() {
    // The agent runs inside the cgroup it governs: its upstream connect
    // to the endpoint meets its own hook and must pass untouched.
    let s = setup(
        "noloop",
        "127.0.0.49",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        true,
    );
    let (pid, _) = run_checked(
        &mut s.curl(&s.agent.ca(), "/v1/chat/completions", Some(CHAT)),
        "curl chat",
    );
    let record = s.agent.wait_for_audit("the request", by_pid(pid));
    assert_eq!(record["outcome"], "ok", "{record:#}");
    assert_eq!(s.server.requests().len(), 1, "exactly one request upstream");
    let mut agent = s.agent;
    let log = agent.stop();
    let counters = log
        .lines()
        .find(|l| l.contains("final counters"))
        .unwrap_or_else(|| panic!("no final counters in {log}"));
    assert!(
        counters.contains("agent_own=1"),
        "the proxy's own connect was seen and exempted: {counters}"
    );
    assert!(
        counters.contains("redirected=1"),
        "only the client's connect was redirected: {counters}"
    );
}

#[test]
fn passthrough_works_for_a_client_that_does_not_trust_the_ca() {
    let s = setup(
        "passthrough",
        "127.0.0.59",
        "default_action: passthrough\nrules: []\n",
        1,
        0.0,
        false,
    );
    // The client trusts only the upstream's CA: it would reject modelgate's.
    let (pid, body) = run_checked(
        &mut s.curl(&s.pki.ca, "/v1/chat/completions", Some(CHAT)),
        "curl through passthrough",
    );
    assert!(body.contains("Hello from the stand-in."), "{body}");
    let record = s.agent.wait_for_audit("the passthrough", by_pid(pid));
    assert!(
        s.agent
            .alerts_now()
            .iter()
            .all(|a| a["type"] != "ca-untrusted"),
        "passthrough never shows the client modelgate's certificate"
    );
    assert_eq!(record["decision"], "passthrough", "{record:#}");
    assert_eq!(record["host"], HOST, "{record:#}");
    assert!(
        record["response_bytes"].as_u64().unwrap_or(0) > 0,
        "{record:#}"
    );
}

#[test]
fn upstream_down_gives_a_provider_shaped_502_and_a_record() {
    let mut s = setup(
        "down",
        "127.0.0.69",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
    );
    s.server.stop(); // nothing listens on the endpoint any more
    let mut cmd = s.curl(&s.agent.ca(), "/v1/chat/completions", Some(CHAT));
    cmd.args(["-o", "-", "-w", "\n%{http_code}"]);
    let child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "502", "{text}");
    let error: Value = serde_json::from_str(body).expect("a JSON error body");
    assert_eq!(
        error["error"]["type"], "upstream_error",
        "OpenAI's error shape: {error:#}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("could not reach"),
        "{error:#}"
    );
    let record = s.agent.wait_for_audit("the failed request", by_pid(pid));
    assert_eq!(record["outcome"], "upstream_error", "{record:#}");
    assert_eq!(record["status"], 502, "{record:#}");
}

#[test]
fn getpeername_reports_the_original_destination() {
    let s = setup(
        "peername",
        "127.0.0.79",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
    );
    let script =
        "import socket,sys\ns=socket.create_connection((sys.argv[1],443))\nprint(s.getpeername())";
    let (_, out) = run_checked(
        s.cgroup.command("python3").args(["-c", script, s.ip]),
        "python getpeername",
    );
    assert_eq!(
        out.trim(),
        format!("('{}', 443)", s.ip),
        "the redirect is invisible"
    );
}

#[test]
fn a_client_that_leaves_mid_stream_cancels_the_upstream_request() {
    // 6 chunks, 400 ms apart; the client gives up after about one second.
    let s = setup(
        "cancel",
        "127.0.0.89",
        "default_action: redirect\nrules: []\n",
        6,
        0.4,
        false,
    );
    let mut cmd = s.curl(&s.agent.ca(), "/v1/chat/completions", Some(CHAT_STREAM));
    cmd.args(["-N", "--max-time", "1"]);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(28), "curl gave up (timeout)");
    let record = s.agent.wait_for_audit("the abandoned stream", by_pid(pid));
    assert_eq!(record["outcome"], "client_disconnected", "{record:#}");
    assert!(
        record["stream_events"].as_u64().unwrap_or(0) >= 1,
        "{record:#}"
    );
    // The upstream would have finished after 2 s: it never gets there,
    // because the proxy closed its side when the client went away.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !s.server.marker.exists(),
        "the upstream kept streaming to nobody: the proxy did not cancel it"
    );
}

#[test]
fn a_client_that_refuses_the_proxys_certificate_raises_ca_untrusted() {
    let s = setup(
        "untrusted",
        "127.0.0.109",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
    );
    // Trusts only the upstream's CA, as a pinning client would.
    let mut cmd = s.curl(&s.pki.ca, "/v1/chat/completions", Some(CHAT));
    let out = modelgate_tests::output(&mut cmd);
    assert!(
        !out.status.success(),
        "curl must reject modelgate's certificate"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let alert = loop {
        if let Some(alert) = s
            .agent
            .alerts_now()
            .into_iter()
            .find(|a| a["type"] == "ca-untrusted")
        {
            break alert;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ca-untrusted alert: {:#?}",
            s.agent.alerts_now()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(alert["host"], HOST, "{alert:#}");
    assert_eq!(alert["identity"]["exe"], "/usr/bin/curl", "{alert:#}");
    assert!(
        s.server.requests().is_empty(),
        "nothing reached the upstream"
    );
}

/// Parses a scrape with the official Prometheus client's text parser and
/// prints `name{labels} value` lines for the samples asked for.
const SCRAPE: &str = r#"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        if sample.name in ("modelgate_requests_total", "modelgate_gen_ai_usage_tokens_total"):
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            print(f"{sample.name} {labels} {sample.value:g}")
"#;

#[test]
fn metrics_are_scraped_and_match_the_audit_trail() {
    let python = std::env::var("MODELGATE_TEST_PYTHON")
        .expect("MODELGATE_TEST_PYTHON (with prometheus-client) is set by `cargo xtask test`");
    let s = setup(
        "metrics",
        "127.0.0.119",
        "default_action: redirect\nrules: []\n",
        3,
        0.0,
        false,
    );
    for _ in 0..3 {
        run_checked(
            &mut s.curl(&s.agent.ca(), "/v1/chat/completions", Some(CHAT)),
            "curl chat",
        );
    }
    run_checked(
        &mut s.curl(&s.agent.ca(), "/v1/chat/completions", Some(CHAT_STREAM)),
        "curl stream",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.agent.audit_now().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "audit records: {:#?}",
            s.agent.audit_now()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out =
        output(std::process::Command::new(&python).args(["-c", SCRAPE, &s.agent.metrics_addr()]));
    let scraped = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scraped}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = s.agent.audit_now();
    let sum = |name: &str, filter: &str| -> f64 {
        scraped
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(
        sum("modelgate_requests_total", "provider=openai"),
        audit.len() as f64,
        "{scraped}"
    );
    let tokens =
        |field: &str| -> f64 { audit.iter().map(|r| r[field].as_f64().unwrap_or(0.0)).sum() };
    assert_eq!(
        sum("modelgate_gen_ai_usage_tokens_total", "type=input"),
        tokens("gen_ai.usage.input_tokens"),
        "{scraped}"
    );
    assert_eq!(
        sum("modelgate_gen_ai_usage_tokens_total", "type=output"),
        tokens("gen_ai.usage.output_tokens"),
        "{scraped}"
    );
    assert!(scraped.contains("workload=/usr/bin/curl"), "{scraped}");
}

#[test]
fn each_request_goes_to_its_own_connections_original_destination() {
    // Two addresses of one host, each with its own stand-in: whatever is
    // pooled for the host, a connection made to one address is forwarded
    // to that address and no other.
    require_root();
    let cgroup = TestCgroup::new("two-addresses");
    let pki = Pki::new(&[HOST]);
    let first = ModelServer::start(&pki, "127.0.0.101", 443, 1, 0.0);
    let second = ModelServer::start(&pki, "127.0.0.102", 443, 1, 0.0);
    let endpoints = format!(
        "providers:\n  - name: openai\n    api: openai\n    hosts: [{HOST}]\n    addresses: [127.0.0.101, 127.0.0.102]\n"
    );
    let upstream_ca = pki.ca.display().to_string();
    let args = ["--proxy-port", "0", "--upstream-ca", upstream_ca.as_str()];
    let mut spec = AgentSpec::new(&cgroup, &endpoints, "default_action: redirect\nrules: []\n");
    spec.extra_args = &args;
    let agent = Agent::start(spec);
    let ca = agent.ca();
    let send = |ip: &str, round: usize| {
        let mut cmd = cgroup.command("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("{HOST}:443:{ip}")])
            .arg(format!("https://{HOST}/v1/chat/completions"))
            .args(["-H", "authorization: Bearer sk-test-not-a-real-key-0000"])
            .args(["-H", &format!("x-sent-to: {ip} {round}")])
            .args(["-H", "content-type: application/json", "--data", CHAT]);
        run_checked(&mut cmd, &format!("curl to {ip}")).0
    };
    let mut sent = Vec::new();
    for round in 0..3 {
        for ip in ["127.0.0.101", "127.0.0.102"] {
            sent.push((ip, send(ip, round)));
        }
    }
    for (ip, pid) in &sent {
        let record = agent.wait_for_audit("each request", by_pid(*pid));
        assert_eq!(record["decision"], "redirect", "{record:#}");
        assert_eq!(record["destination"]["ip"], *ip, "{record:#}");
        assert_eq!(record["outcome"], "ok", "{record:#}");
    }
    for (server, ip) in [(&first, "127.0.0.101"), (&second, "127.0.0.102")] {
        let seen: Vec<String> = server
            .requests()
            .iter()
            .map(|r| {
                r["headers"]["x-sent-to"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        let expected: Vec<String> = (0..3).map(|round| format!("{ip} {round}")).collect();
        assert_eq!(seen, expected, "what {ip}'s stand-in was sent");
    }
}

#[test]
fn a_stream_that_did_not_ask_for_usage_is_counted_and_reaches_the_client_unchanged() {
    let s = setup(
        "stream-usage",
        "127.0.0.104",
        "default_action: redirect\nrules: []\n",
        3,
        0.0,
        false,
    );
    let body =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    // Straight to the stand-in, from outside the governed cgroup: what the
    // client would get without modelgate.
    let direct = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&s.pki.ca)
            .args(["--resolve", &format!("{HOST}:443:{}", s.ip)])
            .arg(format!("https://{HOST}/v1/chat/completions"))
            .args(["-H", "content-type: application/json", "--data", body]),
    );
    assert!(direct.status.success(), "{direct:?}");
    let ca = s.agent.ca();
    for http in ["--http1.1", "--http2"] {
        let mut cmd = s.curl(&ca, "/v1/chat/completions", Some(body));
        cmd.arg(http);
        let (pid, proxied) = run_checked(&mut cmd, "a default stream");
        assert_eq!(
            proxied,
            String::from_utf8_lossy(&direct.stdout),
            "{http}: the client's stream is what the stand-in sends a client that did not ask"
        );
        let record = s.agent.wait_for_audit("the default stream", by_pid(pid));
        assert_eq!(record["stream"], true, "{record:#}");
        assert_eq!(record["gen_ai.usage.input_tokens"], 11, "{record:#}");
        assert_eq!(record["gen_ai.usage.output_tokens"], 3, "{record:#}");
        assert_eq!(record["outcome"], "ok", "{record:#}");
    }
    // The upstream was asked for the usage the proxy then hid.
    let seen = s.server.requests();
    let asked: Vec<Value> = seen
        .iter()
        .skip(1)
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(asked.len(), 2, "{seen:#?}");
    for request in asked {
        assert_eq!(
            request["stream_options"]["include_usage"], true,
            "{request}"
        );
        assert_eq!(request["messages"][0]["content"], "hi", "{request}");
    }
}
