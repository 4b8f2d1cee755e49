//! `modelgate-bench usage`: how many rows per second the usage store
//! absorbs, through the real queue and writer thread, and how long
//! `modelgate usage`'s query takes over that many rows. `cargo xtask bench
//! usage` runs it.

use std::{
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use modelgate::usage::{self, By, Row};
use serde_json::json;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rows written before the queries are timed.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Runs of each query; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

const MODELS: [&str; 8] = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "o3-mini",
    "claude-sonnet-4",
    "claude-haiku-4",
    "gemini-2.5-pro",
    "mistral-large",
];

/// A plausible host's traffic: 200 processes of 50 executables in 20
/// units, spread evenly over the last day.
fn row(i: u64, rows: u64, now_ms: i64) -> Row {
    let exe = i % 50;
    Row {
        ts_ms: now_ms - (i * 86_400_000 / rows) as i64,
        kind: "request",
        coverage: if i.is_multiple_of(10) {
            "passthrough"
        } else {
            "governed"
        },
        error: i.is_multiple_of(97),
        provider: "openai".into(),
        model: Some(MODELS[(i % 8) as usize].into()),
        rule: "default".into(),
        pid: 1000 + (i % 200) as u32,
        uid: 1000 + (i % 5) as u32,
        user: None,
        exe: Some(format!("/usr/bin/app-{exe}")),
        unit: Some(format!("svc-{}.service", exe % 20)),
        container: None,
        input_tokens: Some(100 + i % 900),
        output_tokens: Some(10 + i % 300),
        cache_read_tokens: None,
        reasoning_tokens: None,
        cost_usd: Some(0.0001),
        latency_ms: Some(50.0 + (i % 1000) as f64),
    }
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let now_ms = modelgate::clock::now_ms();
    let (log, writer) = usage::open(dir.path(), usage::DEFAULT_RETENTION)?;
    let dropped = log.dropped.clone();
    let start = Instant::now();
    let mut sent = 0;
    for i in 0..args.rows {
        // Paced only by the queue: when it is full, wait for the writer
        // rather than drop, so what is measured is the writer's rate.
        let mut row = row(i, args.rows, now_ms);
        loop {
            match log.try_send(row) {
                Ok(()) => break,
                Err(back) => {
                    row = *back;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        sent += 1;
    }
    drop(log);
    writer.join().ok().context("the usage writer panicked")?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "what": "write",
            "rows": sent,
            "seconds": secs,
            "rows_per_s": sent as f64 / secs,
            "dropped": dropped.load(Ordering::Relaxed),
        })
    );

    let conn = usage::open_rw(&usage::path(dir.path()))?;
    for (name, by) in [
        ("exe", By::Exe),
        ("process", By::Process),
        ("unit", By::Unit),
        ("model", By::Model),
    ] {
        let mut times = Vec::with_capacity(args.runs);
        let mut groups = 0;
        for _ in 0..args.runs.max(1) {
            let start = Instant::now();
            // `modelgate usage`'s default window: a partial first hour included.
            groups = usage::summarize(&conn, now_ms - 86_400_000, by)?.len();
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            json!({
                "what": "query",
                "by": name,
                "rows": sent,
                "groups": groups,
                "median_ms": times[times.len() / 2],
                "max_ms": times[times.len() - 1],
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}
