//! Agent settings: flags override the config file, which overrides the
//! built-in defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{
    alerts::AlertsConfig,
    policy::{Action, StorePrompts},
    yaml::{self, FileErrors},
};

pub const DEFAULT_CONFIG: &str = "/etc/modelgate/agent.yaml";
pub const DEFAULT_POLICIES: &str = "/etc/modelgate/policies";
pub const DEFAULT_STATE_DIR: &str = crate::layout::STATE_DIR;
pub const DEFAULT_PROXY_PORT: u16 = 15443;

/// What the kernel does with model traffic while no agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// The programs keep enforcing the last policy: blocked stays blocked,
    /// redirected calls fail (the proxy is down) until the agent is back.
    #[default]
    Closed,
    /// Once the agent has missed its heartbeat for `fail_open_after`, the
    /// kernel only monitors: calls go out directly and are reported when
    /// the agent is back.
    Open,
}

impl std::fmt::Display for FailMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        })
    }
}

pub const DEFAULT_FAIL_OPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text; the default on a terminal.
    #[default]
    Text,
    /// One JSON object per line; the default under systemd.
    Json,
}

/// `agent.yaml`. Every field is optional; unknown fields are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Directory with endpoints.yaml and policy.yaml.
    pub policies: Option<PathBuf>,
    /// cgroup2 directory to attach to; default: the root of the cgroup2 mount.
    pub cgroup: Option<PathBuf>,
    /// Where decision records go: a file path, or `-` for stdout.
    /// Default: `<state_dir>/events.jsonl`.
    pub events: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// Overrides the policy's default action (e.g. `monitor` while rolling out).
    pub default_action: Option<Action>,
    pub log_format: Option<LogFormat>,
    /// Port of the local policy proxy on 127.0.0.1 and ::1 (default 15443;
    /// 0 picks a free one).
    pub proxy_port: Option<u16>,
    /// Extra CA (PEM) the proxy trusts for upstream servers, beside the
    /// system's roots: a private gateway or a test's stand-in.
    pub upstream_ca: Option<PathBuf>,
    /// What the audit keeps of prompts and outputs: none, hash or full.
    pub store_prompts: Option<StorePrompts>,
    /// Where Prometheus scrapes `/metrics` (default 127.0.0.1:9464; port 0
    /// picks a free one).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// A file holding a bearer token: `/metrics` then answers only a
    /// scraper that sends `Authorization: Bearer <token>` (Prometheus:
    /// `authorization: {credentials_file: ...}`). Without it, any local
    /// process can read the workload and model names it carries.
    pub metrics_token_file: Option<PathBuf>,
    /// How long the usage store keeps rows, e.g. 30d (the default), 90d.
    #[serde(with = "crate::policy::controls::humantime_serde_opt")]
    pub usage_retention: Option<std::time::Duration>,
    /// Where alerts go: the rotated file, syslog, webhooks; and folding.
    pub alerts: AlertsConfig,
    /// What the kernel does while no agent runs: closed (the default) or open.
    pub fail_mode: Option<FailMode>,
    /// Under `fail_mode: open`, how long without a heartbeat before the
    /// kernel only monitors (default 15s; whole seconds, 3s to 18h).
    #[serde(with = "crate::policy::controls::humantime_serde_opt")]
    pub fail_open_after: Option<std::time::Duration>,
    /// Where programs, links and maps are pinned (bpffs) so a restarted or
    /// upgraded agent adopts them; default /sys/fs/bpf/modelgate.
    pub pin_dir: Option<PathBuf>,
    /// While the audit trail cannot be written: block (the default: refuse
    /// model requests) or allow (serve them, records kept in memory).
    pub audit_failure: Option<crate::audit::AuditFailure>,
    /// What one client may cost the proxy: timeouts, sizes, connections.
    pub client_limits: Option<crate::proxy::ClientLimits>,
    /// How long the proxy waits on a model server: for its response, and
    /// between pieces of its body.
    pub upstream_timeouts: Option<crate::proxy::UpstreamTimeouts>,
    /// One info log line per kernel decision on a model endpoint (never
    /// per packet); default false: the decisions are in the events file.
    pub log_decisions: Option<bool>,
    /// OpenTelemetry export of audit records and metrics (absent: none).
    pub otlp: Option<crate::otlp::OtlpConfig>,
}

impl FileConfig {
    /// Reads `path`; a missing file at the default location means defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<FileConfig, FileErrors> {
        if !explicit && !path.exists() {
            return Ok(FileConfig::default());
        }
        let text = yaml::read(path)?;
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        Ok(yaml::parse(&path.display().to_string(), &text)?)
    }
}

