//! Command line: one subcommand per file.

mod alerts;
mod ca;
mod install;
mod policy_check;
mod policy_explain;
mod policy_test;
mod reload;
mod run;
mod status;
mod table;
mod top;
mod uninstall_bpf;
mod usage;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::config::{self, FileConfig};

#[derive(Debug, Parser)]
#[command(
    name = "modelgate",
    version,
    about = "Find, attribute and govern every model-API connection on this host"
)]
pub struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Where the agent's files are: the same flags for every command, so one
/// `--state-dir` reaches one agent whatever is asked of it.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Agent configuration (YAML); default /etc/modelgate/agent.yaml when
    /// present.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The agent's state directory (default: agent.yaml's state_dir, else
    /// /var/lib/modelgate). An agent run with one keeps its control socket
    /// inside it.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl Common {
    fn file_config(&self) -> Result<FileConfig> {
        let explicit = self.config.is_some();
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
        FileConfig::load(&path, explicit)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .map_err(|e| e.context("the agent configuration is invalid"))
    }

    /// The flag, else the configuration's, else the default.
    fn state_dir(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        Ok(self
            .file_config()?
            .state_dir
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_STATE_DIR)))
    }
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
    /// The running agent: version, uptime, programs, policy, counters, sinks.
    Status(status::StatusArgs),
    /// Live per-process model traffic, refreshed every second.
    Top(top::TopArgs),
    /// Remove the pinned programs and maps (they outlive the agent on
    /// purpose); after the agent has stopped.
    UninstallBpf(uninstall_bpf::UninstallArgs),
    /// The local CA that signs the proxy's certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// What the package installs and does (with --dry-run), for review.
    Install(install::InstallArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate endpoints.yaml, policy.yaml (+ policy.d/) and prices.yaml; exit 1 on any error.
    Check(policy_check::CheckArgs),
    /// Show what the policy does with a request, without sending it.
    Explain(Box<policy_explain::ExplainArgs>),
    /// Run the policy's test cases (DIR/tests/*.yaml).
    Test(policy_test::TestArgs),
    /// Make the running agent load the policy files again now.
    Reload,
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    let common = cli.common;
    match cli.command {
        Command::Run(args) => run::run(args, &common),
        Command::Policy(PolicyCommand::Reload) => reload::run(&common.state_dir()?),
        Command::Status(args) => status::run(args, &common.state_dir()?),
        Command::Top(args) => top::run(args, &common.state_dir()?),
        Command::UninstallBpf(args) => {
            let pin_dir = common.file_config()?.pin_dir;
            uninstall_bpf::run(args, &common.state_dir()?, pin_dir.as_deref())
        }
        Command::Policy(PolicyCommand::Check(args)) => policy_check::check(args),
        Command::Policy(PolicyCommand::Explain(args)) => {
            policy_explain::run(*args, common.state_dir().ok().as_deref())
        }
        Command::Policy(PolicyCommand::Test(args)) => policy_test::run(args),
        Command::Alerts(args) => alerts::run(args, &common.state_dir()?),
        Command::Usage(args) => usage::run(args, &common.state_dir()?),
        Command::Ca(command) => ca::run(command, &common.state_dir()?).map(|()| ExitCode::SUCCESS),
        Command::Install(args) => install::run(&args),
    }
}
