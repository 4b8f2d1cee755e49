//! `cargo xtask test`: build, check what the privileged integration tests
//! need, then run every test in the workspace with MODELGATE_BIN set.

use std::ffi::OsString;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{build_cmd, cgroup, fuzz, package, util};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Leave out the short run of every fuzz target (it builds them with
    /// sanitizers, a few minutes the first time).
    #[arg(long)]
    skip_fuzz: bool,
    /// Arguments for `cargo test` (after `--`), e.g. `-- -p modelgate-tests`.
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    args: Vec<OsString>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    // Checked first: no point building for minutes to fail on a missing tool.
    check_prerequisites()?;
    let python = python_with_sdk()?;
    let bin = build_cmd::build(false)?;
    // The package test installs what `cargo xtask package` would build,
    // from this same debug binary: no release build in CI.
    let packages = package::package(&bin, false)?;
    let mut cmd = util::cargo();
    cmd.arg("test");
    // `--workspace` would override a forwarded `-p`.
    if !names_packages(&args.args) {
        cmd.arg("--workspace");
    }
    cmd.arg("--no-fail-fast")
        .args(&args.args)
        .env("MODELGATE_BIN", &bin)
        .env("MODELGATE_TEST_PYTHON", &python)
        .env("MODELGATE_DEB", &packages.deb)
        .env("MODELGATE_TARBALL", &packages.tarball);
    println!(
        "test: MODELGATE_BIN={} {}",
        bin.display(),
        util::display(&cmd)
    );
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", util::display(&cmd)))?;
    // Each target runs briefly, after the tests, so that every one keeps
    // building and its seeds keep passing; the long runs are `cargo xtask
    // fuzz`.
    let fuzzed = if args.skip_fuzz {
        Ok(())
    } else {
        fuzz::run(&fuzz::FuzzArgs::smoke())
    };
    if let Err(err) = &fuzzed {
        eprintln!("xtask: {err:#}");
    }
    // cargo's own status, so CI sees exactly what cargo reported.
    match status.code() {
        Some(0) if fuzzed.is_err() => std::process::exit(1),
        code => std::process::exit(code.unwrap_or(1)),
    }
}

/// Packages the SDK tests install from PyPI into a venv under target/, once.
const PYTHON_PACKAGES: &[&str] = &[
    "openai>=1.40,<3",
    "jsonschema>=4,<5",
    "pyyaml>=6,<7",
    "prometheus-client>=0.20,<1",
    "h2>=4,<5",
    // The evasion test's lenient stand-in reads (and its client writes)
    // `Content-Encoding: br` and `zstd` bodies.
    "brotli>=1,<2",
    "zstandard>=0.22,<1",
    // The signed-request test signs Bedrock calls with AWS's own signer.
    "botocore>=1.34,<2",
    // Realtime sessions: the openai SDK's WebSocket client, and the stand-in.
    "websockets>=13,<16",
];

/// A python with the official `openai` SDK: the proxy tests drive it as a
/// user's application would.
fn python_with_sdk() -> Result<std::path::PathBuf> {
    let venv = util::xtask_dir().join("pyenv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".modelgate-packages");
    let wanted = PYTHON_PACKAGES.join("\n");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    println!(
        "test: creating {} with {}",
        venv.display(),
        PYTHON_PACKAGES.join(", ")
    );
    let status = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?;
    if !status.success() {
        bail!(
            "`python3 -m venv {}` failed; install the venv module with `apt-get install -y python3-venv`",
            venv.display()
        );
    }
    let status = std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_PACKAGES)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!(
            "installing {} from PyPI failed; the SDK tests need it (check network access to PyPI)",
            PYTHON_PACKAGES.join(", ")
        );
    }
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// `true` when the forwarded cargo arguments pick packages themselves.
fn names_packages(args: &[OsString]) -> bool {
    // Arguments after a `--` belong to the test binaries.
    let cargo_args = args.iter().take_while(|a| *a != "--");
    cargo_args.map(|a| a.to_string_lossy()).any(|a| {
        a == "--workspace" || a == "--package" || a.starts_with("--package=") || a.starts_with("-p")
    })
}

/// The integration tests load eBPF programs into child cgroups and drive
/// real clients; report everything that is missing at once.
fn check_prerequisites() -> Result<()> {
    let mut problems = Vec::new();
    if !util::is_root() {
        problems.push(
            "the integration tests load eBPF programs: run as root (sudo -E cargo xtask test)"
                .to_owned(),
        );
    }
    // (tool, Debian package)
    let missing: Vec<(&str, &str)> = [
        ("curl", "curl"),
        ("python3", "python3"),
        ("unshare", "util-linux"),
        ("bpftool", "bpftool"),
        ("dnsmasq", "dnsmasq-base"),
        ("tmux", "tmux"),
        // The package test: build the .deb, install it in a scratch root,
        // run the installed agent with the unit's capabilities, verify the unit.
        ("dpkg-deb", "dpkg"),
        ("objcopy", "binutils"),
        ("readelf", "binutils"),
        ("nsenter", "util-linux"),
        ("setpriv", "util-linux"),
        ("systemd-analyze", "systemd"),
    ]
    .into_iter()
    .filter(|(tool, _)| util::which(tool).is_none())
    .collect();
    if !missing.is_empty() {
        let tools: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
        let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        problems.push(format!(
            "not on PATH: {}; install with `apt-get install -y {}`",
            tools.join(", "),
            packages.join(" ")
        ));
    }
    if let Err(err) = cgroup::mount() {
        problems.push(format!("{err:#}"));
    }
    if !problems.is_empty() {
        bail!(
            "the tests cannot run here:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn forwarded_package_selection_wins() {
        assert!(names_packages(&args(&["-p", "modelgate-tests"])));
        assert!(names_packages(&args(&["-pmodelgate-tests"])));
        assert!(names_packages(&args(&["--package=modelgate"])));
        assert!(!names_packages(&args(&["--", "--test-threads=1", "-p"])));
        assert!(!names_packages(&args(&[])));
    }
}
