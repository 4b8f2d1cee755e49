//! Command line: one subcommand per file.

mod alerts;
mod bench_classify;
mod bench_usage;
mod ca;
mod policy_check;
mod policy_explain;
mod policy_test;
mod run;
mod table;
mod usage;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "modelgate",
    version,
    about = "Find, attribute and govern every model-API connection on this host"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: load the kernel programs and enforce the policy.
    Run(run::RunArgs),
    /// Work with the catalog and policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show recent alerts from the state directory (works while the agent is stopped).
    Alerts(alerts::AlertsArgs),
    /// Model usage per process, exe, unit, container, user, model or provider
    /// (works while the agent is stopped).
    Usage(usage::UsageArgs),
    /// The local CA that signs the proxy's certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Throughput of the data classifiers (used by `cargo xtask bench classify`).
    #[command(hide = true)]
    BenchClassify(bench_classify::BenchArgs),
    /// Usage store write rate and query latency (used by `cargo xtask bench usage`).
    #[command(hide = true)]
    BenchUsage(bench_usage::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate endpoints.yaml, policy.yaml (+ policy.d/) and prices.yaml; exit 1 on any error.
    Check(policy_check::CheckArgs),
    /// Show what the policy does with a request, without sending it.
    Explain(Box<policy_explain::ExplainArgs>),
    /// Run the policy's test cases (DIR/tests/*.yaml).
    Test(policy_test::TestArgs),
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Policy(PolicyCommand::Check(args)) => policy_check::check(args),
        Command::Policy(PolicyCommand::Explain(args)) => policy_explain::run(*args),
        Command::Policy(PolicyCommand::Test(args)) => policy_test::run(args),
        Command::Alerts(args) => alerts::run(args),
        Command::Usage(args) => usage::run(args),
        Command::Ca(command) => ca::run(command).map(|()| ExitCode::SUCCESS),
        Command::BenchClassify(args) => bench_classify::run(args),
        Command::BenchUsage(args) => bench_usage::run(args),
    }
}
