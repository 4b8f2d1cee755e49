//! Command line: one subcommand per file.

mod ca;
mod policy_check;
mod run;

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
    /// The local CA that signs the proxy's certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate endpoints.yaml and policy.yaml; exit 1 on any error.
    Check(policy_check::CheckArgs),
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Policy(PolicyCommand::Check(args)) => policy_check::check(args),
        Command::Ca(command) => ca::run(command).map(|()| ExitCode::SUCCESS),
    }
}
