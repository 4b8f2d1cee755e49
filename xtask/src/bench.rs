//! `cargo xtask bench connect`: connect() throughput on the miss path, with
//! and without modelgate's programs, measured in the same run. (`bench
//! proxy`, in `bench/proxy.rs`, reuses its cgroups, agent and client; `bench
//! classify`, in `bench/classify.rs`, reuses `bench proxy`'s; `bench dns`,
//! in `bench/dns.rs`, the agent, the client placement and the pinning.)
//!
//! Two sibling cgroups; the agent attaches to "on" only. A client process
//! placed in one of them (and pinned to CPU 0) connects to a loopback
//! listener on 127.0.0.1:443 and closes, N times. Port 443 is one catalog
//! endpoints use, so the kernel's port prefilter lets the connect through to
//! the endpoint hash lookup, which misses: the realistic worst case for
//! traffic that is not a model API.

mod agent;
mod classify;
mod client;
mod dns;
mod dns_client;
mod dns_responder;
mod exec;
mod http_client;
mod proxy;
mod rig;
mod soak;
mod startup;
mod upstream;
mod usage;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

pub use self::{dns_client::DnsClientArgs, http_client::ProxyClientArgs, soak::SoakArgs};
use crate::{
    build_cmd,
    cgroup::{self, ChildCgroup},
    util,
};

const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 443);
const CGROUP_PREFIX: &str = "modelgate-bench-";
const TARGET_OVERHEAD_PERCENT: f64 = 2.0;

const ENDPOINTS_YAML: &str = "\
# Written by `cargo xtask bench connect`. 127.0.0.9:443 is an endpoint, so
# port 443 passes the kernel's port prefilter; the bench connects to
# 127.0.0.1:443, which then misses the endpoint lookup.
providers:
  - name: bench-endpoint
    api: openai
    addresses: [127.0.0.9]
";
const POLICY_YAML: &str = "\
# Written by `cargo xtask bench connect`.
default_action: monitor
rules: []
";

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// connect() throughput on the miss path, with and without modelgate's
    /// programs; prints the ratio (needs root).
    Connect(ConnectArgs),
    /// Latency, streaming and throughput of model API calls through the
    /// redirect proxy against the same calls made directly (needs root).
    Proxy(proxy::ProxyArgs),
    /// Throughput of the data classifiers on one core, and what
    /// classification adds to a 32 KB request through the proxy (needs root).
    Classify(classify::ClassifyArgs),
    /// DNS answers per second the learning path (kernel match, ring buffer,
    /// agent) handles with no lost event, and the loss at twice that rate
    /// (needs root and UDP port 53 on 127.0.3.53).
    Dns(dns::DnsArgs),
    /// Rows per second the usage store absorbs, and `modelgate usage`'s
    /// query latency over a million rows.
    Usage(usage::UsageArgs),
    /// Time from exec to READY (programs attached, proxy listening), first
    /// start and restart, against the 1 s target (needs root).
    Startup(startup::StartupArgs),
    /// The exec window (a static binary that connects at once, under an
    /// exe rule that blocks it: escapes) and what the exec hook costs a
    /// fork+exec loop, agent running vs not loaded (needs root).
    Exec(exec::ExecArgs),
}

#[derive(Debug, Args)]
struct ConnectArgs {
    /// connect() calls per measurement.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    connects: u32,
    /// Measurements per side, taken alternately (off, on, off, on, ...).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    connects: u32,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Connect(args) => connect(args),
        Bench::Proxy(args) => proxy::run(args),
        Bench::Classify(args) => classify::run(args),
        Bench::Dns(args) => dns::run(args),
        Bench::Usage(args) => usage::run(args),
        Bench::Startup(args) => startup::run(args),
        Bench::Exec(args) => exec::run(args),
    }
}

pub fn soak(args: &SoakArgs) -> Result<()> {
    soak::run(args)
}

pub fn client(args: &ClientArgs) -> Result<()> {
    client::run(args)
}

pub fn proxy_client(args: &ProxyClientArgs) -> Result<()> {
    http_client::run(args)
}

