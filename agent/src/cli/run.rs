//! `modelgate run`.

use std::{io::IsTerminal, os::unix::fs::DirBuilderExt, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Args;
use tracing_subscriber::EnvFilter;

use crate::{
    config::{self, FailMode, LogFormat},
    daemon::{self, Settings},
    identity::cgroups,
    policy::{Action, StorePrompts},
    proxy::ProxySettings,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory with endpoints.yaml and policy.yaml.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// cgroup2 directory to attach to (default: the root of the cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Where decision records go (JSON lines): a file, or `-` for stdout.
    #[arg(long, value_name = "FILE|-")]
    events: Option<String>,
    /// Overrides the policy's default action, e.g. start in `monitor`.
    #[arg(long, value_name = "ACTION")]
    default_action: Option<Action>,
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Port of the local policy proxy (0: any free port).
    #[arg(long, value_name = "PORT")]
    proxy_port: Option<u16>,
    /// Extra CA file (PEM) trusted for upstream model servers.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// What the audit keeps of prompts and outputs.
    #[arg(long, value_name = "MODE")]
    store_prompts: Option<StorePrompts>,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// What the kernel does while no agent runs.
    #[arg(long, value_name = "MODE")]
    fail_mode: Option<FailMode>,
    /// Under fail-mode open: how long without a heartbeat before the
    /// kernel only monitors, e.g. 15s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    fail_open_after: Option<std::time::Duration>,
    /// Where programs, links and maps are pinned (on bpffs).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Log each kernel decision on a model endpoint at info.
    #[arg(long)]
    log_decisions: bool,
}

pub fn run(args: RunArgs, common: &super::Common) -> Result<ExitCode> {
    crate::memory::fix_mmap_threshold();
    let file = common.file_config()?;

    let log_format = args.log_format.or(file.log_format).unwrap_or_else(|| {
        // Under systemd stderr goes to the journal: structured is better there.
        if std::env::var_os("JOURNAL_STREAM").is_some() || !std::io::stderr().is_terminal() {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    });
    init_logging(log_format);

    let state_dir = common
        .state_dir
        .clone()
        .or(file.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_STATE_DIR));
    // The CA key and the audit trail live here: private from the start,
    // not only when the package's postinst made the directory.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    warn_if_shared(&state_dir);
    let cgroup_mount = cgroups::find_mount()?;
    let cgroup = args
        .cgroup
        .or(file.cgroup)
        .unwrap_or_else(|| cgroup_mount.clone());
    if !cgroup.starts_with(&cgroup_mount) {
        anyhow::bail!(
            "--cgroup {} is not inside the cgroup2 mount {}",
            cgroup.display(),
            cgroup_mount.display()
        );
    }
    let events = args
        .events
        .or(file.events)
        .unwrap_or_else(|| state_dir.join("events.jsonl").display().to_string());
    let proxy = ProxySettings {
        port: args
            .proxy_port
            .or(file.proxy_port)
            .unwrap_or(config::DEFAULT_PROXY_PORT),
        state_dir: state_dir.clone(),
        upstream_ca: args.upstream_ca.or(file.upstream_ca),
        store_prompts: args
            .store_prompts
            .or(file.store_prompts)
            .unwrap_or_default(),
        limits: {
            let limits = file.client_limits.unwrap_or_default();
            limits
                .check()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the agent configuration is invalid")?;
            limits
        },
        upstream_timeouts: file.upstream_timeouts.unwrap_or_default(),
        audit_failure: file.audit_failure.unwrap_or_default(),
    };
    let settings = Settings {
        policies: args
            .policies
            .or(file.policies)
            .unwrap_or_else(config::default_policies_dir),
        cgroup,
        cgroup_mount,
        events,
        default_action: args.default_action.or(file.default_action),
        metrics_addr: args
            .metrics_addr
            .or(file.metrics_addr)
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
        metrics_token: file
            .metrics_token_file
            .as_deref()
            .map(read_token)
            .transpose()?,
        usage_retention: file
            .usage_retention
            .unwrap_or(crate::usage::DEFAULT_RETENTION),
        proxy,
        alerts: file.alerts,
        otlp: file.otlp,
        pin_dir: crate::ebpf::pins::pin_dir(
            args.pin_dir.as_deref().or(file.pin_dir.as_deref()),
            &state_dir,
        ),
        fail_mode: args.fail_mode.or(file.fail_mode).unwrap_or_default(),
        fail_open_after: fail_open_after(args.fail_open_after.or(file.fail_open_after))?,
        log_decisions: args.log_decisions || file.log_decisions.unwrap_or(false),
    };
    // One worker per CPU this process may run on (tokio's default follows
    // the affinity mask): pinned to one core, one worker, and no task
    // bouncing between threads that share it.
    // State files (audit, usage, events, alerts, spool) carry identities,
    // models and findings: owner read-write, group read, nothing for
    // others, whatever the mode of the directory they are created in.
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o027) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(daemon::run(settings))?;
    Ok(ExitCode::SUCCESS)
}

/// The bearer token in `path` (surrounding whitespace trimmed).
fn read_token(path: &std::path::Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading metrics_token_file {}", path.display()))?;
    let token = token.trim();
    if token.len() < 16 || token.chars().any(|c| !c.is_ascii_graphic()) {
        anyhow::bail!(
            "metrics_token_file {}: the token must be at least 16 printable characters without spaces (e.g. `openssl rand -hex 32 > {}`)",
            path.display(),
            path.display()
        );
    }
    Ok(token.to_string())
}

/// Whole seconds the kernel can count (it keeps them in 16 bits), and more
/// than the agent's heartbeat period, or a running agent would look gone.
fn fail_open_after(configured: Option<std::time::Duration>) -> Result<std::time::Duration> {
    let after = configured.unwrap_or(config::DEFAULT_FAIL_OPEN_AFTER);
    if !(3..=u64::from(u16::MAX)).contains(&after.as_secs()) {
        anyhow::bail!(
            "fail_open_after is {}; give 3s to 18h (whole seconds)",
            humantime::format_duration(after)
        );
    }
    Ok(std::time::Duration::from_secs(after.as_secs()))
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("MODELGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// A state directory made before the agent (by hand, or by an older
/// version) may let other users read the CA key and the audit trail.
fn warn_if_shared(state_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(state_dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the state directory {} has mode {mode:o}: other users may read the CA key and the audit trail; run `chmod 700 {}`",
                state_dir.display(),
                state_dir.display()
            );
        }
    }
}
