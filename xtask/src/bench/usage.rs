//! `cargo xtask bench usage`: the usage store. Runs the release agent's
//! hidden `bench-usage`, which pushes N synthetic audited requests through
//! the real queue and writer thread (rows per second absorbed), then times
//! `modelgate usage`'s query over them for several groupings, against the
//! 200 ms target for a million rows.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

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
}

pub fn run(args: &UsageArgs) -> Result<()> {
    let bin = build_cmd::build(true)?;
    let mut cmd = Command::new(&bin);
    cmd.args([
        "bench-usage",
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
        .context("bench-usage printed something that is not a JSON line")?;
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
            _ => bail!("unexpected bench-usage line: {line}"),
        }
    }
    Ok(())
}
