//! Audit records as OTLP log records: one per record, attributes named by
//! the OpenTelemetry semantic conventions where one exists (GenAI, HTTP,
//! server, process, container) and `modelgate.*` for the rest.
//!
//! Prompt and output text never leave the host this way, even when the
//! audit keeps them (`store_prompts: full`): only their SHA-256 hashes do.
//! The collector and whatever sits behind it are outside the host's trust
//! boundary, and the texts are what the governance exists to protect.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};

use crate::audit::AuditRecord;

/// The `event.name` of every record.
pub const EVENT_NAME: &str = "modelgate.request";

/// An attribute value: the few shapes the mapping needs.
pub fn string(value: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    }
}

fn int(value: u64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(
            i64::try_from(value).unwrap_or(i64::MAX),
        )),
    }
}

fn double(value: f64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::DoubleValue(value)),
    }
}

fn boolean(value: bool) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::BoolValue(value)),
    }
}

pub fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..KeyValue::default()
    }
}

/// Nanoseconds since the epoch, 0 (the protocol's "unknown") before it.
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The error type the semantic conventions ask for: the outcome when it
/// is not `ok`, else the upstream's HTTP error status.
pub fn error_type(record: &AuditRecord) -> Option<String> {
    if !record.outcome.is_ok() {
        Some(record.outcome.to_string())
    } else {
        record
            .status
            .filter(|status| *status >= 400)
            .map(|status| status.to_string())
    }
}

/// Attributes in a fixed order, present only when the record has them.
struct Attributes(Vec<KeyValue>);

impl Attributes {
    fn put(&mut self, key: &str, value: AnyValue) {
        self.0.push(key_value(key, value));
    }

    fn text(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.put(key, string(value));
        }
    }

    fn int(&mut self, key: &str, value: Option<u64>) {
        if let Some(value) = value {
            self.put(key, int(value));
        }
    }

    fn double(&mut self, key: &str, value: Option<f64>) {
        if let Some(value) = value {
            self.put(key, double(value));
        }
    }
}

/// One audit record as a log record.
pub fn log_record(record: &AuditRecord, observed: SystemTime) -> LogRecord {
    let mut a = Attributes(Vec::with_capacity(48));
    a.put("gen_ai.provider.name", string(&record.provider));
    a.text("gen_ai.operation.name", record.operation);
    a.text("gen_ai.request.model", record.model.as_deref());
    a.int("gen_ai.usage.input_tokens", record.tokens.input);
    a.int("gen_ai.usage.output_tokens", record.tokens.output);
    a.int(
        "gen_ai.usage.cache_read.input_tokens",
        record.tokens.cache_read,
    );
    a.int(
        "gen_ai.usage.reasoning.output_tokens",
        record.tokens.reasoning,
    );
    a.double(
        "gen_ai.response.time_to_first_chunk",
        record.time_to_first_chunk_ms.map(|ms| ms / 1000.0),
    );
    a.text("server.address", record.host.as_deref());
    a.put("server.port", int(record.destination.port.into()));
    a.put(
        "network.peer.address",
        string(record.destination.ip.to_string()),
    );
    a.text("http.request.method", record.method.as_deref());
    a.text("url.path", record.path.as_deref());
    a.int("http.response.status_code", record.status.map(u64::from));
    a.text("error.type", error_type(record).as_deref());

    a.put("modelgate.decision", string(record.decision.as_str()));
    a.put("modelgate.rule", string(&record.rule));
    a.put("modelgate.outcome", string(record.outcome.as_str()));
    a.text("modelgate.error", record.error.as_deref());
    a.put("modelgate.scheme", string(record.scheme));
    a.text("modelgate.http_version", record.http_version.as_deref());
    a.put("modelgate.stream", boolean(record.stream));
    a.int("modelgate.messages", record.messages.map(|m| m as u64));
    a.put("modelgate.prompt_bytes", int(record.prompt_bytes as u64));
    a.put("modelgate.request_bytes", int(record.request_bytes));
    a.put("modelgate.response_bytes", int(record.response_bytes));
    a.int("modelgate.stream_events", record.stream_events);
    a.put("modelgate.latency_ms", double(record.latency_ms));
    a.double("modelgate.ttfb_ms", record.ttfb_ms);
    a.double("modelgate.cost_usd", record.cost_usd);
    a.put("modelgate.connection", int(record.connection));
    if !record.redacted.is_empty() {
        let values = record
            .redacted
            .iter()
            .map(|(class, count)| key_value(class, int(*count as u64)))
            .collect();
        a.put(
            "modelgate.redacted",
            AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList { values })),
            },
        );
    }
    // Hashes only: see the module's comment.
    a.text("modelgate.prompt_sha256", record.prompt_sha256.as_deref());
    a.text("modelgate.output_sha256", record.output_sha256.as_deref());

    let id = &record.identity;
    a.put("process.pid", int(id.tgid.into()));
    if id.pid != id.tgid {
        a.put("thread.id", int(id.pid.into()));
    }
    a.int("process.parent_pid", id.ppid.map(u64::from));
    a.text("process.executable.path", id.exe.as_deref());
    a.put("process.executable.name", string(&id.comm));
    a.text("process.command_line", id.cmdline.as_deref());
    a.put("process.user.id", int(id.uid.into()));
    a.text("process.user.name", id.user.as_deref());
    a.put("modelgate.process.gid", int(id.gid.into()));
    a.text("modelgate.process.group", id.group.as_deref());
    if !id.parents.is_empty() {
        let values = id
            .parents
            .iter()
            .map(|p| string(format!("{} {}", p.pid, p.exe.as_deref().unwrap_or("?"))))
            .collect();
        a.put(
            "modelgate.process.parents",
            AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
            },
        );
    }
    a.text("modelgate.cgroup", id.cgroup.as_deref());
    let cgroup = &id.cgroup_info;
    a.text("modelgate.systemd.unit", cgroup.unit.as_deref());
    a.text("modelgate.systemd.slice", cgroup.slice.as_deref());
    a.text("container.id", cgroup.container_id.as_deref());
    if let Some(runtime) = cgroup.container_runtime {
        // The same lowercase name the audit file has.
        let name = serde_json::to_value(runtime)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string));
        a.text("container.runtime.name", name.as_deref());
    }
    a.text("k8s.pod.uid", cgroup.pod_uid.as_deref());

    let troubled = record.failed();
    let severity = if troubled {
        SeverityNumber::Warn
    } else {
        SeverityNumber::Info
    };
    let time = humantime::parse_rfc3339(&record.time).unwrap_or(observed);
    LogRecord {
        time_unix_nano: unix_nanos(time),
        observed_time_unix_nano: unix_nanos(observed),
        severity_number: severity as i32,
        severity_text: if troubled { "WARN" } else { "INFO" }.to_string(),
        body: Some(string(summary(record))),
        attributes: a.0,
        event_name: EVENT_NAME.to_string(),
        ..LogRecord::default()
    }
}

