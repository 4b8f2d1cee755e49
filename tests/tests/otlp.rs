//! OTLP export end to end: real clients call through the proxy; a receiver
//! built on the `opentelemetry-proto` types (no collector binary can be
//! installed here) decodes what the agent sends over OTLP/HTTP, and every
//! audit record must arrive exactly once, with metrics that add up to the
//! audit file — also across a collector outage.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use modelgate_tests::{
    Agent, AgentSpec, TestCgroup, require_root,
    standin::{HOST, ModelServer, Pki, run_checked},
};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
        metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    },
    common::v1::{KeyValue, any_value::Value as Any},
    logs::v1::LogRecord,
    metrics::v1::{metric::Data, number_data_point},
};
use prost::Message;
use serde_json::Value;

/// What the receiver does with the next request to /v1/logs.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16, Option<u64>),
    /// Close the connection without answering.
    Hang,
}

#[derive(Default)]
struct Received {
    logs: Vec<ExportLogsServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    /// Headers of every request (lowercase names).
    headers: Vec<HashMap<String, String>>,
    /// Answers to give /v1/logs before accepting.
    plan: VecDeque<Answer>,
    refused: u32,
}

/// A minimal OTLP/HTTP receiver: HTTP/1.1 with keep-alive, protobuf
/// bodies decoded with the `opentelemetry-proto` types.
struct Receiver {
    port: u16,
    state: Arc<Mutex<Received>>,
}

impl Receiver {
    fn start(plan: &[Answer]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(Received {
            plan: plan.iter().copied().collect(),
            ..Received::default()
        }));
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                thread::spawn(move || serve(stream, &state));
            }
        });
        Receiver { port, state }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_records(&self) -> Vec<LogRecord> {
        let state = self.state.lock().unwrap();
        state
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| s.log_records.clone())
            .collect()
    }

    fn wait_for_logs(&self, count: usize, within: Duration) -> Vec<LogRecord> {
        let deadline = Instant::now() + within;
        loop {
            let records = self.log_records();
            if records.len() >= count || Instant::now() > deadline {
                return records;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<Received>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .expect("the exporter sends Content-Length");
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut state = state.lock().unwrap();
        state.headers.push(headers);
        let answer = match path.as_str() {
            "/v1/logs" => state.plan.pop_front(),
            _ => None,
        };
        let reply: Vec<u8> = match answer {
            Some(Answer::Hang) => {
                state.refused += 1;
                return;
            }
            Some(Answer::Status(code, after)) => {
                state.refused += 1;
                let after = after
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                format!("HTTP/1.1 {code} Busy\r\n{after}Content-Length: 0\r\n\r\n").into_bytes()
            }
            None => {
                let answer = match path.as_str() {
                    "/v1/logs" => {
                        let request = ExportLogsServiceRequest::decode(body.as_slice())
                            .expect("a protobuf ExportLogsServiceRequest");
                        state.logs.push(request);
                        ExportLogsServiceResponse::default().encode_to_vec()
                    }
                    "/v1/metrics" => {
                        let request = ExportMetricsServiceRequest::decode(body.as_slice())
                            .expect("a protobuf ExportMetricsServiceRequest");
                        state.metrics.push(request);
                        ExportMetricsServiceResponse::default().encode_to_vec()
                    }
                    other => panic!("the exporter posted to {other}"),
                };
                let mut reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                    answer.len()
                )
                .into_bytes();
                reply.extend(answer);
                reply
            }
        };
        drop(state);
        if out.write_all(&reply).is_err() {
            return;
        }
    }
}

