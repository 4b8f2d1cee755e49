//! `cargo xtask bench exec`: (a) how often a static binary that connects
//! the instant it starts escapes an `exe` rule that blocks it — the exec
//! window — for the file the rule names, a hard link to it and a fresh
//! copy each time; (b) what the exec hook and the agent cost a fork+exec
//! loop of `/bin/true` (and of a 200-argument command line), agent running
//! vs not loaded, alternated, with the agent's CPU per exec.

use std::{
    fs,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{CGROUP_PREFIX, Stats, agent, client, group};
use crate::{
    build_cmd,
    cgroup::{self, ChildCgroup},
    util,
};

const TARGET_RATIO: f64 = 0.95;
const ENDPOINT_IP: &str = "127.0.0.9";

/// The probe: connect to 127.0.0.9:PORT at once. Exit 0: connected (an
/// escape), 1: EPERM (blocked), 2: anything else.
const PROBE_RS: &str = r#"
use std::net::TcpStream;
fn main() {
    let port = std::env::args().nth(1).and_then(|p| p.parse::<u16>().ok()).unwrap_or(1);
    let code = match TcpStream::connect(("127.0.0.9", port)) {
        Ok(_) => 0,
        Err(e) if e.raw_os_error() == Some(1) => 1,
        Err(_) => 2,
    };
    std::process::exit(code);
}
"#;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Runs of the probe at the rule's own path (part a).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    tries: u32,
    /// Runs of a fresh copy of the probe (a file never seen before), and
    /// of a hard link (default: a tenth of --tries).
    #[arg(long)]
    copy_tries: Option<u32>,
    /// Seconds per exec-loop measurement (part b).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Measurements per side, taken alternately (off, on, off, on, ...).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Measure a release build of the agent (a debug build's userspace
    /// costs more CPU per exec).
    #[arg(long)]
    release: bool,
    /// Measure this agent binary instead of building one (e.g. an older
    /// build, for a comparison).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

pub fn run(args: &ExecArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the bench creates a cgroup and loads eBPF programs: run as root \
             (sudo -E cargo xtask bench exec)"
        );
    }
    let bin = match &args.agent_bin {
        Some(bin) => bin.clone(),
        None => build_cmd::build(args.release)?,
    };
    super::catch_ctrl_c();
    let dir = util::xtask_dir().join("bench-exec");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let probe = build_probe(&dir)?;

    let mount = cgroup::mount()?;
    super::remove_stale_cgroups(&mount);
    let on = ChildCgroup::create(
        &mount,
        &format!("{CGROUP_PREFIX}exec-{}", std::process::id()),
    )?;

    let listener = TcpListener::bind((ENDPOINT_IP, 0)).context("listening on 127.0.0.9")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });

    let policies = dir.join("policies");
    let endpoints = format!(
        "# Written by `cargo xtask bench exec`.\nproviders:\n  - name: openai\n    api: openai\n    hosts: []\n    ports: [{port}]\n    addresses: [{ENDPOINT_IP}]\n"
    );
    let policy = format!(
        "# Written by `cargo xtask bench exec`.\ndefault_action: monitor\nrules:\n  - name: no-probe\n    match:\n      exe: [{}]\n    action: block\n",
        probe.display()
    );
    super::write_files(
        &policies,
        &[("endpoints.yaml", &endpoints), ("policy.yaml", &policy)],
    )?;
    let start_agent = || -> Result<agent::Agent> {
        let events = dir.join("events.jsonl");
        let _ = fs::remove_file(&events);
        agent::Agent::start(&agent::Paths {
            bin: &bin,
            policies: &policies,
            cgroup: on.path(),
            events: &events,
            state_dir: &dir.join("state"),
            log: &dir.join("agent.log"),
            config: None,
            upstream_ca: None,
            cpu: None,
        })
    };

    // (a) the exec window.
    let copy_tries = args.copy_tries.unwrap_or((args.tries / 10).max(1));
    let agent = start_agent()?;
    println!(
        "bench exec (a): a static binary that connects at once, under `exe: [{}]` → block",
        probe.display()
    );
    let same = escapes(&on, port, args.tries, |_| Ok(probe.clone()))?;
    same.print("the rule's file");
    let link = dir.join("probe-link");
    let _ = fs::remove_file(&link);
    fs::hard_link(&probe, &link).context("hard-linking the probe")?;
    let linked = escapes(&on, port, copy_tries, |_| Ok(link.clone()))?;
    linked.print("a hard link");
    let copies = dir.join("copies");
    let _ = fs::remove_dir_all(&copies);
    fs::create_dir_all(&copies)?;
    let copied = escapes(&on, port, copy_tries, |i| {
        let copy = copies.join(format!("tool-{i}"));
        fs::copy(&probe, &copy).context("copying the probe")?;
        Ok(copy)
    })?;
    copied.print("a fresh copy each time");
    // Not the rule's program (one byte more: another digest, another
    // size): it must connect; a block here is a false positive of the
    // conservative verdict for files not vetted yet.
    let other = escapes(&on, port, copy_tries, |i| {
        let copy = copies.join(format!("other-{i}"));
        let mut bytes = fs::read(&probe).context("reading the probe")?;
        bytes.push(0);
        fs::write(&copy, bytes).context("writing another program")?;
        fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(copy)
    })?;
    println!(
        "  another new program each time (must connect): {} tries, {} connected, {} blocked \
         (false positives), {} other errors",
        group(u64::from(other.tries)),
        group(u64::from(other.escaped)),
        other.blocked,
        other.other
    );
    let _ = fs::remove_dir_all(&copies);
    let _ = fs::remove_file(&link);
    let (status, log_text) = agent.stop()?;
    let counters = super::print_final_counters(status, &log_text, &dir.join("agent.log"));
    if let Some(counters) = counters {
        for name in ["exec_unvetted", "exec_verdict_lost"] {
            if let Some(n) = agent::counter(&counters, name) {
                println!("  {name}: {n}");
            }
        }
    }

    // (b) exec throughput, agent running vs not loaded.
    println!(
        "bench exec (b): fork+exec loops for {} s each, {} rounds of off/on (agent not \
         loaded / running with the exe rule)",
        args.seconds, args.rounds
    );
    let many: Vec<String> = (0..200).map(|i| format!("argument-{i}")).collect();
    let loops: [(&str, &[String]); 2] = [("/bin/true", &[]), ("/bin/true + 200 args", &many)];
    for (name, extra) in loops {
        let mut off = Vec::new();
        let mut on_rates = Vec::new();
        let mut cpu_per_exec = Vec::new();
        for round in 1..=args.rounds {
            super::check_interrupted()?;
            let a = exec_loop(&on, extra, args.seconds)?;
            let agent = start_agent()?;
            let before = cpu_ticks(agent.pid());
            let b = exec_loop(&on, extra, args.seconds)?;
            let after = cpu_ticks(agent.pid());
            agent.stop()?;
            let ticks = after.saturating_sub(before) as f64;
            let us = ticks * 1e6 / clock_ticks() / (b * args.seconds as f64);
            println!(
                "  {name} round {round}/{}: off {}/s, on {}/s, agent {us:.1} µs CPU per exec",
                args.rounds,
                group(a as u64),
                group(b as u64)
            );
            off.push(a);
            on_rates.push(b);
            cpu_per_exec.push(us);
        }
        let ratios: Vec<f64> = off.iter().zip(&on_rates).map(|(a, b)| b / a).collect();
        let ratio = Stats::of(&ratios).median;
        println!(
            "{name}: off {}/s, on {}/s, ratio on/off {ratio:.3} (target ≥ {TARGET_RATIO}); \
             agent CPU per exec {:.1} µs (median)",
            group(Stats::of(&off).median as u64),
            group(Stats::of(&on_rates).median as u64),
            Stats::of(&cpu_per_exec).median
        );
    }
    Ok(())
}

