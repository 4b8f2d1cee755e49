//! `modelgate-bench`: the measurements `cargo xtask bench classify` and
//! `cargo xtask bench usage` take inside the agent's code, one subcommand
//! each, printing JSON lines that the xtask tabulates. Built only with the
//! agent's `bench` feature (`cargo build --features bench --bin
//! modelgate-bench`), so the shipped `modelgate` has no benchmark commands.

mod classify;
mod usage;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "modelgate-bench",
    about = "Benchmark helpers for `cargo xtask bench classify` and `cargo xtask bench usage`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Throughput of the data classifiers (used by `cargo xtask bench classify`).
    Classify(classify::BenchArgs),
    /// Usage store write rate and query latency (used by `cargo xtask bench usage`).
    Usage(usage::BenchArgs),
}

fn main() -> ExitCode {
    let result: Result<ExitCode> = match Cli::parse().command {
        Command::Classify(args) => classify::run(args),
        Command::Usage(args) => usage::run(args),
    };
    result.unwrap_or_else(|err| {
        eprintln!("modelgate-bench: error: {err:#}");
        ExitCode::FAILURE
    })
}
