//! What `modelgate status` shows, as the control API sends it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::metrics::RequestTotals;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started: String,
    pub uptime_s: u64,
    pub attach: Attach,
    pub policy: PolicyStatus,
    /// The kernel programs' counters: connects per action, events lost, ...
    pub counters: BTreeMap<String, u64>,
    pub maps: Vec<MapStatus>,
    pub proxy: ProxyStatus,
    pub metrics: String,
    pub control: String,
    pub sinks: Vec<SinkHealth>,
    /// Alerts accepted but not yet delivered by every sink.
    pub alerts_pending: u64,
    #[serde(default)]
    pub memory: crate::memory::Memory,
    /// Requests the proxy audited since start.
    #[serde(default)]
    pub requests: RequestTotals,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attach {
    pub cgroup: String,
    pub programs: Vec<Program>,
    /// Where the links and maps are pinned: they outlive the agent.
    #[serde(default)]
    pub pins: String,
    /// What the kernel does while no agent runs: closed or open.
    #[serde(default)]
    pub fail_mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Program {
    pub name: String,
    pub attached: bool,
    /// `cgroup` (checked against the kernel at each status) or `host` (a
    /// host-wide tracepoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub dir: String,
    /// SHA-256 of the policy files (first 12 hex digits): the same files
    /// give the same version on every host.
    pub version: String,
    pub loaded: String,
    /// Bumped at every change written to the kernel maps.
    pub generation: u32,
    pub providers: usize,
    pub rules: usize,
    /// The default action in force.
    pub default_action: String,
    /// Where it comes from: `policy` (the file) or `override`
    /// (`--default-action` or agent.yaml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action_from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapStatus {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub listeners: Vec<String>,
    /// Client connections accepted since start.
    pub connections: u64,
}

/// One place records or alerts go; `lost > 0` means something never got
/// there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkHealth {
    pub name: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    pub lost: u64,
    #[serde(default)]
    pub pending: u64,
}

impl SinkHealth {
    pub fn state(&self) -> &'static str {
        if self.lost > 0 { "degraded" } else { "ok" }
    }
}

/// The answer to a reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    pub version: String,
    pub generation: u32,
    pub providers: usize,
    pub rules: usize,
}
