//! Alerts for security: typed, with severity, identity and a stable id;
//! repeats folded, and delivered to every configured sink — a rotated
//! JSON-lines file, syslog, webhooks — each on its own, so one slow or
//! failing sink never holds up another. Webhooks spool to disk first and
//! deliver at least once, in order, across outages and restarts.
//!
//! ```text
//! send() ─▶ queue ─▶ fold (per id, per window) ─┬─▶ file     (rotated alerts.jsonl)
//!                                               ├─▶ syslog   (RFC 5424)
//!                                               └─▶ webhook  ─▶ spool (fsync) ─▶ POST, retry, ack
//! ```
//!
//! Every loss (a full queue, a failed write, a refused or overflowing
//! webhook) is counted in [`Stats`] and logged.

pub mod backoff;
mod dispatch;
#[cfg(test)]
mod docs_tests;
pub mod file;
mod fold;
pub mod query;
pub mod settings;
mod spool;
pub mod stats;
pub mod syslog;
mod webhook;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use self::{
    dispatch::{AlertCounters, Alerts, open},
    settings::AlertsConfig,
};
use crate::identity::Identity;

pub const FILE_NAME: &str = "alerts.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    // Not raised yet; part of the model for the informational alerts to come.
    #[allow(dead_code)]
    Info,
    Warning,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Stable for the same (type, identity, destination): repeats share it.
    pub id: String,
    /// When this occurrence (for a folded alert: the latest one) happened.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
    /// Occurrences from `first_seen` to `last_seen`: repeats within the fold
    /// window arrive as one alert with the same id and a higher count.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
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
        let time = crate::clock::rfc3339(std::time::SystemTime::now());
        Alert {
            id: String::new(),
            first_seen: time.clone(),
            last_seen: time.clone(),
            time,
            kind,
            severity,
            message,
            count: 1,
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
        self.id = hex(&digest[..8]);
        self
    }

    /// The executable, else the command name: who, in one word.
    pub fn exe(&self) -> Option<&str> {
        let identity = self.identity.as_ref()?;
        identity
            .exe
            .as_deref()
            .or(Some(identity.comm.as_str()).filter(|c| !c.is_empty()))
    }

    pub fn unit(&self) -> Option<&str> {
        self.identity.as_ref()?.cgroup_info.unit.as_deref()
    }

    pub fn container(&self) -> Option<&str> {
        self.identity.as_ref()?.cgroup_info.container_id.as_deref()
    }

    pub fn pid(&self) -> Option<u32> {
        self.identity.as_ref().map(|i| i.tgid)
    }
}

/// A short, non-reversible name for a secret: enough to correlate, never
/// enough to use.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("sha256:{}", hex(&digest[..6]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::cgroup_path::CgroupInfo;

    /// An alert as the proxy raises them, for the sink tests.
    pub fn sample(kind: &'static str, exe: &str) -> Alert {
        let mut alert = Alert::new(
            kind,
            Severity::High,
            format!("{exe} sent its own provider key"),
        );
        alert.rule = Some("managed".into());
        alert.provider = Some("openai".into());
        alert.host = Some("api.openai.com".into());
        alert.identity = Some(Identity {
            pid: 4242,
            tgid: 4242,
            comm: "python3".into(),
            exe: Some(exe.into()),
            cgroup_info: CgroupInfo {
                unit: Some("batch.service".into()),
                ..CgroupInfo::default()
            },
            ..Identity::default()
        });
        alert.with_id()
    }

    #[test]
    fn the_id_names_type_identity_and_destination_not_time() {
        let a = sample("unmanaged-key", "/usr/bin/python3");
        let mut b = sample("unmanaged-key", "/usr/bin/python3");
        b.time = "2030-01-01T00:00:00Z".into();
        b.message = "another wording".into();
        assert_eq!(a.clone().with_id().id, b.with_id().id);
        assert_eq!(a.id.len(), 16);
        assert_ne!(a.id, sample("unmanaged-key", "/usr/bin/node").id);
        assert_ne!(a.id, sample("data-finding", "/usr/bin/python3").id);
    }

    #[test]
    fn a_new_alert_is_one_occurrence() {
        let alert = Alert::new("quarantine", Severity::Critical, "x".into());
        assert_eq!(alert.count, 1);
        assert_eq!(alert.first_seen, alert.time);
        assert_eq!(alert.last_seen, alert.time);
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["count"], 1);
        assert_eq!(json["severity"], "critical");
        assert_eq!(
            serde_json::to_value(Severity::Info).unwrap(),
            Value::from("info")
        );
    }

    #[test]
    fn fingerprints_are_short_and_stable() {
        assert_eq!(fingerprint("sk-test"), fingerprint("sk-test"));
        assert_eq!(fingerprint("sk-test").len(), "sha256:".len() + 12);
    }
}
