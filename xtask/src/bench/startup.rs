//! `cargo xtask bench startup`: from exec to systemd's READY=1 — the
//! programs attached and the proxy listening — against the 1 s target, for
//! a first start (nothing pinned) and a restart that adopts the pins, and,
//! as the baseline measured in the same run, what exec'ing the same binary
//! to print its version costs.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{CGROUP_PREFIX, Stats};
use crate::{
    build_cmd,
    cgroup::{self, ChildCgroup},
    util,
};

const TARGET: Duration = Duration::from_secs(1);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

const ENDPOINTS_YAML: &str = "\
# Written by `cargo xtask bench startup`.
providers:
  - name: openai
    api: openai
    hosts: []
    addresses: [127.0.0.9]
";
const POLICY_YAML: &str = "\
# Written by `cargo xtask bench startup`.
default_action: block
rules: []
";

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// Starts of each kind (the median is reported).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

pub fn run(args: &StartupArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the bench creates a cgroup and loads eBPF programs: run as root \
             (sudo -E cargo xtask bench startup)"
        );
    }
    let bin = build_cmd::build(true)?;
    super::catch_ctrl_c();
    let mount = cgroup::mount()?;
    super::remove_stale_cgroups(&mount);
    let cgroup = ChildCgroup::create(
        &mount,
        &format!("{CGROUP_PREFIX}startup-{}", std::process::id()),
    )?;
    let dir = util::xtask_dir().join("bench-startup");
    let policies = dir.join("policies");
    super::write_files(
        &policies,
        &[
            ("endpoints.yaml", ENDPOINTS_YAML),
            ("policy.yaml", POLICY_YAML),
        ],
    )?;
    let state = dir.join("state");
    let unpin = || {
        Command::new(&bin)
            .args(["uninstall-bpf", "--force", "--state-dir"])
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
    };
    unpin().context("removing pins left by an earlier run")?;

    let mut version = Vec::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        let status = Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .context("running modelgate --version")?;
        if !status.success() {
            bail!("modelgate --version failed ({status})");
        }
        version.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let mut cold = Vec::new();
    let mut adopt = Vec::new();
    for _ in 0..args.runs {
        super::check_interrupted()?;
        unpin().context("removing the pins")?;
        cold.push(start_once(&bin, &policies, &state, cgroup.path(), &dir)?);
        super::check_interrupted()?;
        // The pins the first start left: a restart adopts them.
        adopt.push(start_once(&bin, &policies, &state, cgroup.path(), &dir)?);
    }
    unpin().context("removing the pins")?;

    let base = Stats::of(&version).median;
    let target = TARGET.as_secs_f64() * 1000.0;
    for (what, samples) in [("first start", &cold), ("restart adopting pins", &adopt)] {
        let Stats { median, min, max } = Stats::of(samples);
        println!(
            "exec to READY, {what}: median {median:.0} ms (min {min:.0}, max {max:.0}) over {} \
             runs = {:.2}x the {target:.0} ms target {}; {:.0}x `modelgate --version` ({base:.1} ms)",
            args.runs,
            median / target,
            if median <= target {
                "(met)"
            } else {
                "(MISSED)"
            },
            median / base,
        );
    }
    Ok(())
}

/// Starts the agent with a notify socket, returns the ms from exec to
/// READY=1, and stops it with SIGTERM.
fn start_once(bin: &Path, policies: &Path, state: &Path, cgroup: &Path, dir: &Path) -> Result<f64> {
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path)
        .with_context(|| format!("binding {}", socket_path.display()))?;
    socket.set_read_timeout(Some(READY_TIMEOUT))?;
    let log = dir.join("agent.log");
    let start = Instant::now();
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--policies")
        .arg(policies)
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--state-dir")
        .arg(state)
        .args(["--proxy-port", "0", "--metrics-addr", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the agent")?;
    let mut buf = [0u8; 512];
    let ready = loop {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "no READY=1 from the agent ({err}); its log is {}",
                    log.display()
                );
            }
        };
        if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") {
            break start.elapsed();
        }
    };
    // SAFETY: the child is not reaped yet, so the pid is still ours.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().context("waiting for the agent")?;
    if !status.success() {
        bail!(
            "the agent exited with {status}; its log is {}",
            log.display()
        );
    }
    Ok(ready.as_secs_f64() * 1000.0)
}
