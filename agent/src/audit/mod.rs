//! The audit trail: one JSON line per proxied request, in
//! `<state>/audit.jsonl`, written by one task so the proxy never waits on
//! the disk; everything queued is on disk (fsync) before shutdown completes.

use std::{net::IpAddr, path::Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

mod outcome;

pub use self::outcome::{Handling, Outcome};
use crate::{
    alerts::{Alert, Alerts, Severity},
    identity::Identity,
    jsonl::{Change, JsonlLog},
    policy::StorePrompts,
};

pub const FILE_NAME: &str = "audit.jsonl";
/// Records queued for the writer; past this they are dropped and counted.
const QUEUE: usize = 65_536;

#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Tokens {
    #[serde(
        rename = "gen_ai.usage.input_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub input: Option<u64>,
    #[serde(
        rename = "gen_ai.usage.output_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub output: Option<u64>,
    /// Of the input, read from the provider's prompt cache (where the
    /// provider reports it).
    #[serde(
        rename = "gen_ai.usage.cache_read.input_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_read: Option<u64>,
    /// Of the output, spent on reasoning (where the provider reports it).
    #[serde(
        rename = "gen_ai.usage.reasoning.output_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub reasoning: Option<u64>,
}

/// Token figures the proxy counted itself because the provider did not
/// report them (see `proxy/token_estimate.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokensEstimated {
    /// The tiktoken encoding counted with.
    pub by: &'static str,
    pub input: bool,
    pub output: bool,
}

/// One data class a request carried: how often, and in which places
/// (`body`, `body-key`, `joined`, `query`, `header:<name>`, `part:<field>`).
#[derive(Debug, Clone, Serialize)]
pub struct AuditFinding {
    pub class: String,
    pub count: usize,
    #[serde(rename = "where")]
    pub places: Vec<String>,
}

/// How a realtime (WebSocket) session went.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub protocol: &'static str,
    /// Messages relayed each way (pings and pongs are answered per hop).
    pub client_messages: u64,
    pub upstream_messages: u64,
    /// `client`, `upstream` or `modelgate`.
    pub closed_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub time: String,
    pub decision: Handling,
    pub rule: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "gen_ai.provider.name")]
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub destination: Destination,
    /// `https`, `http` or `tls` (passthrough).
    pub scheme: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Without the query string, which may carry a key (`?key=` on Gemini).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(
        rename = "gen_ai.operation.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub operation: Option<&'static str>,
    #[serde(
        rename = "gen_ai.request.model",
        skip_serializing_if = "Option::is_none"
    )]
    pub model: Option<String>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<usize>,
    pub prompt_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    /// A stream's first chunk (SSE event with data), from the request's
    /// arrival (`gen_ai.client.operation.time_to_first_chunk`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_first_chunk_ms: Option<f64>,
    /// Seconds between a stream's chunks, for every chunk after the first
    /// (`gen_ai.client.operation.time_per_output_chunk`); for the metrics,
    /// not written to the audit trail.
    #[serde(skip)]
    pub chunk_gaps_s: Vec<f32>,
    #[serde(flatten)]
    pub tokens: Tokens,
    /// Set when a token figure is the proxy's estimate, not the provider's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_estimated: Option<TokensEstimated>,
    /// Estimated from the price table, when the model is in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// What data rules replaced before the request left: class → count.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub redacted: std::collections::BTreeMap<String, usize>,
    /// What the deciding rule's data controls found, and where.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<AuditFinding>,
    /// Bytes of the request body sent upstream.
    pub request_bytes: u64,
    /// The request body was streamed upstream as it arrived (an upload
    /// over `client_limits.stream_uploads_over`), not read whole first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub request_streamed: bool,
    /// An upload's `purpose` form field (OpenAI files: `fine-tune`,
    /// `batch`, `assistants`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    pub response_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Same value for every request on one client connection.
    pub connection: u64,
    pub identity: Identity,
}