fn attrs(attributes: &[KeyValue]) -> HashMap<String, Any> {
    attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

fn text(attributes: &HashMap<String, Any>, key: &str) -> Option<String> {
    match attributes.get(key)? {
        Any::StringValue(s) => Some(s.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn int(attributes: &HashMap<String, Any>, key: &str) -> Option<u64> {
    match attributes.get(key)? {
        Any::IntValue(n) => Some(*n as u64),
        other => panic!("{key} is not an int: {other:?}"),
    }
}

/// What must agree between an audit record and its log record.
type Fingerprint = (
    u64,            // connection
    u64,            // pid
    Option<String>, // exe
    String,         // provider
    Option<String>, // model
    Option<u64>,    // input tokens
    Option<u64>,    // output tokens
    String,         // decision
    String,         // outcome
    Option<u64>,    // status
);

fn from_audit(r: &Value) -> Fingerprint {
    let s = |v: &Value| v.as_str().map(str::to_string);
    (
        r["connection"].as_u64().unwrap(),
        r["identity"]["tgid"].as_u64().unwrap(),
        s(&r["identity"]["exe"]),
        s(&r["gen_ai.provider.name"]).unwrap(),
        s(&r["gen_ai.request.model"]),
        r["gen_ai.usage.input_tokens"].as_u64(),
        r["gen_ai.usage.output_tokens"].as_u64(),
        s(&r["decision"]).unwrap(),
        s(&r["outcome"]).unwrap(),
        r["status"].as_u64(),
    )
}

fn from_log(log: &LogRecord) -> Fingerprint {
    let a = attrs(&log.attributes);
    (
        int(&a, "modelgate.connection").expect("modelgate.connection"),
        int(&a, "process.pid").expect("process.pid"),
        text(&a, "process.executable.path"),
        text(&a, "gen_ai.provider.name").expect("gen_ai.provider.name"),
        text(&a, "gen_ai.request.model"),
        int(&a, "gen_ai.usage.input_tokens"),
        int(&a, "gen_ai.usage.output_tokens"),
        text(&a, "modelgate.decision").expect("modelgate.decision"),
        text(&a, "modelgate.outcome").expect("modelgate.outcome"),
        int(&a, "http.response.status_code"),
    )
}

fn multiset(items: impl IntoIterator<Item = Fingerprint>) -> BTreeMap<Fingerprint, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    counts
}

/// A stand-in for HOST on `ip`:443 and an agent exporting to `otlp`.
struct Setup {
    agent: Agent,
    _server: ModelServer,
    _pki: Pki,
    ip: &'static str,
    cgroup: TestCgroup,
}

fn setup(name: &str, ip: &'static str, otlp: &str) -> Setup {
    require_root();
    let cgroup = TestCgroup::new(name);
    let pki = Pki::new(&[HOST]);
    let server = ModelServer::start(&pki, ip, 443, 3, 0.0);
    let endpoints = format!(
        "providers:\n  - name: openai\n    api: openai\n    hosts: [{HOST}]\n    addresses: [{ip}]\n"
    );
    let ca = pki.ca.display().to_string();
    let args = ["--proxy-port", "0", "--upstream-ca", ca.as_str()];
    let mut spec = AgentSpec::new(&cgroup, &endpoints, "default_action: redirect\nrules: []\n");
    spec.extra_args = &args;
    spec.config = otlp;
    let agent = Agent::start(spec);
    Setup {
        agent,
        _server: server,
        _pki: pki,
        ip,
        cgroup,
    }
}

impl Setup {
    fn chat(&self, cgroup: &TestCgroup, program: &str, model: &str) {
        let body = format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello"}}]}}"#
        );
        let ca = self.agent.ca();
        run_checked(
            cgroup
                .command(program)
                .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
                .arg(&ca)
                .args(["--resolve", &format!("{HOST}:443:{}", self.ip)])
                .arg(format!("https://{HOST}/v1/chat/completions"))
                .args(["-H", "authorization: Bearer sk-test-not-a-real-key-0000"])
                .args(["-H", "content-type: application/json", "--data", &body]),
            program,
        );
    }

    /// `/metrics` as text.
    fn scrape(&self) -> String {
        let mut stream = TcpStream::connect(self.agent.metrics_addr()).expect("connect /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }
}

/// The value of the sample line that starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn otlp_export_matches_the_audit_file() {
    let receiver = Receiver::start(&[]);
    let config = format!(
        "otlp:\n  endpoint: {}\n  interval: 500ms\n  batch: 2\n  headers: {{x-scope-orgid: team-a}}\n  \
         resource: {{deployment.environment.name: test}}\n",
        receiver.endpoint()
    );
    let mut s = setup("otlp", "127.0.0.151", &config);
    let dir = tempfile::tempdir().unwrap();
    let curl_copy = dir.path().join("curl-copy");
    std::fs::copy("/usr/bin/curl", &curl_copy).unwrap();
    let (a, b) = (s.cgroup.child("a"), s.cgroup.child("b"));
    for model in ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"] {
        s.chat(&a, "curl", model);
    }
    for _ in 0..2 {
        s.chat(&b, curl_copy.to_str().unwrap(), "gpt-4.1");
    }
    // Streamed through the batch interval, before any shutdown flush.
    let early = receiver.wait_for_logs(5, Duration::from_secs(15));
    assert_eq!(early.len(), 5, "five log records while the agent runs");

    // The shutdown flush sends the last metrics; the audit file is complete.
    let log = s.agent.stop();
    let audit = s.agent.audit_now();
    assert_eq!(audit.len(), 5, "five audited requests: {audit:#?}");
    let logs = receiver.log_records();
    assert_eq!(
        multiset(logs.iter().map(from_log)),
        multiset(audit.iter().map(from_audit)),
        "every audit record exactly once as a log record\nagent log:\n{log}"
    );
    for record in &logs {
        assert_eq!(record.event_name, "modelgate.request");
        assert!(record.time_unix_nano > 0 && record.observed_time_unix_nano > 0);
        let a = attrs(&record.attributes);
        assert_eq!(text(&a, "server.address").as_deref(), Some(HOST));
        assert_eq!(text(&a, "gen_ai.operation.name").as_deref(), Some("chat"));
        assert!(text(&a, "process.executable.name").is_some());
        // The stand-in reports 4 cached and 2 reasoning tokens per answer.
        assert_eq!(
            (
                int(&a, "gen_ai.usage.cache_read.input_tokens"),
                int(&a, "gen_ai.usage.reasoning.output_tokens")
            ),
            (Some(4), Some(2)),
            "{a:?}"
        );
        let body = format!("{:?}", record.body);
        assert!(body.contains("openai"), "{body}");
    }

    let state = receiver.state.lock().unwrap();
    for headers in &state.headers {
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
        assert_eq!(
            headers.get("x-scope-orgid").map(String::as_str),
            Some("team-a")
        );
    }
    let resource = attrs(
        &state.logs[0].resource_logs[0]
            .resource
            .as_ref()
            .expect("a resource")
            .attributes,
    );
    assert_eq!(
        text(&resource, "service.name").as_deref(),
        Some("modelgate")
    );
    assert_eq!(
        text(&resource, "deployment.environment.name").as_deref(),
        Some("test")
    );
    assert!(text(&resource, "host.name").is_some());

    // Cumulative: the last export holds the totals.
    let last = state.metrics.last().expect("metrics were exported");
    let metrics = &last.resource_metrics[0].scope_metrics[0].metrics;
    let metric = |name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in {metrics:#?}"))
    };
    let usage = metric("gen_ai.client.token.usage");
    assert_eq!(usage.unit, "{token}");
    let Some(Data::Histogram(tokens)) = &usage.data else {
        panic!("token usage is a histogram");
    };
    let total = |kind: &str| -> (u64, f64) {
        tokens
            .data_points
            .iter()
            .filter(|p| text(&attrs(&p.attributes), "gen_ai.token.type").as_deref() == Some(kind))
            .fold((0, 0.0), |(n, sum), p| (n + p.count, sum + p.sum.unwrap()))
    };
    let audit_total = |key: &str| -> f64 { audit.iter().map(|r| r[key].as_f64().unwrap()).sum() };
    assert_eq!(
        total("input"),
        (5, audit_total("gen_ai.usage.input_tokens"))
    );
    assert_eq!(
        total("output"),
        (5, audit_total("gen_ai.usage.output_tokens"))
    );
    let by_model: BTreeMap<String, u64> = tokens
        .data_points
        .iter()
        .filter(|p| text(&attrs(&p.attributes), "gen_ai.token.type").as_deref() == Some("input"))
        .map(|p| {
            (
                text(&attrs(&p.attributes), "gen_ai.request.model").unwrap(),
                p.count,
            )
        })
        .fold(BTreeMap::new(), |mut m, (k, n)| {
            *m.entry(k).or_default() += n;
            m
        });
    assert_eq!(
        by_model,
        BTreeMap::from([
            ("gpt-4.1".to_string(), 2),
            ("gpt-4o".to_string(), 1),
            ("gpt-4o-mini".to_string(), 2)
        ])
    );
    let Some(Data::Histogram(duration)) = &metric("gen_ai.client.operation.duration").data else {
        panic!("duration is a histogram");
    };
    let seconds: f64 = duration.data_points.iter().map(|p| p.sum.unwrap()).sum();
    let audit_seconds = audit_total("latency_ms") / 1000.0;
    assert!(
        (seconds - audit_seconds).abs() < 1e-6,
        "durations {seconds} vs audit {audit_seconds}"
    );
    let Some(Data::Sum(requests)) = &metric("modelgate.requests").data else {
        panic!("requests is a sum");
    };
    let count: i64 = requests
        .data_points
        .iter()
        .map(|p| match p.value {
            Some(number_data_point::Value::AsInt(n)) => n,
            ref other => panic!("requests are ints: {other:?}"),
        })
        .sum();
    assert_eq!(count, 5);
}

#[test]
fn otlp_export_retries_through_a_collector_outage_and_loses_nothing() {
    // 503, a dropped connection, then 429 with Retry-After: the first
    // batch is refused three times before the collector takes it.
    let receiver = Receiver::start(&[
        Answer::Status(503, None),
        Answer::Hang,
        Answer::Status(429, Some(1)),
    ]);
    let config = format!(
        "otlp:\n  endpoint: {}\n  interval: 300ms\n  timeout: 2s\n",
        receiver.endpoint()
    );
    let s = setup("otlp-outage", "127.0.0.152", &config);
    let a = s.cgroup.child("a");
    for _ in 0..3 {
        s.chat(&a, "curl", "gpt-4o-mini");
    }
    let logs = receiver.wait_for_logs(3, Duration::from_secs(30));
    let audit = s.agent.audit_now();
    assert_eq!(audit.len(), 3, "{audit:#?}");
    assert_eq!(
        multiset(logs.iter().map(from_log)),
        multiset(audit.iter().map(from_audit)),
        "every record once, after the outage\nagent log:\n{}",
        s.agent.log_text()
    );
    assert_eq!(receiver.state.lock().unwrap().refused, 3);

    let metrics = s.scrape();
    assert_eq!(
        sample(&metrics, "modelgate_records_dropped_total{queue=\"otlp\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "modelgate_otlp_failed_total{signal=\"logs\"}"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "modelgate_otlp_exported_total{signal=\"logs\"}"),
        Some(3.0),
        "{metrics}"
    );
    let log = s.agent.log_text();
    assert!(
        log.contains("OTLP export failed; retrying with backoff"),
        "{log}"
    );
    assert!(
        log.contains("the OTLP collector is reachable again"),
        "{log}"
    );

    // `modelgate status` shows the export as a healthy sink.
    let out = modelgate_tests::output(
        std::process::Command::new(modelgate_tests::agent_bin())
            .args(["status", "--json", "--state-dir"])
            .arg(s.agent.state_dir()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let otlp = status["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sink| sink["name"] == "otlp")
        .unwrap_or_else(|| panic!("no otlp sink: {status:#}"))
        .clone();
    assert_eq!(otlp["delivered"], 3, "{otlp}");
    assert_eq!(otlp["lost"], 0, "{otlp}");
    assert_eq!(
        otlp["target"],
        receiver.endpoint().trim_end_matches('/'),
        "{otlp}"
    );
}