/// One line a person reads in a log view: who called which model, and
/// how it went.
fn summary(record: &AuditRecord) -> String {
    let mut text = format!("{} {}", record.decision, record.provider);
    if let Some(operation) = record.operation {
        text.push_str(&format!(" {operation}"));
    }
    if let Some(model) = &record.model {
        text.push_str(&format!(" {model}"));
    }
    text.push_str(&format!(
        " by {} (pid {})",
        record.identity.who(),
        record.identity.tgid
    ));
    match record.status {
        Some(status) => text.push_str(&format!(": {status} {}", record.outcome)),
        None => text.push_str(&format!(": {}", record.outcome)),
    }
    text
}

/// The resource every export describes: this agent on this host, plus
/// the configured attributes (which win over ours on the same key).
pub fn resource(host_name: &str, extra: &std::collections::BTreeMap<String, String>) -> Resource {
    let mut attributes = vec![
        key_value("service.name", string("modelgate")),
        key_value("service.version", string(env!("CARGO_PKG_VERSION"))),
        key_value("host.name", string(host_name)),
    ];
    attributes.retain(|kv| !extra.contains_key(&kv.key));
    attributes.extend(extra.iter().map(|(k, v)| key_value(k, string(v))));
    Resource {
        attributes,
        ..Resource::default()
    }
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "modelgate".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..InstrumentationScope::default()
    }
}

