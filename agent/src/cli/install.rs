//! `modelgate install --dry-run`: what the package (the .deb, or the
//! tarball's install.sh) puts where and does, for review before it is
//! rolled out. Printed from the same description `cargo xtask package`
//! builds both from (packaging/layout.rs), so it cannot drift.

use std::{fmt::Write as _, process::ExitCode};

use anyhow::{Result, bail};
use clap::Args;

use crate::layout::{self, Source};

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print what installing does (files, modes, conffiles, group, CA,
    /// unit) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: &InstallArgs) -> Result<ExitCode> {
    if !args.dry_run {
        bail!(
            "`modelgate install` only describes the installation; install with the package: \
             `apt install ./{}_{}_<arch>.deb` (built by `cargo xtask package`), or on hosts \
             without dpkg `sudo ./install.sh` from the tarball; `modelgate install --dry-run` \
             shows what either does",
            layout::PACKAGE,
            env!("CARGO_PKG_VERSION"),
        );
    }
    super::table::print(&plan())?;
    Ok(ExitCode::SUCCESS)
}

fn plan() -> String {
    let mut out = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(
        out,
        "{} {version}: {}\n\nFiles (mode, owner root:root):",
        layout::PACKAGE,
        layout::SUMMARY
    );
    for file in layout::FILES {
        let from = match file.source {
            Source::Binary => "this binary".to_string(),
            Source::Repo(path) => path.to_string(),
        };
        let conffile = if file.conffile { "  [conffile]" } else { "" };
        let _ = writeln!(
            out,
            "  {:04o}  {}{conffile}\n        {} (from {from})",
            file.mode, file.dest, file.what
        );
    }
    let _ = writeln!(
        out,
        "\nConffiles (an upgrade keeps your edits; the .deb asks, install.sh writes <file>.new):"
    );
    for file in layout::FILES.iter().filter(|f| f.conffile) {
        let _ = writeln!(out, "  {}", file.dest);
    }
    let _ = writeln!(
        out,
        "\nDirectories:\n  0755  {}\n        configuration (ConfigurationDirectory=)\n  \
         0700  {}\n        state: the CA, audit, usage store, alerts (StateDirectory=)\n  \
         0750  {}\n        the control socket, group {} (RuntimeDirectory=, made at each start)\n  \
         0700  {}\n        pinned programs, links and maps (on bpffs; made by the agent)",
        layout::CONFIG_DIR,
        layout::STATE_DIR,
        layout::RUNTIME_DIR,
        layout::GROUP,
        layout::PIN_DIR,
    );
    let _ = writeln!(out, "\nOn install and upgrade:");
    for (i, step) in layout::INSTALL_STEPS.iter().enumerate() {
        let _ = writeln!(out, "  {}. {step}", i + 1);
    }
    let _ = writeln!(out, "\nOn removal:");
    for step in layout::REMOVE_STEPS {
        let _ = writeln!(out, "  - {step}");
    }
    let _ = writeln!(
        out,
        "\nThe unit ({}) runs `{} run --config {}/agent.yaml` as root with only \
         CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE and CAP_CHOWN, a read-only \
         file system except its own directories and /sys/fs/bpf, and a system-call filter; \
         `systemctl cat {}` shows it with the reason for each setting.",
        layout::UNIT,
        layout::BINARY,
        layout::CONFIG_DIR,
        layout::UNIT,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_names_every_file_and_conffile() {
        let plan = plan();
        for file in layout::FILES {
            assert!(plan.contains(file.dest), "{} missing:\n{plan}", file.dest);
        }
        assert!(
            plan.contains("0644  /etc/modelgate/agent.yaml  [conffile]"),
            "{plan}"
        );
        assert!(plan.contains("[conffile]"));
        assert!(plan.contains("ca-key.pem 0600"));
        assert!(plan.contains("group `modelgate`"));
    }

    #[test]
    fn every_etc_file_is_a_conffile_and_only_those() {
        for file in layout::FILES {
            assert_eq!(
                file.conffile,
                file.dest.starts_with("/etc/"),
                "{}: files under /etc, and only those, are conffiles",
                file.dest
            );
        }
    }
}
