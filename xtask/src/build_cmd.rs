//! `cargo xtask build`: bootstrap, then build the agent.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{bootstrap, util};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn run(args: &BuildArgs) -> Result<()> {
    let bin = build(args.release)?;
    println!("build: {}", bin.display());
    Ok(())
}

/// Bootstraps, builds package `modelgate` and returns the binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
    bootstrap::run()?;
    let mut cmd = util::cargo();
    cmd.args(["build", "--package", "modelgate"]);
    if release {
        cmd.arg("--release");
    }
    util::run_checked(
        &mut cmd,
        "building the agent",
        "fix the compile errors above; if the eBPF step failed, run `cargo xtask bootstrap`",
    )?;
    let profile = if release { "release" } else { "debug" };
    Ok(util::target_dir().join(profile).join("modelgate"))
}

/// Builds `modelgate-bench`, the helpers `bench classify` and `bench usage`
/// run, with the release profile and returns its path. It needs the agent's
/// `bench` feature, which this build alone turns on: `--bin` keeps cargo
/// from building (and replacing) `modelgate` with it, so the product binary
/// beside it stays the one without benchmark commands.
pub fn build_bench_helper() -> Result<PathBuf> {
    bootstrap::run()?;
    let mut cmd = util::cargo();
    cmd.args([
        "build",
        "--release",
        "--package",
        "modelgate",
        "--features",
        "bench",
        "--bin",
        "modelgate-bench",
    ]);
    util::run_checked(
        &mut cmd,
        "building the bench helper",
        "fix the compile errors above",
    )?;
    Ok(util::target_dir().join("release").join("modelgate-bench"))
}
