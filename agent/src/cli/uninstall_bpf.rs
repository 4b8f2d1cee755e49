//! `modelgate uninstall-bpf`: removes the pinned programs and maps, which
//! otherwise outlive the agent on purpose (no enforcement gap across
//! restarts). For a clean removal, after the agent has stopped.

use std::{path::Path, process::ExitCode};

use anyhow::{Result, bail};
use clap::Args;

use crate::{control::client::Client, ebpf::pins};

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The pin directory, when agent.yaml or --pin-dir moved it.
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<std::path::PathBuf>,
    /// Remove the pins even though an agent answers on the control socket
    /// (it would go on running without its programs).
    #[arg(long)]
    force: bool,
}

pub fn run(args: UninstallArgs, state_dir: &Path, configured: Option<&Path>) -> Result<ExitCode> {
    if !args.force
        && Client::new(state_dir)
            .get_if_running("/v1/status")?
            .is_some()
    {
        bail!(
            "modelgate is running with this state directory; stop it first \
             (systemctl stop modelgate), or pass --force"
        );
    }
    let root = pins::pin_dir(args.pin_dir.as_deref().or(configured), state_dir);
    if !root.exists() {
        println!("nothing pinned at {}", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    let removed = pins::remove_all(&root)?;
    println!(
        "removed {removed} pins and {}: modelgate's programs are detached",
        root.display()
    );
    Ok(ExitCode::SUCCESS)
}
