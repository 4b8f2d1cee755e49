//! `cargo xtask bench <name>`: one bench per file in `bench/`. This file
//! dispatches and holds what they share: Ctrl-C handling, the removal of
//! stale cgroups, the agent's final counters, `Stats` and `group`.
//! `bench/rig.rs` is the proxy setup (stand-in server, cgroups, agent,
//! client runs) that `proxy`, `classify`, `usage` and `soak` measure
//! through; `connect`, `dns`, `startup` and `exec` set up their own.

mod agent;
mod classify;
mod client;
mod connect;
mod dns;
mod dns_client;
mod dns_responder;
mod exec;
mod http_client;
mod proxy;
mod rig;
mod soak;
mod startup;
mod syscalls;
mod upstream;
mod usage;

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

pub use self::{dns_client::DnsClientArgs, http_client::ProxyClientArgs, soak::SoakArgs};
use crate::cgroup;

const CGROUP_PREFIX: &str = "modelgate-bench-";

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// connect() throughput on the miss path, with and without modelgate's
    /// programs; prints the ratio (needs root).
    Connect(connect::ConnectArgs),
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
pub struct ClientArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    connects: u32,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Connect(args) => connect::run(args),
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
