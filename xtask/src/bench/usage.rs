//! `cargo xtask bench usage`: the usage store. Runs `modelgate-bench usage`
//! (the agent crate's bench helper, built with its `bench` feature), which
//! pushes N synthetic audited requests through the real queue and writer
//! thread (rows per second absorbed), then times `modelgate usage`'s query
//! over them for several groupings, against the 200 ms target for a million
//! rows. Then, in the same run, the store behind the real proxy under
//! concurrent load (the proxy rig, `rig.rs`): every request the clients
//! completed must be a row, none dropped.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use super::{
    http_client::Mode,
    rig::{self, AGENT_CPU, ClientOpts, POLICY_YAML, Rig, set_affinity},
};
use crate::{build_cmd, util};

const TARGET_QUERY_MS: f64 = 200.0;

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Rows written before the queries are timed.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    rows: u64,
    /// Runs of each query (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Length of the run through the loaded proxy, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Concurrent clients of that run.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
}

pub fn run(args: &UsageArgs) -> Result<()> {
    let bin = rig::prepare("usage", &rig::UPSTREAM.to_string())?;
    let helper = build_cmd::build_bench_helper()?;
    let mut cmd = Command::new(&helper);
    cmd.args([
        "usage",
        "--rows",
        &args.rows.to_string(),
        "--runs",
        &args.runs.to_string(),
    ])
    .stdin(Stdio::null())
    .stderr(Stdio::inherit());
    println!("bench: `{}`", util::display(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("running `{}`", util::display(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", util::display(&cmd), out.status);
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("modelgate-bench usage printed something that is not a JSON line")?;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    for line in &lines {
        match line["what"].as_str() {
            Some("write") => println!(
                "usage store write: {:.0} rows in {:.2} s = {:.0} rows/s absorbed, {} dropped",
                f(line, "rows"),
                f(line, "seconds"),
                f(line, "rows_per_s"),
                line["dropped"]
            ),
            Some("query") => {
                let median = f(line, "median_ms");
                println!(
                    "modelgate usage --by {:<8} over {:.0} rows ({} groups): median {:.1} ms, max {:.1} ms, {:.2}x the {TARGET_QUERY_MS:.0} ms target {}",
                    line["by"].as_str().unwrap_or("?"),
                    f(line, "rows"),
                    line["groups"],
                    median,
                    f(line, "max_ms"),
                    median / TARGET_QUERY_MS,
                    if median <= TARGET_QUERY_MS {
                        "(met)"
                    } else {
                        "(MISSED)"
                    }
                );
            }
            _ => bail!("unexpected modelgate-bench usage line: {line}"),
        }
    }
    under_load(&bin, args)
}

/// The store behind the proxy at full tilt: the proxy pinned to one CPU
/// serves as many clients as it can; afterwards the store must hold one row
/// per completed request, which `modelgate usage` (the agent stopped, so
/// straight from the file) counts.
fn under_load(bin: &Path, args: &UsageArgs) -> Result<()> {
    println!("bench: the usage store behind the proxy under load");
    let rig = Rig::start(bin, "usage", POLICY_YAML)?;
    set_affinity(rig.agent_pid(), Some(AGENT_CPU))?;
    let state_dir = rig.state_dir.clone();
    let started = Instant::now();
    let opts = ClientOpts {
        requests: 0,
        seconds: args.seconds,
        clients: args.clients,
        body: None,
        ..ClientOpts::default()
    };
    let load = rig.run(&opts, Mode::Load, true)?;
    let log = rig.log.clone();
    let (status, log_text) = rig.finish()?;
    let completed = load.count("completed");
    let since = format!("{}s", started.elapsed().as_secs() + 2);
    let mut cmd = Command::new(bin);
    cmd.args(["usage", "--json", "--by", "provider", "--since", &since])
        .arg("--state-dir")
        .arg(&state_dir)
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("running `{}`", util::display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            util::display(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows: Vec<Value> =
        serde_json::from_slice(&out.stdout).context("usage --json printed something else")?;
    let stored: u64 = rows.iter().filter_map(|r| r["requests"].as_u64()).sum();
    let seconds = load.get("seconds");
    println!(
        "usage store under proxy load: {} requests completed by {} clients in {seconds:.1} s \
         = {:.0} audited requests/s; {} rows stored ({:.1}% of them), {} missing",
        super::group(completed),
        args.clients,
        completed as f64 / seconds,
        super::group(stored),
        100.0 * stored as f64 / completed.max(1) as f64,
        completed.saturating_sub(stored)
    );
    if stored < completed {
        eprintln!(
            "bench: WARNING: THE STORE FELL BEHIND: {} requests have no usage row \
             (see modelgate_records_dropped_total{{queue=\"usage\"}})",
            completed - stored
        );
    }
    super::print_final_counters(status, &log_text, &log);
    Ok(())
}
