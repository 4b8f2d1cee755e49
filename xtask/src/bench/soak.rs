//! `cargo xtask soak --minutes N`: mixed traffic through the redirect for N
//! minutes — plain, streamed, redacted, refused by policy, over budget, and
//! policy reloads in between — on the proxy rig (`rig.rs`). After each round
//! it samples the agent's RSS, its anonymous (heap) memory, open file
//! descriptors, kernel map fill and losses; at the end it compares the
//! first minute after warm-up (the first quarter of the run) with the last
//! minute (the target: within 10%, no file descriptors leaked). RSS also counts
//! pages of the binary and of the event ring buffer's mapping as they are
//! first touched — bounded, but they grow for a while — so the heap is what
//! tells a leak.

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use super::{
    http_client::Mode,
    rig::{self, ClientOpts, Rig},
};
use crate::util;

const TARGET_GROWTH: f64 = 0.10;

/// The soak's policy after its header comment: redirect, redact personal
/// data, refuse one model.
macro_rules! soak_policy {
    () => {
        "\
default_action: redirect
rules:
  - name: soak
    action: redirect
    controls:
      models:
        deny: [\"blocked-*\"]
      data:
        secret: block
        pii: redact
"
    };
}
const POLICY: &str = concat!(
    "# Written by `cargo xtask soak`: redact personal data, refuse one model.\n",
    soak_policy!()
);
/// The same, with a budget that runs out: the last control of the rule.
const BUDGET_POLICY: &str = concat!(
    "# Written by `cargo xtask soak`: the same, with a budget that runs out.\n",
    soak_policy!(),
    "      budget:
        per: rule
        requests_per_minute: 100
"
);
const REDACTED_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write to jane.doe@example.com or call +1 415 555 0100 about the invoice."}]}"#;
const BLOCKED_BODY: &str =
    r#"{"model":"blocked-model","messages":[{"role":"user","content":"hello"}]}"#;

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    minutes: u64,
    /// Concurrent clients of each load run.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    anon_kib: u64,
    /// The allocator's own count of live allocations, and of free memory
    /// it keeps: what of the heap is data, what is the allocator's.
    live_kib: u64,
    kept_kib: u64,
    fds: usize,
    map_entries: u64,
    lost: u64,
    requests: u64,
    errors: u64,
}

pub fn run(args: &SoakArgs) -> Result<()> {
    let bin = rig::prepare("soak", &rig::UPSTREAM.to_string())?;
    let mut rig = Rig::start(&bin, "soak", POLICY)?;
    let pid = rig.agent_pid();
    let state_dir = rig.state_dir.clone();
    let dir = util::xtask_dir();
    let redacted = dir.join("soak-redacted.json");
    let blocked = dir.join("soak-blocked.json");
    fs::write(&redacted, REDACTED_BODY)?;
    fs::write(&blocked, BLOCKED_BODY)?;

    let end = Instant::now() + Duration::from_secs(args.minutes * 60);
    let started = Instant::now();
    let (mut requests, mut errors) = (0u64, 0u64);
    let mut samples: Vec<Sample> = Vec::new();
    let mut round = 0;
    while Instant::now() < end {
        round += 1;
        let clients = args.clients;
        let runs = [
            rig.run_labeled(
                &load(None, 5, clients),
                Mode::Load,
                true,
                format!("round {round}: plain"),
            )?,
            rig.run_labeled(
                &load(None, 1, clients),
                Mode::Stream,
                true,
                format!("round {round}: streamed"),
            )?,
            rig.run_labeled(
                &load(Some(&redacted), 3, clients),
                Mode::Load,
                true,
                format!("round {round}: redacted"),
            )?,
            rig.run_labeled(
                &load(Some(&blocked), 2, clients),
                Mode::Load,
                true,
                format!("round {round}: refused model"),
            )?,
        ];
        rig.set_policy(BUDGET_POLICY, 1)?;
        let budget = rig.run_labeled(
            &load(None, 2, clients),
            Mode::Load,
            true,
            format!("round {round}: over budget"),
        )?;
        rig.set_policy(POLICY, 1)?;
        for run in runs.iter().chain([&budget]) {
            requests += run.count("completed") + run.count("errors");
            errors += run.count("errors");
        }
        let status = status(&bin, &state_dir)?;
        let sample = Sample {
            at: started.elapsed(),
            rss_kib: proc_kib(pid, "status", "VmRSS:")?,
            anon_kib: proc_kib(pid, "smaps_rollup", "Anonymous:")?,
            live_kib: status["memory"]["heap_in_use_bytes"].as_u64().unwrap_or(0) / 1024,
            kept_kib: status["memory"]["heap_free_bytes"].as_u64().unwrap_or(0) / 1024,
            fds: fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .context("counting the agent's file descriptors")?,
            map_entries: status["maps"]
                .as_array()
                .map(|maps| maps.iter().filter_map(|m| m["entries"].as_u64()).sum())
                .unwrap_or(0),
            lost: status["sinks"]
                .as_array()
                .map(|sinks| sinks.iter().filter_map(|s| s["lost"].as_u64()).sum())
                .unwrap_or(0)
                + status["counters"]["events_lost"].as_u64().unwrap_or(0),
            requests,
            errors,
        };
        println!(
            "soak: {:>5.1} min  RSS {} KiB  heap {} KiB (live {}, allocator free {})  fds {}  map entries {}  lost {}  requests {} (refused or failed {})",
            sample.at.as_secs_f64() / 60.0,
            sample.rss_kib,
            sample.anon_kib,
            sample.live_kib,
            sample.kept_kib,
            sample.fds,
            sample.map_entries,
            sample.lost,
            sample.requests,
            sample.errors
        );
        samples.push(sample);
    }
    let (exit, _) = rig.finish()?;
    if !exit.success() {
        bail!("the agent exited with {exit} at the end of the soak");
    }
    report(&samples)
}

