//! Cleartext HTTP: a catalog host on port 80 is governed like on 443
//! (record, block, redirect through the plain-HTTP proxy path), and the
//! first request to an address nobody told us about is judged by its Host
//! as a ClientHello is by its SNI, however the Host is written or sent.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use modelgate_tests::{
    Agent, AgentSpec, TestCgroup, answer_any_byte, output, require_root, send_parts,
    standin::{HOST, ModelServer, Pki, by_pid, run_checked},
};
use serde_json::{Value, json};

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#;

/// The catalog as shipped says nothing of ports: 443 and 80 by default.
fn openai_at(ip: &str) -> String {
    format!(
        "providers:\n  - name: openai\n    api: openai\n    hosts: [{HOST}]\n    addresses: [{ip}]\n"
    )
}

fn curl_http(cgroup: &TestCgroup, ip: &str, path: &str, body: Option<&str>) -> Command {
    let mut cmd = cgroup.command("curl");
    cmd.args(["-sS", "--max-time", "10"])
        .args(["--resolve", &format!("{HOST}:80:{ip}")])
        .arg(format!("http://{HOST}{path}"))
        .args(["-H", "authorization: Bearer sk-test-not-a-real-key-0000"]);
    if let Some(body) = body {
        cmd.args(["-H", "content-type: application/json", "--data", body]);
    }
    cmd
}

fn agent(cgroup: &TestCgroup, ip: &str, policy: &str) -> Agent {
    let endpoints = openai_at(ip);
    let mut spec = AgentSpec::new(cgroup, &endpoints, policy);
    spec.extra_args = &["--proxy-port", "0"];
    Agent::start(spec)
}

#[test]
fn a_catalog_host_on_port_80_is_recorded_blocked_and_redirected_through_the_plain_proxy() {
    require_root();
    let ip = "127.0.0.70";
    let pki = Pki::new(&[HOST]);
    let server = ModelServer::plain(&pki, ip, 80, 1);

    // monitor: the connect is recorded, with its port.
    let cgroup = TestCgroup::new("http80-monitor");
    let mg = agent(&cgroup, ip, "default_action: monitor\nrules: []\n");
    let (pid, _) = run_checked(
        &mut curl_http(&cgroup, ip, "/v1/chat/completions", Some(CHAT)),
        "curl over http under monitor",
    );
    let event = mg.wait_for_event("the port-80 connect", |e| e["identity"]["pid"] == pid);
    assert_eq!(event["action"], "monitor", "{event:#}");
    assert_eq!(event["destination"]["port"], 80, "{event:#}");
    assert_eq!(event["gen_ai.provider.name"], "openai", "{event:#}");
    drop(mg);

    // block: connect() fails with EPERM; the server hears nothing.
    let before = server.requests().len();
    let cgroup = TestCgroup::new("http80-block");
    let mg = agent(&cgroup, ip, "default_action: block\nrules: []\n");
    let out = output(&mut curl_http(
        &cgroup,
        ip,
        "/v1/chat/completions",
        Some(CHAT),
    ));
    assert!(!out.status.success(), "curl must fail under block");
    let event = mg.wait_for_event("the blocked port-80 connect", |e| {
        e["destination"]["port"] == 80 && e["action"] == "block"
    });
    assert_eq!(event["identity"]["exe"], "/usr/bin/curl", "{event:#}");
    assert_eq!(server.requests().len(), before, "the server was reached");
    drop(mg);

    // redirect: through the proxy's plain-HTTP path, audited like HTTPS.
    let cgroup = TestCgroup::new("http80-redirect");
    let mg = agent(&cgroup, ip, "default_action: redirect\nrules: []\n");
    let (pid, body) = run_checked(
        &mut curl_http(&cgroup, ip, "/v1/chat/completions", Some(CHAT)),
        "curl over http under redirect",
    );
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(
        answer["choices"][0]["message"]["content"], "Hello from the stand-in.",
        "{answer:#}"
    );
    let record = mg.wait_for_audit("the port-80 chat", by_pid(pid));
    assert_eq!(record["decision"], "redirect", "{record:#}");
    assert_eq!(record["scheme"], "http", "{record:#}");
    assert_eq!(record["destination"]["port"], 80, "{record:#}");
    assert_eq!(record["gen_ai.request.model"], "gpt-4o-mini", "{record:#}");
    assert_eq!(record["gen_ai.usage.input_tokens"], 11, "{record:#}");
    assert_eq!(record["outcome"], "ok", "{record:#}");
    let last = server
        .requests()
        .pop()
        .expect("the upstream saw the request");
    assert_eq!(last["path"], "/v1/chat/completions", "{last:#}");
}

