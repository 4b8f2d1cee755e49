//! `modelgate run`: the agent's wiring. One task owns the kernel maps, the
//! policy and the caches; events, resolver answers, signals and a timer are
//! its inputs, so no state is shared and no lock is taken on the hot path.
//!
//! The [`Agent`] is that task's state; its work is split by job:
//! `start` (wiring and the select loop), `events` (what the kernel reports),
//! `enforce` (the policy written into the kernel maps), `reload`, `tick`
//! (periodic work), `lookup` (who a process is) and `exec` (executable
//! identity at exec time); `status` answers the control socket.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

mod enforce;
mod events;
mod exec;
mod lookup;
mod reload;
mod start;
mod status;
#[cfg(test)]
mod tests;
mod tick;

pub use start::run;

use self::status::Facts;
use crate::{
    alerts::{self, Alerts},
    budget::Budgets,
    catalog::{Catalog, learned::Learned, resolver::ResolvedHosts},
    config::FailMode,
    ebpf::{self, endpoints::EndpointSet, maps::Maps},
    heartbeat::Heartbeat,
    identity::{cgroups::CgroupIndex, procs::ProcCache, users::Users},
    live::Live,
    metrics::Metrics,
    policy::{
        Action,
        compile::{Compiled, Ids},
    },
    proxy::{ProxySettings, SharedPolicy},
    sink::Sink,
    usage,
};

const TICK: Duration = Duration::from_secs(5);
/// Events handled per turn of the main loop.
const DRAIN_BATCH: usize = 512;
/// How often the kernel hears from us; `fail_open_after` is at least 3 s.
const KERNEL_BEAT: Duration = Duration::from_secs(1);

pub struct Settings {
    pub policies: PathBuf,
    pub cgroup: PathBuf,
    pub cgroup_mount: PathBuf,
    pub events: String,
    pub default_action: Option<Action>,
    pub metrics_addr: std::net::SocketAddr,
    /// The bearer token `/metrics` asks for, if any.
    pub metrics_token: Option<String>,
    pub usage_retention: Duration,
    pub proxy: ProxySettings,
    pub alerts: alerts::AlertsConfig,
    pub otlp: Option<crate::otlp::OtlpConfig>,
    pub pin_dir: PathBuf,
    pub fail_mode: FailMode,
    pub fail_open_after: Duration,
    pub log_decisions: bool,
}

/// How long proxied requests in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the OTLP exporter may take to send what is queued at shutdown.
const OTLP_FLUSH: Duration = Duration::from_secs(5);

struct Agent {
    maps: Box<dyn Maps>,
    ids: Ids,
    catalog: Catalog,
    compiled: Compiled,
    settings: Settings,
    generation: u32,
    resolved: ResolvedHosts,
    /// Addresses the kernel learned from DNS answers, with their TTLs.
    learned: Learned,
    endpoints: EndpointSet,
    hosts_tx: watch::Sender<Vec<String>>,
    procs: ProcCache,
    cgroups: CgroupIndex,
    users: Users,
    sink: Sink,
    decode_errors: u64,
    lost_reported: u64,
    unknown_cgroups: HashMap<u64, Instant>,
    proxy_port: u16,
    metrics: Arc<Metrics>,
    heartbeat: Option<Heartbeat>,
    attachments: Option<ebpf::tamper::Attachments>,
    /// Programs last found detached (reported already).
    tampered: Vec<&'static str>,
    shared_policy: SharedPolicy,
    budgets: Arc<Mutex<Budgets>>,
    alerts: Alerts,
    usage: usage::UsageLog,
    /// Processes whose model connects are blocked until the instant, by
    /// the named rule (a proxy quarantine verdict).
    quarantined: HashMap<u32, (Instant, String)>,
    live: Arc<Live>,
    facts: Facts,
    /// The kernel reads which file a process executes (BTF offsets found).
    exe_identity: bool,
    /// Digests of executables, by file version.
    digests: crate::identity::exe::DigestCache,
    /// Files whose verdict the exec hook knows.
    vetted: HashMap<agent_common::ExeKey, exec::Vetted>,
    /// Sizes of the files the policy's literal `exe` paths name.
    rule_sizes: std::collections::HashSet<i64>,
    /// The versions of the files literal `exe` paths name, to notice an
    /// upgrade.
    rule_files: HashMap<String, agent_common::ExeFile>,
}

impl Agent {
    pub(super) fn default_action(&self) -> Action {
        self.settings
            .default_action
            .unwrap_or(self.compiled.policy.default_action)
    }
}
