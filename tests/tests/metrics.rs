//! `/metrics` read by real parsers of both formats it serves, after real
//! traffic: the Python client's Prometheus text (0.0.4) parser and its
//! OpenMetrics parser. No family may be lost to a parser (`unknown`, or
//! empty), and every monotonic count must be a counter.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use modelgate_tests::{
    output,
    standin::{run_checked, setup_with_config, test_python},
};
use serde_json::Value;

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello"}]}"#;

/// Scrapes `http://ADDR/metrics` with `Accept: ACCEPT` (none when empty)
/// and parses the body with PARSER (`text` or `openmetrics`); prints the
/// content type, the raw body and the families as JSON.
const SCRAPE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families as text_parser
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parser
addr, accept, parser = sys.argv[1], sys.argv[2], sys.argv[3]
request = urllib.request.Request(f"http://{addr}/metrics")
if accept:
    request.add_header("Accept", accept)
with urllib.request.urlopen(request, timeout=5) as response:
    content_type = response.headers.get("Content-Type")
    body = response.read().decode()
parse = text_parser if parser == "text" else om_parser
families = [
    {
        "name": f.name,
        "type": f.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples],
    }
    for f in parse(body)
]
print(json.dumps({"content_type": content_type, "body": body, "families": families}))
"#;

/// Every family the agent exports (as the parsers name them: a counter's
/// family without `_total`), with the type it must have.
const FAMILIES: &[(&str, &str)] = &[
    ("modelgate_requests", "counter"),
    ("modelgate_gen_ai_usage_tokens", "counter"),
    ("modelgate_gen_ai_usage_cache_read_input_tokens", "counter"),
    ("modelgate_gen_ai_usage_reasoning_output_tokens", "counter"),
    ("modelgate_request_duration_seconds", "histogram"),
    (
        "modelgate_gen_ai_client_operation_time_to_first_chunk_seconds",
        "histogram",
    ),
    (
        "modelgate_gen_ai_client_operation_time_per_output_chunk_seconds",
        "histogram",
    ),
    ("modelgate_kernel", "counter"),
    ("modelgate_records_dropped", "counter"),
    ("modelgate_map_entries", "gauge"),
    ("modelgate_map_capacity", "gauge"),
    ("modelgate_alerts_delivered", "counter"),
    ("modelgate_alerts_dropped", "counter"),
    ("modelgate_alerts_spool_depth", "gauge"),
    ("modelgate_otlp_exported", "counter"),
    ("modelgate_otlp_failed", "counter"),
    ("modelgate_proxy_connections_refused", "counter"),
    ("modelgate_proxy_requests_in_flight", "gauge"),
    ("modelgate_proxy_tls_handshake_failures", "counter"),
    ("modelgate_memory_bytes", "gauge"),
];

/// Families that appear with the first stream that ends (before it, they
/// have no series).
const AFTER_A_STREAM: &[&str] = &[
    "modelgate_gen_ai_client_operation_time_to_first_chunk_seconds",
    "modelgate_gen_ai_client_operation_time_per_output_chunk_seconds",
];

/// Prometheus's own scrape `Accept`: OpenMetrics first, 0.0.4 after.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const CLASSIC_ACCEPT: &str = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1";
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Scrape {
    body: String,
    /// family name → (type, samples)
    families: BTreeMap<String, (String, Vec<Value>)>,
}

impl Scrape {
    fn sum(&self, sample: &str, label: (&str, &str)) -> f64 {
        self.families
            .values()
            .flat_map(|(_, samples)| samples)
            .filter(|s| s["name"] == sample && s["labels"][label.0] == label.1)
            .map(|s| s["value"].as_f64().unwrap())
            .sum()
    }

    fn value(&self, sample: &str) -> f64 {
        self.families
            .values()
            .flat_map(|(_, samples)| samples)
            .find(|s| s["name"] == sample)
            .unwrap_or_else(|| panic!("no sample {sample} in\n{}", self.body))["value"]
            .as_f64()
            .unwrap()
    }
}

