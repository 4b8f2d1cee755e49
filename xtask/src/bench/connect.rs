//! `cargo xtask bench connect`: connect() throughput on the miss path, with
//! and without modelgate's programs, measured in the same run.
//!
//! Two sibling cgroups; the agent attaches to "on" only. A client process
//! placed in one of them (and pinned to CPU 0) connects to a loopback
//! listener on 127.0.0.1:443 and closes, N times. Port 443 is one catalog
//! endpoints use, so the kernel's port prefilter lets the connect through to
//! the endpoint hash lookup, which misses: the realistic worst case for
//! traffic that is not a model API.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{
    CGROUP_PREFIX, Stats, agent, catch_ctrl_c, check_interrupted, client, group,
    print_final_counters, remove_stale_cgroups, write_files,
};
use crate::{
    build_cmd,
    cgroup::{self, ChildCgroup},
    util,
};

const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 443);
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
pub struct ConnectArgs {
    /// connect() calls per measurement.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    connects: u32,
    /// Measurements per side, taken alternately (off, on, off, on, ...).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}
pub fn run(args: &ConnectArgs) -> Result<()> {
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