pub fn dns_client(args: &DnsClientArgs) -> Result<()> {
    dns_client::run(args)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets a flag instead of killing us, so the cgroups and the agent
/// are cleaned up by their guards on the way out.
fn catch_ctrl_c() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn connect(args: &ConnectArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the bench creates cgroups, listens on port 443 and loads eBPF programs: run as root \
             (sudo -E cargo xtask bench connect)"
        );
    }
    let bin = build_cmd::build(false)?;
    catch_ctrl_c();

    let mount = cgroup::mount()?;
    remove_stale_cgroups(&mount);
    let pid = std::process::id();
    // Declared before the agent, so they are dropped (removed) after it stops.
    let off = ChildCgroup::create(&mount, &format!("{CGROUP_PREFIX}off-{pid}"))?;
    let on = ChildCgroup::create(&mount, &format!("{CGROUP_PREFIX}on-{pid}"))?;

    client::spawn_listener(LISTEN)?;

    let dir = util::xtask_dir();
    let policies = dir.join("bench-policies");
    write_files(
        &policies,
        &[
            ("endpoints.yaml", ENDPOINTS_YAML),
            ("policy.yaml", POLICY_YAML),
        ],
    )?;
    let events = dir.join("bench-events.jsonl");
    let log = dir.join("bench-agent.log");
    // A stale file would make its records look like this run's.
    let _ = fs::remove_file(&events);
    println!(
        "bench: starting the agent on {} (log: {})",
        on.path().display(),
        log.display()
    );
    let agent = agent::Agent::start(&agent::Paths {
        bin: &bin,
        policies: &policies,
        cgroup: on.path(),
        events: &events,
        state_dir: &dir.join("bench-state"),
        log: &log,
        config: None,
        upstream_ca: None,
        cpu: None,
    })?;

    let exe = std::env::current_exe().context("finding the xtask binary for the bench client")?;
    let pin = client::can_use_cpu(0);
    if !pin {
        println!("bench: CPU 0 is not in this process's affinity mask; the client is not pinned");
    }
    let measure = |cgroup: &ChildCgroup| -> Result<client::Sample> {
        check_interrupted()?;
        let rate = client::measure(&exe, cgroup, SocketAddr::V4(LISTEN), args.connects, pin);
        check_interrupted()?;
        rate
    };

    println!(
        "bench: {} connects to {LISTEN} per measurement, {} rounds of off/on after a warm-up{}",
        group(u64::from(args.connects)),
        args.rounds,
        if pin { ", client pinned to CPU 0" } else { "" }
    );
    measure(&off)?;
    measure(&on)?;
    let mut off_samples = Vec::new();
    let mut on_samples = Vec::new();
    for round in 1..=args.rounds {
        let (a, b) = (measure(&off)?, measure(&on)?);
        println!(
            "  round {round}/{}: off {}/s {:.2} µs CPU, on {}/s {:.2} µs CPU",
            args.rounds,
            group(a.rate as u64),
            a.cpu_us,
            group(b.rate as u64),
            b.cpu_us
        );
        off_samples.push(a);
        on_samples.push(b);
    }

    let (status, log_text) = agent.stop()?;
    let rates = |s: &[client::Sample]| s.iter().map(|x| x.rate).collect::<Vec<_>>();
    let cpus = |s: &[client::Sample]| s.iter().map(|x| x.cpu_us).collect::<Vec<_>>();
    let off_stats = Stats::of(&rates(&off_samples));
    let on_stats = Stats::of(&rates(&on_samples));
    println!("  off: {off_stats}");
    println!("  on:  {on_stats}");
    // Paired per round: both halves of a round see the same machine state.
    let paired = |f: &dyn Fn(&client::Sample, &client::Sample) -> f64| {
        let values: Vec<f64> = off_samples
            .iter()
            .zip(&on_samples)
            .map(|(off, on)| f(off, on))
            .collect();
        Stats::of(&values).median
    };
    let rate_overhead = paired(&|off, on| (off.rate / on.rate - 1.0) * 100.0);
    let cpu_overhead = paired(&|off, on| (on.cpu_us / off.cpu_us - 1.0) * 100.0);
    let off_cpu = Stats::of(&cpus(&off_samples)).median;
    let on_cpu = Stats::of(&cpus(&on_samples)).median;
    println!(
        "connect miss path: off {}/s, on {}/s, ratio on/off {:.3}; paired overhead {rate_overhead:.1}% \
         (target < {TARGET_OVERHEAD_PERCENT}%)",
        group(off_stats.median as u64),
        group(on_stats.median as u64),
        on_stats.median / off_stats.median,
    );
    println!(
        "client CPU per connect: off {off_cpu:.2} µs, on {on_cpu:.2} µs, ratio on/off {:.3}; \
         paired overhead {cpu_overhead:.1}% (target < {TARGET_OVERHEAD_PERCENT}%)",
        on_cpu / off_cpu,
    );
    report_counters(status, &log_text, &log);
    Ok(())
}

/// Prints the agent's final counters; endpoint_hits must be 0 on a miss path.
fn report_counters(status: std::process::ExitStatus, log_text: &str, log: &Path) {
    let Some(counters) = print_final_counters(status, log_text, log) else {
        return;
    };
    match agent::counter(&counters, "endpoint_hits") {
        Some(0) => {}
        Some(hits) => eprintln!(
            "bench: WARNING: endpoint_hits={hits}, expected 0: connects to {LISTEN} matched a \
             catalog endpoint, so this run did not measure the miss path"
        ),
        None => eprintln!("bench: WARNING: no endpoint_hits in the agent's final counters"),
    }
}

/// Warns when the agent failed, prints its final counters and returns them.
fn print_final_counters(
    status: std::process::ExitStatus,
    log_text: &str,
    log: &Path,
) -> Option<String> {
    if !status.success() {
        eprintln!(
            "bench: WARNING: the agent exited with {status}; see {}",
            log.display()
        );
    }
    let Some(counters) = agent::final_counters(log_text) else {
        eprintln!(
            "bench: WARNING: the agent logged no `final counters` line; see {}",
            log.display()
        );
        return None;
    };
    println!("agent final counters: {counters}");
    Some(counters)
}

/// Writes `(name, text)` files into `dir`, creating it.
fn write_files(dir: &Path, files: &[(&str, &str)]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Removes bench cgroups left by a run that was killed outright.
fn remove_stale_cgroups(mount: &Path) {
    let Ok(entries) = fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(CGROUP_PREFIX)
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        println!("bench: removing stale cgroup {}", entry.path().display());
        if let Err(err) = cgroup::remove(&entry.path()) {
            eprintln!("xtask: warning: {err:#}");
        }
    }
}

struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    fn of(rates: &[f64]) -> Stats {
        let mut sorted = rates.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stats {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {}/s (min {}/s, max {}/s)",
            group(self.median as u64),
            group(self.min as u64),
            group(self.max as u64)
        )
    }
}

/// 41234 → "41,234".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(41_234), "41,234");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }
}
