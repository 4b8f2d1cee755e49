//! The setup every bench through the proxy shares: `bench proxy`,
//! `classify`, `usage` and `soak` run their clients through it; `bench dns`
//! uses [`prepare`] and the CPU helpers.
//!
//! A stand-in model server listens on 127.0.0.9:443 (an endpoint of the
//! bench catalog, default action `redirect`) inside this process. Two
//! sibling cgroups; the agent attaches to "on" only, so a client there is
//! sent through the agent's TLS-terminating proxy while one in "off"
//! reaches the server directly. [`Rig`] is that setup, and [`Rig::run`] one
//! client run; each bench brings its own policies and request body.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;

use super::{
    CGROUP_PREFIX,
    agent::Agent,
    client::{self, place},
    http_client::Mode,
    upstream::{Counts, Pki, Upstream},
};
use crate::{
    build_cmd,
    cgroup::{self, ChildCgroup},
    util,
};

pub(super) const UPSTREAM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 443);
const HOST: &str = "api.openai.com";
pub(super) const CLIENT_CPU: usize = 0;
pub(super) const AGENT_CPU: usize = 1;
/// Set in the optimized build we re-run as, so it never re-runs itself.
const REEXEC_ENV: &str = "MODELGATE_BENCH_OPTIMIZED";
/// The agent reloads 300 ms after the last change it sees; this is ample.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

const ENDPOINTS_YAML: &str = "\
# Written by `cargo xtask bench proxy` (or `bench classify`): the stand-in
# model server.
providers:
  - name: openai
    api: openai
    hosts: [api.openai.com]
    addresses: [127.0.0.9]
";
pub(super) const POLICY_YAML: &str = "\
# Written by `cargo xtask bench proxy`.
default_action: redirect
rules: []
";
const AGENT_YAML: &str = "\
# Written by `cargo xtask bench proxy` (or `bench classify`).
proxy_port: 0
";

/// What every bench through the proxy does first: checks that we are root,
/// re-runs optimized, builds the release agent (returning its path) and
/// catches Ctrl-C. `bench` names the command and `listens` where its
/// server listens, for messages.
pub(super) fn prepare(bench: &str, listens: &str) -> Result<PathBuf> {
    if !util::is_root() {
        bail!(
            "the bench creates cgroups, listens on {listens} and loads eBPF programs: run as \
             root (sudo -E cargo xtask bench {bench})"
        );
    }
    reexec_optimized()?;
    let bin = build_cmd::build(true)?;
    super::catch_ctrl_c();
    Ok(bin)
}

/// The client and the stand-in server are this binary, which `cargo xtask`
/// builds unoptimized: TLS and HTTP there would cost several times what
/// they cost an SDK, and the direct baseline would mostly measure that. So
/// build xtask with the release profile and re-run this command with it.
fn reexec_optimized() -> Result<()> {
    if !cfg!(debug_assertions) || std::env::var_os(REEXEC_ENV).is_some() {
        return Ok(());
    }
    println!("bench: building an optimized xtask for the client and the stand-in server");
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "--package", "xtask"]);
    util::run_checked(
        &mut cmd,
        "building xtask with the release profile",
        "fix the compile errors above",
    )?;
    let exe = util::target_dir().join("release").join("xtask");
    let err = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .exec();
    Err(err).with_context(|| format!("running the optimized xtask {}", exe.display()))
}

/// The agent attached to the "on" cgroup with a policy that redirects the
/// stand-in server's address to its proxy, the server, and the cgroups a
/// client runs in. Its files are `target/xtask/bench-<bench>-*`.
pub(super) struct Rig {
    // Fields drop in order: the agent stops before the server and the
    // cgroups go.
    agent: Agent,
    upstream: Upstream,
    on: ChildCgroup,
    off: ChildCgroup,
    exe: PathBuf,
    /// The server's CA and the agent's: a client trusts both.
    cas: [PathBuf; 2],
    /// The CPU the clients and the server run on, when pinned.
    cpu: Option<usize>,
    policies: PathBuf,
    /// Where a new policy is written before it is renamed into place.
    staged_policy: PathBuf,
    /// The agent's state directory (`modelgate status --state-dir`).
    pub state_dir: PathBuf,
    /// The agent's audit log: one record per proxied request.
    pub audit: PathBuf,
    pub log: PathBuf,
}