fn scrape(
    python: &std::path::Path,
    addr: &str,
    accept: &str,
    parser: &str,
    want_type: &str,
    streamed: bool,
) -> Scrape {
    let out = output(std::process::Command::new(python).args(["-c", SCRAPE, addr, accept, parser]));
    assert!(
        out.status.success(),
        "scraping with Accept `{accept}` and parsing with the {parser} parser failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let scraped: Value = serde_json::from_slice(&out.stdout).expect("the scrape script's JSON");
    let body = scraped["body"].as_str().unwrap().to_string();
    assert_eq!(
        scraped["content_type"], want_type,
        "Accept `{accept}`: the content type says which format the body is\n{body}"
    );
    let mut families = BTreeMap::new();
    let mut problems = Vec::new();
    for family in scraped["families"].as_array().unwrap() {
        let name = family["name"].as_str().unwrap().to_string();
        let kind = family["type"].as_str().unwrap().to_string();
        let samples = family["samples"].as_array().unwrap().clone();
        if families.insert(name.clone(), (kind, samples)).is_some() {
            problems.push(format!(
                "{name} appears more than once: the parser split it"
            ));
        }
    }
    for (name, (kind, samples)) in &families {
        if kind == "unknown" || kind == "untyped" {
            problems.push(format!("{name} is `{kind}`: the parser lost its type"));
        }
        if samples.is_empty() {
            problems.push(format!("{name} has no samples"));
        }
        match FAMILIES.iter().find(|(known, _)| known == name) {
            Some((_, want)) if want != kind => {
                problems.push(format!("{name} is a {kind}, not a {want}"));
            }
            Some(_) => {}
            None => problems.push(format!(
                "{name} ({kind}) is not a family this test knows; add it to FAMILIES with its type"
            )),
        }
    }
    for (known, _) in FAMILIES {
        if !families.contains_key(*known) && (streamed || !AFTER_A_STREAM.contains(known)) {
            problems.push(format!("{known} is missing"));
        }
    }
    assert!(
        problems.is_empty(),
        "Accept `{accept}`, {parser} parser:\n  {}\n\n{body}",
        problems.join("\n  ")
    );
    Scrape { body, families }
}

#[test]
fn metrics_parse_in_both_formats_with_every_count_a_counter() {
    let python = test_python("prometheus-client");
    let hooks = tempfile::tempdir().unwrap();
    let secret = hooks.path().join("secret");
    std::fs::write(&secret, "test-webhook-secret\n").unwrap();
    // Every optional family present: a webhook (with a spool; nobody
    // listens on port 9) and OTLP (to nowhere).
    let config = format!(
        "alerts:\n  webhooks:\n    - url: http://127.0.0.1:9/hook\n      secret_file: {}\n\
         otlp:\n  endpoint: http://127.0.0.1:9\n  interval: 300ms\n  timeout: 1s\n",
        secret.display()
    );
    // Streams take 6 × 0.3 s: long enough to be seen in flight.
    let s = setup_with_config(
        "metrics-formats",
        "127.0.0.191",
        "default_action: redirect\nrules: []\n",
        6,
        0.3,
        false,
        &config,
    );
    let ca = s.agent.ca();
    for _ in 0..3 {
        run_checked(
            &mut s.curl(&ca, "/v1/chat/completions", Some(CHAT)),
            "curl chat",
        );
    }
    // A client that does not trust the modelgate CA: a failed handshake.
    let untrusting = output(&mut s.curl(&s.pki.ca, "/v1/chat/completions", Some(CHAT)));
    assert!(
        !untrusting.status.success(),
        "curl trusting only the stand-in's CA must refuse the proxy's certificate"
    );
    let addr = s.agent.metrics_addr();

    // A stream in flight is counted while it runs.
    let mut stream = s
        .curl(&ca, "/v1/chat/completions", Some(CHAT_STREAM))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let during = scrape(&python, &addr, "", "text", TEXT_TYPE, false);
        if during.value("modelgate_proxy_requests_in_flight") >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a streaming request in flight is not counted:\n{}",
            during.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stream.wait().unwrap().success(), "the stream completed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.agent.audit_now().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "audit records: {:#?}",
            s.agent.audit_now()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The kernel's counters reach the registry at the agent's next tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let classic = loop {
        let classic = scrape(&python, &addr, CLASSIC_ACCEPT, "text", TEXT_TYPE, true);
        if classic.sum("modelgate_kernel_total", ("counter", "redirected")) >= 5.0 {
            break classic;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kernel's redirects are not counted:\n{}",
            classic.body
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        !classic.body.contains("# EOF"),
        "`# EOF` belongs to OpenMetrics only:\n{}",
        classic.body
    );
    scrape(&python, &addr, "", "text", TEXT_TYPE, true);
    let open = scrape(
        &python,
        &addr,
        PROMETHEUS_ACCEPT,
        "openmetrics",
        OPENMETRICS_TYPE,
        true,
    );
    scrape(
        &python,
        &addr,
        "application/openmetrics-text; version=1.0.0",
        "openmetrics",
        OPENMETRICS_TYPE,
        true,
    );

    let audit = s.agent.audit_now();
    // The audit trail carries what the metrics count: cache-read and
    // reasoning tokens where reported, the first chunk's time for streams.
    for record in &audit {
        let streamed = record["stream"] == true;
        assert_eq!(
            record["time_to_first_chunk_ms"].is_f64(),
            streamed,
            "{record:#}"
        );
        if !streamed {
            assert_eq!(
                record["gen_ai.usage.cache_read.input_tokens"], 4,
                "{record:#}"
            );
            assert_eq!(
                record["gen_ai.usage.reasoning.output_tokens"], 2,
                "{record:#}"
            );
        }
    }
    for scraped in [&classic, &open] {
        assert_eq!(
            scraped.sum("modelgate_requests_total", ("provider", "openai")),
            audit.len() as f64,
            "one request counted per audit record\n{}",
            scraped.body
        );
        assert_eq!(
            scraped.value("modelgate_proxy_requests_in_flight"),
            0.0,
            "nothing is in flight once the stream ended\n{}",
            scraped.body
        );
        assert!(
            scraped.sum(
                "modelgate_proxy_tls_handshake_failures_total",
                ("reason", "client_rejected")
            ) >= 1.0,
            "the untrusting client's handshake is counted\n{}",
            scraped.body
        );
        assert!(
            scraped.sum("modelgate_kernel_total", ("counter", "redirected")) >= 5.0,
            "the kernel's redirects are counted\n{}",
            scraped.body
        );
        // The stand-in reports 4 cached and 2 reasoning tokens per plain
        // answer; the one stream (6 chunks and a usage chunk, 0.3 s apart)
        // is timed: its first chunk once, the 6 after it each.
        assert_eq!(
            scraped.sum(
                "modelgate_gen_ai_usage_cache_read_input_tokens_total",
                ("provider", "openai")
            ),
            12.0,
            "{}",
            scraped.body
        );
        assert_eq!(
            scraped.sum(
                "modelgate_gen_ai_usage_reasoning_output_tokens_total",
                ("provider", "openai")
            ),
            6.0,
            "{}",
            scraped.body
        );
        assert_eq!(
            scraped.sum(
                "modelgate_gen_ai_client_operation_time_to_first_chunk_seconds_count",
                ("provider", "openai")
            ),
            1.0,
            "only the stream has a first chunk\n{}",
            scraped.body
        );
        assert_eq!(
            scraped.sum(
                "modelgate_gen_ai_client_operation_time_per_output_chunk_seconds_count",
                ("provider", "openai")
            ),
            6.0,
            "every chunk after the first\n{}",
            scraped.body
        );
        let gaps = scraped.sum(
            "modelgate_gen_ai_client_operation_time_per_output_chunk_seconds_sum",
            ("provider", "openai"),
        );
        assert!((1.2..3.0).contains(&gaps), "6 gaps of about 0.3 s: {gaps}");
        let spools: Vec<&Value> = scraped.families["modelgate_alerts_spool_depth"]
            .1
            .iter()
            .collect();
        assert!(
            spools.iter().all(|s| s["labels"]["sink"]
                .as_str()
                .unwrap()
                .starts_with("webhook-")),
            "only webhooks have a spool: {spools:?}"
        );
    }
}

/// `GET /metrics` with an optional bearer token: the status code.
fn metrics_status(addr: &str, token: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response}"))
}

#[test]
fn a_token_file_closes_metrics_to_other_local_processes_and_state_files_are_not_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    modelgate_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics.token");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let cgroup = modelgate_tests::TestCgroup::new("metrics-token");
    let config = format!("metrics_token_file: {}\n", token_file.display());
    let mut spec = modelgate_tests::AgentSpec::new(
        &cgroup,
        "providers:\n  - name: openai\n    api: openai\n    addresses: [127.0.0.192]\n",
        "default_action: monitor\nrules: []\n",
    );
    spec.config = &config;
    // A state directory anyone may list: the files must not lean on it.
    let agent = modelgate_tests::Agent::start(spec);
    std::fs::set_permissions(agent.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = output(
        std::process::Command::new(modelgate_tests::agent_bin())
            .args(["status", "--json", "--state-dir"])
            .arg(agent.state_dir()),
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let addr = status["metrics"].as_str().unwrap().to_string();
    assert_eq!(metrics_status(&addr, None), 401, "no token");
    assert_eq!(
        metrics_status(&addr, Some("0123456789abcdef0123456789abcdee")),
        401
    );
    assert_eq!(metrics_status(&addr, Some(token)), 200);

    // A connect to the endpoint: records and more appear.
    let _ = output(cgroup.command("python3").args([
        "-c",
        "import socket\ntry: socket.create_connection(('127.0.0.192', 443), timeout=1)\nexcept OSError: pass",
    ]));
    agent.wait_for_event("the connect", |e| e["destination"]["ip"] == "127.0.0.192");
    let mut seen = Vec::new();
    let mut stack = vec![agent.state_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let name = entry.file_name().to_string_lossy().into_owned();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                seen.push(format!("{name} {mode:o}"));
                if name == "ca.pem" {
                    assert_eq!(mode, 0o644, "the CA certificate is public");
                } else {
                    assert_eq!(mode & 0o007, 0, "{} is {mode:o}", entry.path().display());
                }
            }
        }
    }
    assert!(seen.len() >= 3, "{seen:?}");
    eprintln!("state files: {seen:?}");
}
