//! `cargo xtask lint`: rustfmt check and clippy with warnings denied.

use anyhow::{Result, bail};

use crate::{bootstrap, util};

pub fn run() -> Result<()> {
    let mut failed = Vec::new();

    // rustfmt.toml uses unstable options, which only nightly rustfmt applies.
    let mut fmt = if util::stdout_of(&mut util::nightly("rustfmt").arg("--version")).is_some() {
        util::nightly("cargo")
    } else {
        println!(
            "lint: nightly rustfmt not found; using stable rustfmt, which ignores the \
             unstable options in rustfmt.toml (install: rustup component add rustfmt \
             --toolchain nightly)"
        );
        util::cargo()
    };
    fmt.args(["fmt", "--all", "--", "--check"]);
    println!("lint: {}", util::display(&fmt));
    if let Err(err) = util::run_checked(
        &mut fmt,
        "rustfmt check",
        "run `rustup run nightly cargo fmt --all` to reformat",
    ) {
        eprintln!("xtask: {err:#}");
        failed.push("rustfmt");
    }

    // clippy runs the agent's build script, which builds the kernel programs.
    bootstrap::run()?;
    let mut clippy = util::cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    println!("lint: {}", util::display(&clippy));
    if let Err(err) = util::run_checked(&mut clippy, "clippy", "fix the warnings above") {
        eprintln!("xtask: {err:#}");
        failed.push("clippy");
    }

    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("lint: ok");
    Ok(())
}