/// What a client run does besides its mode.
#[derive(Default)]
pub(super) struct ClientOpts<'a> {
    /// Measured requests of a sequential mode (the streaming one makes a
    /// quarter as many).
    pub requests: u32,
    /// Length of a load run.
    pub seconds: u64,
    /// Connections of a load run.
    pub clients: u32,
    /// A request body to send instead of the client's short chat request.
    pub body: Option<&'a Path>,
    /// Content chunks of a streamed answer (the server's default if 0).
    pub chunks: usize,
    /// Milliseconds between a streamed answer's chunks.
    pub chunk_delay_ms: u64,
}

impl Rig {
    /// Creates the cgroups, starts the server and starts the agent with
    /// `policy` as its policy.yaml. `bench` names the files and cgroups.
    pub fn start(bin: &Path, bench: &str, policy: &str) -> Result<Rig> {
        let mount = cgroup::mount()?;
        super::remove_stale_cgroups(&mount);
        let pid = std::process::id();
        let off = ChildCgroup::create(&mount, &format!("{CGROUP_PREFIX}{bench}-off-{pid}"))?;
        let on = ChildCgroup::create(&mount, &format!("{CGROUP_PREFIX}{bench}-on-{pid}"))?;

        let dir = util::xtask_dir();
        let file = |name: &str| dir.join(format!("bench-{bench}-{name}"));
        let state_dir = file("state");
        fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let pki = Pki::new(HOST)?;
        let upstream_ca = file("upstream-ca.pem");
        fs::write(&upstream_ca, &pki.ca_pem)
            .with_context(|| format!("writing {}", upstream_ca.display()))?;
        let pin = client::can_use_cpu(CLIENT_CPU) && client::can_use_cpu(AGENT_CPU);
        if !pin {
            println!(
                "bench: CPUs {CLIENT_CPU} and {AGENT_CPU} are not both in this process's \
                 affinity mask; nothing is pinned"
            );
        }
        let upstream = Upstream::start(SocketAddr::V4(UPSTREAM), &pki, pin.then_some(CLIENT_CPU))?;

        let policies = file("policies");
        super::write_files(
            &policies,
            &[("endpoints.yaml", ENDPOINTS_YAML), ("policy.yaml", policy)],
        )?;
        let config = file("agent.yaml");
        fs::write(&config, AGENT_YAML).with_context(|| format!("writing {}", config.display()))?;
        let events = file("events.jsonl");
        let audit = state_dir.join("audit.jsonl");
        let log = file("agent.log");
        // Stale files would make their records look like this run's.
        let _ = fs::remove_file(&events);
        let _ = fs::remove_file(&audit);
        println!(
            "bench: starting the agent on {} (log: {})",
            on.path().display(),
            log.display()
        );
        let agent = Agent::start(&super::agent::Paths {
            bin,
            policies: &policies,
            cgroup: on.path(),
            events: &events,
            state_dir: &state_dir,
            log: &log,
            config: Some(&config),
            upstream_ca: Some(&upstream_ca),
            cpu: pin.then_some(AGENT_CPU),
        })?;
        println!(
            "bench: agent pid {}, proxy {}{}; upstream {UPSTREAM} as {HOST}{}",
            agent.pid(),
            agent
                .ready_field("proxy")
                .as_deref()
                .unwrap_or("(not logged)"),
            if pin {
                format!(" on CPU {AGENT_CPU}")
            } else {
                String::new()
            },
            if pin {
                format!(", it and the client on CPU {CLIENT_CPU}")
            } else {
                String::new()
            },
        );
        Ok(Rig {
            agent,
            upstream,
            on,
            off,
            exe: std::env::current_exe()
                .context("finding the xtask binary for the bench client")?,
            cas: [upstream_ca, state_dir.join("ca.pem")],
            cpu: pin.then_some(CLIENT_CPU),
            policies,
            staged_policy: file("policy.yaml.new"),
            state_dir,
            audit,
            log,
        })
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent.pid()
    }

    /// The body of the latest request the server answered.
    pub fn last_body(&self) -> Bytes {
        self.upstream.last_body()
    }