/// Builds the probe with the host's stable rustc, statically linked.
fn build_probe(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("probe.rs");
    fs::write(&src, PROBE_RS).with_context(|| format!("writing {}", src.display()))?;
    let out = dir.join("probe");
    util::run_checked(
        Command::new("rustc")
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
                "--target",
                "x86_64-unknown-linux-gnu",
                "-o",
            ])
            .arg(&out)
            .arg(&src),
        "building the static probe",
        "the bench needs rustc with the x86_64-unknown-linux-gnu target",
    )?;
    Ok(out)
}

struct Escapes {
    tries: u32,
    escaped: u32,
    blocked: u32,
    other: u32,
}

impl Escapes {
    fn print(&self, what: &str) {
        println!(
            "  {what}: {} tries, {} escaped, {} blocked (EPERM), {} other errors (target: 0 escaped)",
            group(u64::from(self.tries)),
            self.escaped,
            group(u64::from(self.blocked)),
            self.other
        );
    }
}

/// Runs `path(i)` `tries` times in `cgroup`, each connecting at once.
fn escapes(
    cgroup: &ChildCgroup,
    port: u16,
    tries: u32,
    path: impl Fn(u32) -> Result<PathBuf>,
) -> Result<Escapes> {
    let mut result = Escapes {
        tries,
        escaped: 0,
        blocked: 0,
        other: 0,
    };
    for i in 0..tries {
        if i % 1000 == 0 {
            super::check_interrupted()?;
        }
        let mut cmd = Command::new(path(i)?);
        cmd.arg(port.to_string()).stdin(Stdio::null());
        client::place(&mut cmd, Some(cgroup), None)?;
        let status = cmd.status().context("running the probe")?;
        match status.code() {
            Some(0) => result.escaped += 1,
            Some(1) => result.blocked += 1,
            _ => result.other += 1,
        }
    }
    Ok(result)
}

/// fork+exec of /bin/true (with `extra` arguments) in `cgroup` for
/// `seconds`, from a shell loop inside it; execs per second.
fn exec_loop(cgroup: &ChildCgroup, extra: &[String], seconds: u64) -> Result<f64> {
    let args = extra.join(" ");
    // The loop runs in its own process in the cgroup, as a workload would.
    let script = format!(
        "n=0; end=$(( $(date +%s%N) + {seconds}000000000 )); \
         while [ $(( n % 100 )) -ne 0 ] || [ $(date +%s%N) -lt $end ]; do \
         /bin/true {args}; n=$((n+1)); done; echo $n"
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    client::place(&mut cmd, Some(cgroup), None)?;
    let started = Instant::now();
    let mut child = cmd.spawn().context("running the exec loop")?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("the loop's stdout")?
        .read_to_string(&mut out)?;
    child.wait()?;
    let elapsed = started.elapsed();
    let n: f64 = out.trim().parse().context("the loop's count")?;
    Ok(n / elapsed
        .as_secs_f64()
        .max(Duration::from_millis(1).as_secs_f64()))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the comm's closing parenthesis; utime and stime are
    // fields 14 and 15 of the whole line.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