/// One export request for `records`.
pub fn request(resource: &Resource, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, HashMap},
        net::{IpAddr, Ipv4Addr},
    };

    use super::*;
    use crate::{
        audit::Destination,
        identity::{Identity, Parent, cgroup_path::ContainerRuntime},
        policy::StorePrompts,
    };

    fn record() -> AuditRecord {
        let mut identity = Identity {
            pid: 4243,
            tgid: 4242,
            ppid: Some(1),
            uid: 1000,
            user: Some("alice".into()),
            comm: "python3".into(),
            exe: Some("/usr/bin/python3.11".into()),
            cmdline: Some("python3 app.py --api-key ***".into()),
            parents: vec![Parent {
                pid: 1,
                exe: Some("/usr/lib/systemd/systemd".into()),
            }],
            ..Identity::default()
        };
        identity.cgroup_info.unit = Some("batch.service".into());
        identity.cgroup_info.container_id = Some("ab".repeat(32));
        identity.cgroup_info.container_runtime = Some(ContainerRuntime::Containerd);
        let mut record = AuditRecord::new(
            crate::audit::Handling::Redirect,
            "default".into(),
            "openai".into(),
            Destination {
                ip: IpAddr::V4(Ipv4Addr::new(162, 159, 140, 245)),
                port: 443,
            },
            "https",
            3,
            identity,
        );
        record.time = "2026-11-26T02:19:54.776405Z".into();
        record.host = Some("api.openai.com".into());
        record.method = Some("POST".into());
        record.path = Some("/v1/chat/completions".into());
        record.operation = Some("chat");
        record.model = Some("gpt-4o-mini".into());
        record.status = Some(200);
        record.latency_ms = 812.5;
        record.tokens.input = Some(11);
        record.tokens.output = Some(4);
        record.cost_usd = Some(0.0001);
        record.redacted = BTreeMap::from([("email".to_string(), 2)]);
        record.store_text(StorePrompts::Full, "my secret prompt", "the secret answer");
        record.prompt_sha256 = Some("p".repeat(64));
        record
    }

    fn attributes(log: &LogRecord) -> HashMap<String, any_value::Value> {
        log.attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    kv.value.clone().and_then(|v| v.value).expect("a value"),
                )
            })
            .collect()
    }

    fn s(value: &str) -> any_value::Value {
        any_value::Value::StringValue(value.into())
    }

    fn i(value: i64) -> any_value::Value {
        any_value::Value::IntValue(value)
    }

    #[test]
    fn a_record_maps_to_semantic_convention_names() {
        let observed = SystemTime::now();
        let log = log_record(&record(), observed);
        let a = attributes(&log);
        for (key, want) in [
            ("gen_ai.provider.name", s("openai")),
            ("gen_ai.operation.name", s("chat")),
            ("gen_ai.request.model", s("gpt-4o-mini")),
            ("gen_ai.usage.input_tokens", i(11)),
            ("gen_ai.usage.output_tokens", i(4)),
            ("server.address", s("api.openai.com")),
            ("server.port", i(443)),
            ("http.request.method", s("POST")),
            ("url.path", s("/v1/chat/completions")),
            ("http.response.status_code", i(200)),
            ("modelgate.decision", s("redirect")),
            ("modelgate.rule", s("default")),
            ("modelgate.outcome", s("ok")),
            ("modelgate.cost_usd", any_value::Value::DoubleValue(0.0001)),
            ("modelgate.latency_ms", any_value::Value::DoubleValue(812.5)),
            ("modelgate.connection", i(3)),
            ("process.pid", i(4242)),
            ("thread.id", i(4243)),
            ("process.executable.path", s("/usr/bin/python3.11")),
            ("process.executable.name", s("python3")),
            ("process.user.id", i(1000)),
            ("process.user.name", s("alice")),
            ("modelgate.systemd.unit", s("batch.service")),
            ("container.id", s(&"ab".repeat(32))),
            ("container.runtime.name", s("containerd")),
            ("modelgate.prompt_sha256", s(&"p".repeat(64))),
        ] {
            assert_eq!(a.get(key), Some(&want), "attribute {key}");
        }
        assert!(!a.contains_key("error.type"), "a success has no error.type");
        assert_eq!(log.event_name, EVENT_NAME);
        assert_eq!(log.severity_number, SeverityNumber::Info as i32);
        let time = humantime::parse_rfc3339("2026-11-26T02:19:54.776405Z").unwrap();
        assert_eq!(log.time_unix_nano, unix_nanos(time));
        assert_eq!(log.observed_time_unix_nano, unix_nanos(observed));
        let body = format!("{:?}", log.body);
        assert!(
            body.contains("gpt-4o-mini") && body.contains("/usr/bin/python3.11"),
            "{body}"
        );
    }

    #[test]
    fn prompt_and_output_text_are_never_exported() {
        let log = log_record(&record(), SystemTime::now());
        let everything = format!("{log:?}");
        assert!(!everything.contains("secret"), "{everything}");
    }

    #[test]
    fn failures_carry_error_type_and_warn() {
        let mut failed = record();
        failed.outcome = crate::audit::Outcome::UpstreamError;
        failed.status = Some(502);
        let log = log_record(&failed, SystemTime::now());
        assert_eq!(attributes(&log)["error.type"], s("upstream_error"));
        assert_eq!(log.severity_number, SeverityNumber::Warn as i32);
        let mut refused = record();
        refused.status = Some(429);
        assert_eq!(
            attributes(&log_record(&refused, SystemTime::now()))["error.type"],
            s("429")
        );
    }

    #[test]
    fn a_bare_refusal_has_no_invented_fields() {
        let mut bare = AuditRecord::new(
            crate::audit::Handling::Refused,
            "proxy".into(),
            "unknown".into(),
            Destination {
                ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port: 0,
            },
            "tls",
            9,
            Identity::default(),
        );
        bare.outcome = crate::audit::Outcome::NoRedirectRecord;
        let a = attributes(&log_record(&bare, SystemTime::now()));
        for absent in [
            "gen_ai.request.model",
            "gen_ai.usage.input_tokens",
            "server.address",
            "process.executable.path",
            "thread.id",
            "modelgate.cost_usd",
        ] {
            assert!(!a.contains_key(absent), "{absent} is absent");
        }
        assert_eq!(a["error.type"], s("no_redirect_record"));
    }

    #[test]
    fn configured_resource_attributes_win() {
        let extra = BTreeMap::from([
            ("host.name".to_string(), "web-1".to_string()),
            (
                "deployment.environment.name".to_string(),
                "prod".to_string(),
            ),
        ]);
        let resource = resource("h", &extra);
        let keys: Vec<(&str, String)> = resource
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), format!("{:?}", kv.value)))
            .collect();
        assert_eq!(keys.iter().filter(|(k, _)| *k == "host.name").count(), 1);
        assert!(
            keys.iter()
                .any(|(k, v)| *k == "host.name" && v.contains("web-1"))
        );
        assert!(keys.iter().any(|(k, _)| *k == "service.name"));
    }
}