    /// Replaces policy.yaml and waits until the agent has reloaded it and
    /// says it now has `rules` rules. The file is written next to the
    /// policies directory and renamed into it, so the agent never reads a
    /// half-written one.
    pub fn set_policy(&mut self, policy: &str, rules: u64) -> Result<()> {
        let mark = self.agent.log_mark();
        let target = self.policies.join("policy.yaml");
        fs::write(&self.staged_policy, policy)
            .with_context(|| format!("writing {}", self.staged_policy.display()))?;
        fs::rename(&self.staged_policy, &target).with_context(|| {
            format!(
                "renaming {} to {}",
                self.staged_policy.display(),
                target.display()
            )
        })?;
        let record = self.agent.wait_logged(
            mark,
            "policy reloaded",
            &["reload refused", "applying the reloaded policy failed"],
            RELOAD_TIMEOUT,
        )?;
        let loaded = record.get("rules").and_then(|r| r.as_u64());
        if loaded != Some(rules) {
            bail!(
                "after writing {} the agent reloaded a policy with {} rules, not {rules}: {record}",
                target.display(),
                loaded.map_or("an unknown number of".into(), |n| n.to_string())
            );
        }
        Ok(())
    }

    /// Stops the agent, then the server; removes the cgroups. Returns the
    /// agent's exit status and log.
    pub fn finish(self) -> Result<(ExitStatus, String)> {
        let Rig {
            agent, upstream, ..
        } = self;
        let stopped = agent.stop();
        drop(upstream);
        stopped
    }

    /// A client run labelled with its mode and side (`latency proxied`).
    pub fn run(&self, opts: &ClientOpts, mode: Mode, proxied: bool) -> Result<Run> {
        self.run_labeled(opts, mode, proxied, run_label(mode, proxied))
    }