/// The policies directory when none is given: the installed one, else the
/// `policies/` of the checkout this binary was built from (or the current
/// directory's), so `cargo xtask run` works from a clone.
pub fn default_policies_dir() -> PathBuf {
    let installed = PathBuf::from(DEFAULT_POLICIES);
    if installed.join(crate::catalog::FILE_NAME).exists() {
        return installed;
    }
    for candidate in [
        PathBuf::from("policies"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
    ] {
        if candidate.join(crate::catalog::FILE_NAME).exists() {
            return candidate;
        }
    }
    installed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "state_dir: /tmp/x\npolicy_dir: /etc\n").unwrap();
        let err = FileConfig::load(&path, true).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `policy_dir`"),
            "{err}"
        );
        assert!(
            err.to_string().contains(":2:"),
            "line of the bad key: {err}"
        );
    }

    #[test]
    fn the_alerts_section_is_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(
            &path,
            "alerts:\n  fold_window: 30s\n  webhooks:\n    - url: https://siem.example/h\n      sekret_env: X\n",
        )
        .unwrap();
        let err = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(err.contains("unknown field `sekret_env`"), "{err}");
        assert!(err.contains(":5:"), "line of the bad key: {err}");
        std::fs::write(&path, "alerts:\n  fold_window: 30s\n").unwrap();
        let config = FileConfig::load(&path, true).unwrap();
        assert_eq!(config.alerts.fold_window.as_secs(), 30);
    }

    /// The commented default /etc/modelgate/agent.yaml the package ships:
    /// its active keys must stay valid, and equal to the built-in defaults.
    #[test]
    fn the_shipped_agent_yaml_parses_and_states_the_defaults() {
        let text = include_str!("../../packaging/agent.yaml");
        let config: FileConfig = yaml::parse("packaging/agent.yaml", text)
            .unwrap_or_else(|err| panic!("packaging/agent.yaml must parse: {err}"));
        assert_eq!(
            config.policies.as_deref(),
            Some(Path::new(DEFAULT_POLICIES))
        );
        assert_eq!(
            config.state_dir.as_deref(),
            Some(Path::new(DEFAULT_STATE_DIR))
        );
        assert_eq!(config.proxy_port, Some(DEFAULT_PROXY_PORT));
        assert_eq!(config.store_prompts, Some(StorePrompts::None));
        assert_eq!(
            config.metrics_addr,
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(
            config.usage_retention,
            Some(crate::usage::DEFAULT_RETENTION)
        );
        let alerts = crate::alerts::settings::AlertsConfig::default();
        assert_eq!(config.alerts.fold_window, alerts.fold_window);
        assert_eq!(config.alerts.file.max_bytes, alerts.file.max_bytes);
        assert_eq!(config.alerts.file.keep, alerts.file.keep);
        assert!(config.otlp.is_none(), "otlp is opt-in");
    }

    /// Every commented-out option of the shipped file, switched on, is an
    /// option the agent accepts with the example value given: the comments
    /// cannot describe keys or values that do not exist.
    #[test]
    fn every_commented_option_of_the_shipped_agent_yaml_is_real() {
        let option = regex::Regex::new(r"^(\s*)# (\s*(?:- )?([a-z_]+):(?: .*)?)$").unwrap();
        let mut enabled = String::new();
        for line in include_str!("../../packaging/agent.yaml").lines() {
            match option.captures(line) {
                Some(c) => {
                    enabled.push_str(&c[1]);
                    enabled.push_str(&c[2]);
                }
                None => enabled.push_str(line),
            }
            enabled.push('\n');
        }
        let config: FileConfig = yaml::parse("packaging/agent.yaml (all enabled)", &enabled)
            .unwrap_or_else(|err| panic!("{err}\n{enabled}"));
        assert!(config.cgroup.is_some() && config.events.is_some());
        assert!(config.default_action.is_some() && config.upstream_ca.is_some());
        assert_eq!(config.log_format, Some(LogFormat::Json));
        assert!(config.alerts.file.path.is_some());
        assert!(config.alerts.syslog.is_some(), "syslog example");
        assert_eq!(config.alerts.webhooks.len(), 1, "webhook example");
        let otlp = config.otlp.expect("otlp example");
        assert!(otlp.ca_file.is_some() && !otlp.resource.is_empty());
    }

    #[test]
    fn missing_default_file_means_defaults() {
        let config = FileConfig::load(Path::new("/nonexistent/agent.yaml"), false).unwrap();
        assert!(config.policies.is_none());
        assert!(FileConfig::load(Path::new("/nonexistent/agent.yaml"), true).is_err());
    }
}
