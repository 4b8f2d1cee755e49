//! Alerts for security: typed, with severity, identity and a stable id, in
//! `<state>/alerts.jsonl`.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::{identity::Identity, jsonl::JsonlLog, record};

pub const FILE_NAME: &str = "alerts.jsonl";
const QUEUE: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    High,
    Critical,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Stable for the same (type, identity, destination): repeats share it.
    pub id: String,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(
        rename = "gen_ai.provider.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Type-specific facts (a key fingerprint, data classes, ...).
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

impl Alert {
    pub fn new(kind: &'static str, severity: Severity, message: String) -> Alert {
        Alert {
            id: String::new(),
            time: record::rfc3339(std::time::SystemTime::now()),
            kind,
            severity,
            message,
            rule: None,
            provider: None,
            host: None,
            identity: None,
            details: Map::new(),
        }
    }

    /// Computes the stable id from what makes two alerts "the same".
    pub fn with_id(mut self) -> Alert {
        let mut hasher = Sha256::new();
        hasher.update(self.kind.as_bytes());
        if let Some(identity) = &self.identity {
            hasher.update(identity.exe.as_deref().unwrap_or("").as_bytes());
            hasher.update(
                identity
                    .cgroup_info
                    .unit
                    .as_deref()
                    .unwrap_or("")
                    .as_bytes(),
            );
            hasher.update(
                identity
                    .cgroup_info
                    .container_id
                    .as_deref()
                    .unwrap_or("")
                    .as_bytes(),
            );
            hasher.update(identity.uid.to_le_bytes());
        }
        hasher.update(self.host.as_deref().unwrap_or("").as_bytes());
        hasher.update(self.rule.as_deref().unwrap_or("").as_bytes());
        let digest = hasher.finalize();
        self.id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self
    }
}

pub type Alerts = JsonlLog<Alert>;

pub fn open(state_dir: &Path) -> Result<(Alerts, JoinHandle<()>)> {
    JsonlLog::open(&state_dir.join(FILE_NAME), "alert", QUEUE)
}

/// A short, non-reversible name for a secret: enough to correlate, never
/// enough to use.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!(
        "sha256:{}",
        digest[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}
