//! `modelgate ca export|install`: the local CA that clients must trust for
//! redirected (TLS-terminated) model traffic.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::proxy::ca::Ca;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), creating the CA if needed.
    Export,
    /// Add the CA to the system trust store (Debian: update-ca-certificates).
    Install,
}

/// Where Debian's update-ca-certificates picks up local CAs.
const LOCAL_CA_DIR: &str = "/usr/local/share/ca-certificates";
const LOCAL_CA_FILE: &str = "modelgate.crt";

pub fn run(command: CaCommand, state_dir: &Path) -> Result<()> {
    match command {
        CaCommand::Export => {
            let ca = Ca::load_or_create(state_dir)?;
            print!("{}", ca.cert_pem());
            Ok(())
        }
        CaCommand::Install => {
            let ca = Ca::load_or_create(state_dir)?;
            let dir = PathBuf::from(LOCAL_CA_DIR);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating {} (run as root)", dir.display()))?;
            let target = dir.join(LOCAL_CA_FILE);
            std::fs::write(&target, ca.cert_pem())
                .with_context(|| format!("writing {} (run as root)", target.display()))?;
            let status = Command::new("update-ca-certificates").status().context(
                "running update-ca-certificates; install the ca-certificates package, or add \
                 the file to your distribution's trust store by hand",
            )?;
            if !status.success() {
                bail!("update-ca-certificates failed ({status})");
            }
            println!(
                "installed {} into the system trust store; runtimes with their own bundle \
                 need it too (see README: trusting the CA)",
                target.display()
            );
            Ok(())
        }
    }
}