fn load(body: Option<&Path>, seconds: u64, clients: u32) -> ClientOpts<'_> {
    ClientOpts {
        requests: 200,
        seconds,
        clients,
        body,
        ..ClientOpts::default()
    }
}

/// A minute of rounds: single samples swing by a megabyte or more with
/// what the record queues hold at that instant, so windows are compared.
const WINDOW: Duration = Duration::from_secs(60);

/// Means over a window of samples.
struct Window {
    rss_kib: f64,
    heap_kib: f64,
    live_kib: f64,
    kept_kib: f64,
    fds: usize,
}

impl Window {
    fn of(samples: &[&Sample]) -> Window {
        let n = samples.len().max(1) as f64;
        let mean =
            |field: fn(&Sample) -> u64| samples.iter().map(|s| field(s) as f64).sum::<f64>() / n;
        Window {
            rss_kib: mean(|s| s.rss_kib),
            heap_kib: mean(|s| s.anon_kib),
            live_kib: mean(|s| s.live_kib),
            kept_kib: mean(|s| s.kept_kib),
            fds: samples.iter().map(|s| s.fds).max().unwrap_or(0),
        }
    }
}

/// The first minute after warm-up (the first quarter) against the last
/// minute.
fn report(samples: &[Sample]) -> Result<()> {
    let Some(last) = samples.last() else {
        bail!("the soak ran no round; give it more minutes");
    };
    let warm = last.at / 4;
    let after_warm: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm).collect();
    let first = Window::of(
        &after_warm
            .iter()
            .copied()
            .filter(|s| s.at < warm + WINDOW)
            .collect::<Vec<_>>(),
    );
    let end = Window::of(
        &after_warm
            .iter()
            .copied()
            .filter(|s| s.at + WINDOW > last.at)
            .collect::<Vec<_>>(),
    );
    let peak_heap = after_warm.iter().map(|s| s.anon_kib).max().unwrap_or(0);
    let rss_growth = end.rss_kib / first.rss_kib - 1.0;
    let heap_growth = end.heap_kib / first.heap_kib - 1.0;
    let verdict = |growth: f64| {
        if growth <= TARGET_GROWTH {
            "(met)"
        } else {
            "(MISSED)"
        }
    };
    println!(
        "soak: {:.1} min, {} requests ({} refused by policy or budget, or failed), lost {}; \
         mean of the first minute after warm-up ({:.1} min) -> mean of the last minute \
         (target: within {:.0}%): RSS {:.0} -> {:.0} KiB ({:+.1}%) {}; heap {:.0} -> {:.0} KiB \
         ({:+.1}%) {}, peak {} KiB; fds {} -> {} {}; map entries {} -> {}",
        last.at.as_secs_f64() / 60.0,
        last.requests,
        last.errors,
        last.lost,
        warm.as_secs_f64() / 60.0,
        TARGET_GROWTH * 100.0,
        first.rss_kib,
        end.rss_kib,
        rss_growth * 100.0,
        verdict(rss_growth),
        first.heap_kib,
        end.heap_kib,
        heap_growth * 100.0,
        verdict(heap_growth),
        peak_heap,
        first.fds,
        end.fds,
        if end.fds <= first.fds + 4 {
            "(no leak)"
        } else {
            "(LEAK?)"
        },
        after_warm.first().map_or(0, |s| s.map_entries),
        last.map_entries,
    );
    println!(
        "soak: of the heap, live allocations {:.0} -> {:.0} KiB ({:+.1}%); free memory the \
         allocator keeps {:.0} -> {:.0} KiB (resident only where touched since the agent last \
         trimmed it)",
        first.live_kib,
        end.live_kib,
        (end.live_kib / first.live_kib.max(1.0) - 1.0) * 100.0,
        first.kept_kib,
        end.kept_kib,
    );
    if rss_growth > TARGET_GROWTH || heap_growth > TARGET_GROWTH || end.fds > first.fds + 4 {
        bail!("the soak missed its targets (see above)");
    }
    Ok(())
}

fn status(bin: &Path, state_dir: &Path) -> Result<Value> {
    let out = Command::new(bin)
        .args(["status", "--json", "--state-dir"])
        .arg(state_dir)
        .output()
        .context("running modelgate status")?;
    if !out.status.success() {
        bail!(
            "modelgate status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("modelgate status printed something else")
}

/// A `Key: N kB` line of /proc/PID/<file>.
fn proc_kib(pid: u32, file: &str, key: &str) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}"))
        .with_context(|| format!("reading /proc/{pid}/{file}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/{file}"))
}
