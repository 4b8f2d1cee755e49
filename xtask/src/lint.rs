//! `cargo xtask lint`: rustfmt check, then clippy with warnings denied on the
//! userspace crates (stable) and on the kernel programs (nightly, for their
//! own target). Every step runs; the command fails if any did.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{bootstrap, util};

pub fn run() -> Result<()> {
    let mut failed = Vec::new();
    let mut step = |name: &'static str, mut cmd: Command, hint: &str| {
        println!("lint: {}", util::display(&cmd));
        if let Err(err) = util::run_checked(&mut cmd, name, hint) {
            eprintln!("xtask: {err:#}");
            failed.push(name);
        }
    };

    // rustfmt.toml uses unstable options, which only nightly rustfmt applies.
    let nightly_fmt = util::stdout_of(util::nightly("rustfmt").arg("--version")).is_some();
    let mut fmt = if nightly_fmt {
        util::nightly("cargo")
    } else {
        println!(
            "lint: nightly rustfmt not found; using stable rustfmt, which ignores the unstable \
             options in rustfmt.toml (install: rustup component add rustfmt --toolchain nightly)"
        );
        util::cargo()
    };
    fmt.args(["fmt", "--all", "--", "--check"]);
    let fmt_hint = if nightly_fmt {
        "run `rustup run nightly cargo fmt --all` to reformat"
    } else {
        "run `cargo fmt --all` to reformat"
    };
    step("rustfmt check", fmt, fmt_hint);
    // The fuzz crate is a workspace of its own (it needs nightly).
    let mut fuzz_fmt = if nightly_fmt {
        util::nightly("cargo")
    } else {
        util::cargo()
    };
    fuzz_fmt.args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]);
    step("rustfmt check (fuzz)", fuzz_fmt, fmt_hint);

    // clippy runs the agent's build script, which builds the kernel programs.
    bootstrap::run()?;
    let mut clippy = util::cargo();
    // agent-ebpf builds only for bpfel-unknown-none; it is linted below.
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
    ]);
    clippy.args(["--", "-D", "warnings"]);
    step("clippy", clippy, "fix the warnings above");

    // `modelgate-bench` needs the agent's `bench` feature, which the pass
    // above leaves off as the package build does.
    let mut bench_clippy = util::cargo();
    bench_clippy.args([
        "clippy",
        "--package",
        "modelgate",
        "--features",
        "bench",
        "--bin",
        "modelgate-bench",
    ]);
    bench_clippy.args(["--", "-D", "warnings"]);
    step(
        "clippy (bench helper)",
        bench_clippy,
        "fix the warnings above",
    );

    // Plain clippy, no sanitizers: it shares the main target directory, so
    // the agent's dependencies are checked once for both.
    let mut fuzz_clippy = util::cargo();
    fuzz_clippy
        .args([
            "clippy",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "--target-dir",
        ])
        .arg(util::target_dir())
        .args(["--", "-D", "warnings"]);
    step("clippy (fuzz)", fuzz_clippy, "fix the warnings above");

    let mut kernel = util::nightly("cargo");
    kernel.args([
        "clippy",
        "--package",
        "agent-ebpf",
        "--target",
        "bpfel-unknown-none",
    ]);
    kernel.args(["-Z", "build-std=core", "--", "-D", "warnings"]);
    step("clippy (kernel programs)", kernel, "fix the warnings above");

    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("lint: ok");
    Ok(())
}