/// Each case's parts on its own connection to `ip`:80.
fn send_requests(cgroup: &TestCgroup, ip: &str, cases: &Value) -> serde_json::Map<String, Value> {
    let cases: Vec<(String, Vec<Vec<u8>>)> = cases
        .as_object()
        .expect("cases by label")
        .iter()
        .map(|(label, parts)| {
            let parts = parts.as_array().expect("a list of parts");
            let parts = parts
                .iter()
                .map(|p| p.as_str().expect("a part").as_bytes().to_vec())
                .collect();
            (label.clone(), parts)
        })
        .collect();
    send_parts(cgroup, ip, 80, &cases)
}

#[test]
fn a_cleartext_request_to_an_unknown_address_is_judged_by_its_host_however_it_is_written() {
    require_root();
    // The catalog knows api.openai.com at another address: 127.0.0.71 is
    // one nobody told the agent about.
    let known = "127.0.0.72";
    let ip = "127.0.0.71";
    answer_any_byte(&format!("{ip}:80"));
    let request =
        |host_line: &str| format!("GET /v1/models HTTP/1.1\r\n{host_line}\r\nAccept: */*\r\n\r\n");
    let padding = format!("X-Pad: {}\r\n", "p".repeat(300));
    let cookie = format!("Cookie: {}\r\n", "c".repeat(1200));
    let cases = json!({
        "plain": [request("Host: api.openai.com")],
        "post": ["POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 2\r\n\r\n{}"],
        "case, dot and port": [request("hOsT:\t API.OpenAI.COM.:80 ")],
        "late in the header block": [format!("GET / HTTP/1.1\r\n{padding}{padding}Host: api.openai.com\r\n\r\n")],
        "split in the name": ["GET / HTTP/1.1\r\nHost: api.op", "enai.com\r\n\r\n"],
        "split after the method": ["GET", " / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"],
        "two hosts": [request("Host: example.com\r\nHost: api.openai.com")],
        "absolute target": ["GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: example.com\r\n\r\n"],
        "bare LF": ["GET / HTTP/1.1\nHost: api.openai.com\n\n"],
        "lowercase method": [request("Host: api.openai.com").to_lowercase()],
        "past the bytes read": [format!("GET / HTTP/1.1\r\n{cookie}Host: api.openai.com\r\n\r\n")],
        "host first, long cookie after": [format!("GET / HTTP/1.1\r\nHost: api.openai.com\r\n{cookie}\r\n")],
        "another host": [request("Host: example.com")],
        "another host, long cookie after": [format!("GET / HTTP/1.1\r\nHost: example.com\r\n{cookie}\r\n")],
        "another host, split": ["GET / HTTP/1.1\r\nHost: exa", "mple.com\r\n\r\n"],
    });

    // monitor: every request reaches the server; the model API's host is
    // reported and learned.
    let cgroup = TestCgroup::new("hosthdr-monitor");
    let mg = agent(&cgroup, known, "default_action: monitor\nrules: []\n");
    let results = send_requests(&cgroup, ip, &json!({"plain": cases["plain"].clone()}));
    assert_eq!(results["plain"], "reached", "{results:?}");
    let alert = mg.wait_for_alert_where("unknown-address", Duration::from_secs(10), |a| {
        a["destination"]["ip"] == ip
    });
    assert_eq!(alert["host"], HOST, "{alert:#}");
    assert_eq!(alert["destination"]["port"], 80, "{alert:#}");
    drop(mg);

    // block: a request to another host gets there, split or not (a split
    // start is held until TCP resends it whole). First: once a request
    // names the model API the address is learned, and from then on it is
    // the model API's whatever a request says.
    let cgroup = TestCgroup::new("hosthdr-block");
    let mg = agent(&cgroup, known, "default_action: block\nrules: []\n");
    let (others, named): (Vec<_>, Vec<_>) = cases
        .as_object()
        .unwrap()
        .clone()
        .into_iter()
        .partition(|(label, _)| label.starts_with("another host"));
    let results = send_requests(&cgroup, ip, &Value::Object(others.into_iter().collect()));
    for (label, result) in &results {
        assert_eq!(result, "reached", "{label}: {results:?}");
    }
    // Whatever names the model API, or could, never gets there.
    let named: serde_json::Map<String, Value> = named.into_iter().collect();
    let results = send_requests(&cgroup, ip, &Value::Object(named.clone()));
    assert_eq!(results.len(), named.len(), "{results:?}");
    for (label, result) in &results {
        assert!(
            result == "timeout" || result == "EPERM",
            "{label} must not reach the server: {results:?}"
        );
    }
    let alert = mg.wait_for_alert_where("unknown-address", Duration::from_secs(10), |a| {
        a["destination"]["ip"] == ip
    });
    assert_eq!(alert["host"], HOST, "{alert:#}");
    assert!(
        alert["identity"]["exe"]
            .as_str()
            .unwrap_or("")
            .contains("python"),
        "{alert:#}"
    );
    // Learned: from now on connect() itself is refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let results = send_requests(
            &cgroup,
            ip,
            &json!({"again": cases["another host"].clone()}),
        );
        if results["again"] == "EPERM" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the address was not learned: {results:?}"
        );
    }
}