    /// Runs `exe bench-proxy-client` in the "on" cgroup when `proxied`, else
    /// in "off", reads its result line and prints it after `label`.
    pub fn run_labeled(
        &self,
        opts: &ClientOpts,
        mode: Mode,
        proxied: bool,
        label: String,
    ) -> Result<Run> {
        super::check_interrupted()?;
        let cgroup = if proxied { &self.on } else { &self.off };
        let requests = match mode {
            Mode::Stream => opts.requests / 4,
            _ => opts.requests,
        };
        let mut cmd = Command::new(&self.exe);
        cmd.arg("bench-proxy-client")
            .args(["--mode", mode_name(mode)])
            .args(["--addr", &UPSTREAM.to_string(), "--host", HOST])
            .args(["--requests", &requests.to_string()])
            .args(["--seconds", &opts.seconds.to_string()])
            .args(["--clients", &opts.clients.to_string()]);
        for ca in &self.cas {
            cmd.arg("--ca").arg(ca);
        }
        if let Some(body) = opts.body {
            cmd.arg("--body-file").arg(body);
        }
        if opts.chunks > 0 {
            cmd.args(["--chunks", &opts.chunks.to_string()]);
        }
        cmd.args(["--chunk-delay-ms", &opts.chunk_delay_ms.to_string()]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(&mut cmd, Some(cgroup), self.cpu)?;
        let before = self.upstream.counts();
        let out = cmd.output();
        super::check_interrupted()?;
        let out = out.with_context(|| {
            format!(
                "starting the bench client in {} (`{}`)",
                cgroup.path().display(),
                util::display(&cmd)
            )
        })?;
        if !out.status.success() {
            bail!(
                "the bench client failed ({}) in {}",
                out.status,
                cgroup.path().display()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        let run = Run {
            mode,
            proxied,
            label,
            out: serde_json::from_str(line)
                .with_context(|| format!("the bench client printed {text:?}, not a JSON line"))?,
            upstream: self.upstream.counts().since(before),
        };
        println!("  {}: {}", run.label, summary(&run));
        Ok(run)
    }
}

/// One client run: its JSON result and what the server counted meanwhile.
pub(super) struct Run {
    mode: Mode,
    proxied: bool,
    label: String,
    out: serde_json::Value,
    pub upstream: Counts,
}

impl Run {
    pub fn get(&self, key: &str) -> f64 {
        self.out
            .get(key)
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN)
    }

    pub fn count(&self, key: &str) -> u64 {
        self.out.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// `latency proxied`, `stream direct`, ...
pub(super) fn run_label(mode: Mode, proxied: bool) -> String {
    let side = if proxied { "proxied" } else { "direct" };
    format!("{} {side}", mode_name(mode))
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Latency => "latency",
        Mode::Stream => "stream",
        Mode::Load => "load",
        Mode::StreamLoad => "stream-load",
    }
}

fn summary(run: &Run) -> String {
    let completed = super::group(run.count("completed"));
    match run.mode {
        Mode::Latency => format!(
            "p50 {:.0} µs, p99 {:.0} µs ({completed} requests)",
            run.get("p50_us"),
            run.get("p99_us")
        ),
        Mode::Stream => format!(
            "first byte p50 {:.0} µs p99 {:.0} µs, last byte p50 {:.0} µs p99 {:.0} µs, \
             chunks late p50 {:.0} µs p99 {:.0} µs max {:.0} µs ({completed} requests)",
            run.get("first_p50_us"),
            run.get("first_p99_us"),
            run.get("last_p50_us"),
            run.get("last_p99_us"),
            run.get("late_p50_us"),
            run.get("late_p99_us"),
            run.get("late_max_us"),
        ),
        Mode::Load | Mode::StreamLoad => {
            let errors = run.count("errors");
            let first = run.out.get("first_error").and_then(|e| e.as_str());
            format!(
                "{completed} requests in {:.1} s, {} errors{}",
                run.get("seconds"),
                super::group(errors),
                first.map(|e| format!(" (first: {e})")).unwrap_or_default()
            )
        }
    }
}

/// Every request a client completed reached the server, once.
pub(super) fn check_upstream(runs: &[&Run]) {
    let mut parts = Vec::new();
    for run in runs {
        let (completed, counted) = (run.count("completed"), run.upstream.total());
        if completed != counted {
            eprintln!(
                "bench: WARNING: {}: the clients completed {completed} requests but the \
                     server counted {counted}",
                run.label
            );
        }
        parts.push(format!(
            "{} {}/{} (HTTP/1.1 {}, h2 {})",
            run.label, counted, completed, run.upstream.http1, run.upstream.http2
        ));
    }
    println!("upstream counted / clients completed: {}", parts.join("; "));
}

/// One audit record per proxied request, every one `ok`.
pub(super) fn check_audit(runs: &[&Run], audit: &Path) {
    let proxied: u64 = runs
        .iter()
        .filter(|r| r.proxied)
        .map(|r| r.count("completed"))
        .sum();
    let text = fs::read_to_string(audit).unwrap_or_default();
    let records = text.lines().count() as u64;
    let not_ok = text
        .lines()
        .filter(|l| !l.contains(r#""outcome":"ok""#))
        .count();
    if records == proxied && not_ok == 0 {
        println!(
            "audit: {} records in {} for {} proxied requests completed: match",
            super::group(records),
            audit.display(),
            super::group(proxied)
        );
        return;
    }
    eprintln!(
        "bench: WARNING: AUDIT MISMATCH: {} has {records} records ({not_ok} not `ok`) for \
             {proxied} proxied requests the clients completed",
        audit.display()
    );
}

/// A process's user + system CPU time, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which may hold spaces and ")":
    // state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(14 - 3), ticks(15 - 3)) else {
        bail!("no utime/stime in {path}: {text:?}");
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok((utime + stime) as f64 / hz.max(1) as f64)
}

/// A process's resident set, in KiB.
pub(super) fn vm_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Sets the CPU affinity of every thread of `pid`: one CPU, or all.
pub(super) fn set_affinity(pid: u32, cpu: Option<usize>) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET only touches the local set.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        match cpu {
            Some(cpu) => libc::CPU_SET(cpu, &mut set),
            None => (0..cpus).for_each(|c| libc::CPU_SET(c, &mut set)),
        }
        set
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the agent's threads (pid {pid})"))?;
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        // SAFETY: a valid cpu set for an existing thread id.
        if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
            let err = std::io::Error::last_os_error();
            anyhow::bail!("setting the CPU affinity of the agent's thread {tid}: {err}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn reads_our_own_cpu_and_rss() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(vm_rss_kib(pid).unwrap() > 0);
    }

    #[test]
    fn mode_names_are_the_clients_values() {
        for mode in [Mode::Latency, Mode::Stream, Mode::Load, Mode::StreamLoad] {
            let value = mode.to_possible_value().expect("not skipped");
            assert_eq!(value.get_name(), mode_name(mode));
        }
    }
}
