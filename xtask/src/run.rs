//! `cargo xtask run`: build, then replace this process with the agent
//! (`modelgate run ARGS...`), so signals such as Ctrl-C reach it directly.

use std::{ffi::OsString, os::unix::process::CommandExt, process::Command};

use anyhow::{Result, bail};
use clap::Args;

use crate::{build_cmd, util};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Build and run the release binary.
    #[arg(long)]
    release: bool,
    /// Arguments for `modelgate run` (after `--`), e.g. `-- --default-action monitor`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<OsString>,
}

pub fn run(args: RunArgs) -> Result<()> {
    // Decide before building, so a missing sudo fails fast.
    let sudo = if util::is_root() {
        None
    } else {
        match util::which("sudo") {
            Some(sudo) => Some(sudo),
            None => bail!("modelgate loads eBPF programs: run as root (sudo -E cargo xtask run)"),
        }
    };
    // Built as the invoking user, so target/ does not end up owned by root.
    let bin = build_cmd::build(args.release)?;
    let mut cmd = match sudo {
        Some(sudo) => {
            println!("run: not root; running the agent through sudo -E");
            let mut cmd = Command::new(sudo);
            cmd.arg("-E").arg(&bin);
            cmd
        }
        None => Command::new(&bin),
    };
    cmd.arg("run").args(&args.args);
    let err = cmd.exec();
    bail!("starting `{}`: {err}", util::display(&cmd))
}
