//! `modelgate-bench classify`: how fast the data classifiers go over
//! prompt-like bodies of 1 KB, 32 KB and 1 MB, on this thread (one core).
//! `cargo xtask bench classify` runs it and adds the proxy side.

use std::{hint::black_box, process::ExitCode, time::Instant};

use anyhow::Result;
use clap::Args;
use modelgate::classify::{Classifier, bench_json};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds spent on each size and operation.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
}

#[derive(Serialize)]
struct Row {
    operation: &'static str,
    bytes: usize,
    iterations: u64,
    mb_per_s: f64,
    us_per_body: f64,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let classifier = Classifier::new(&[])?;
    for bytes in [1024, 32 * 1024, 1024 * 1024] {
        let body = bench_json(bytes);
        let scan = measure(args.seconds, || {
            black_box(classifier.scan_json(black_box(&body)));
        });
        print_row("scan_json", body.len(), scan);
        let redact = measure(args.seconds, || {
            black_box(classifier.redact_json(black_box(&body), |_| true));
        });
        print_row("redact_json", body.len(), redact);
    }
    Ok(ExitCode::SUCCESS)
}

/// (iterations, seconds) of running `f` for about `seconds`.
fn measure(seconds: f64, mut f: impl FnMut()) -> (u64, f64) {
    f(); // warm-up: caches, lazy DFA states
    let start = Instant::now();
    let mut iterations = 0;
    while start.elapsed().as_secs_f64() < seconds || iterations < 3 {
        f();
        iterations += 1;
    }
    (iterations, start.elapsed().as_secs_f64())
}

fn print_row(operation: &'static str, bytes: usize, (iterations, secs): (u64, f64)) {
    let row = Row {
        operation,
        bytes,
        iterations,
        mb_per_s: bytes as f64 * iterations as f64 / secs / 1e6,
        us_per_body: secs / iterations as f64 * 1e6,
    };
    println!("{}", serde_json::to_string(&row).expect("plain data"));
}