impl AuditRecord {
    /// The request did not get a good answer: the proxy or the upstream
    /// refused or failed it, or the client left first.
    pub fn failed(&self) -> bool {
        !self.outcome.is_ok() || self.status.is_some_and(|s| s >= 400)
    }

    /// A record with what every one has; the rest is filled as the request
    /// goes.
    pub fn new(
        decision: Handling,
        rule: String,
        provider: String,
        destination: Destination,
        scheme: &'static str,
        connection: u64,
        identity: Identity,
    ) -> AuditRecord {
        AuditRecord {
            time: crate::clock::rfc3339(std::time::SystemTime::now()),
            decision,
            rule,
            outcome: Outcome::Ok,
            error: None,
            provider,
            host: None,
            destination,
            scheme,
            http_version: None,
            method: None,
            path: None,
            operation: None,
            model: None,
            stream: false,
            messages: None,
            prompt_bytes: 0,
            status: None,
            latency_ms: 0.0,
            ttfb_ms: None,
            time_to_first_chunk_ms: None,
            chunk_gaps_s: Vec::new(),
            tokens: Tokens::default(),
            tokens_estimated: None,
            cost_usd: None,
            redacted: Default::default(),
            findings: Vec::new(),
            request_bytes: 0,
            request_streamed: false,
            purpose: None,
            response_bytes: 0,
            stream_events: None,
            session: None,
            prompt_sha256: None,
            output_sha256: None,
            prompt: None,
            output: None,
            connection,
            identity,
        }
    }

    /// Applies the storage choice to prompt and output text.
    pub fn store_text(&mut self, mode: StorePrompts, prompt: &str, output: &str) {
        match mode {
            StorePrompts::None => {}
            StorePrompts::Hash => {
                self.prompt_sha256 = (!prompt.is_empty()).then(|| sha256(prompt));
                self.output_sha256 = (!output.is_empty()).then(|| sha256(output));
            }
            StorePrompts::Full => {
                self.prompt = (!prompt.is_empty()).then(|| prompt.to_string());
                self.output = (!output.is_empty()).then(|| output.to_string());
            }
        }
    }
}

pub fn sha256(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The audit log: `<state>/audit.jsonl`.
pub type AuditLog = JsonlLog<AuditRecord>;

/// What the proxy does while the audit trail cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailure {
    /// Refuse model requests (503) until the audit can be written: no call
    /// goes unaudited.
    #[default]
    Block,
    /// Serve them; their records wait in memory (bounded) for the disk.
    Allow,
}

/// Opens the audit log; a disk that stops (or starts again) taking its
/// records raises an alert saying what the proxy does meanwhile.
pub fn open(
    state_dir: &Path,
    alerts: Alerts,
    mode: AuditFailure,
) -> Result<(AuditLog, JoinHandle<()>), crate::jsonl::OpenError> {
    let path = state_dir.join(FILE_NAME);
    let shown = path.display().to_string();
    JsonlLog::open(&path, "audit", QUEUE, move |change| {
        let alert = match change {
            Change::Failing(err) => {
                let what = match mode {
                    AuditFailure::Block => "model requests are refused until it can",
                    AuditFailure::Allow => {
                        "model requests are served and their records kept in memory meanwhile"
                    }
                };
                let mut alert = Alert::new(
                    "audit-failure",
                    Severity::Critical,
                    format!(
                        "the audit trail {shown} cannot be written ({err}): {what} \
                         (audit_failure: {}); free space or make it writable",
                        if mode == AuditFailure::Block {
                            "block"
                        } else {
                            "allow"
                        }
                    ),
                );
                alert.details.insert("error".into(), err.into());
                alert
            }
            Change::Recovered { written_late } => {
                let mut alert = Alert::new(
                    "audit-failure",
                    Severity::Warning,
                    format!(
                        "the audit trail {shown} is written again; {written_late} records \
                         kept meanwhile are on disk"
                    ),
                );
                alert.details.insert("recovered".into(), true.into());
                alert
                    .details
                    .insert("written_late".into(), written_late.into());
                alert
            }
        };
        alerts.send(alert.with_id());
    })
}
