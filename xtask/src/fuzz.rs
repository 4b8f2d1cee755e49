//! `cargo xtask fuzz`: builds the libFuzzer targets in `fuzz/` once
//! (cargo-fuzz, nightly, AddressSanitizer, debug assertions), then runs
//! them one after another for a fixed time each and reports executions
//! per target. A crash fails the command with the reproducer's path and
//! the command that reruns it.
//!
//! Each target reads the committed seeds in `fuzz/corpus/<target>` and
//! adds what it discovers to `fuzz/target/corpus/<target>`, which is kept
//! between runs but never committed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util;

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Targets to run (default: every file in fuzz/fuzz_targets).
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
}

/// Seconds per target in `cargo xtask test`: the seeds, then a little
/// fuzzing, enough to keep every target building and honest.
const SMOKE_SECONDS: u64 = 5;

impl FuzzArgs {
    pub fn smoke() -> FuzzArgs {
        FuzzArgs {
            time: SMOKE_SECONDS,
            targets: Vec::new(),
        }
    }
}

/// Inputs longer than this are not tried, per target: the kernel copies at
/// most 1 KiB of a ClientHello and 512 bytes of a DNS answer, and an event
/// is at most 1112 bytes; text parsers get room for realistic documents
/// without spending the time budget on megabyte inputs.
const MAX_LEN: &[(&str, usize)] = &[
    ("sni", 2048),
    ("dns_answer", 1024),
    ("events", 1200),
    ("cgroup_path", 4096),
    ("cmdline", 4096),
    ("policy", 8192),
];
const DEFAULT_MAX_LEN: usize = 16 * 1024;
/// Per-process memory ceiling: a parser that balloons on some input is a
/// finding too (the agent runs on every host).
const RSS_LIMIT_MB: u32 = 2048;
/// A single input taking longer than this is reported as a hang.
const INPUT_TIMEOUT_S: u32 = 10;
/// cargo-fuzz's default host triple directory under `fuzz/target`.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// What one run did, from libFuzzer's final statistics.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    executions: u64,
    exec_per_sec: u64,
    new_units: u64,
    peak_rss_mb: u64,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    let fuzz_dir = util::workspace_root().join("fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen: Vec<String> = if args.targets.is_empty() {
        all
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target `{t}`; the targets are: {}", all.join(", "));
            }
        }
        args.targets.clone()
    };
    build(&fuzz_dir)?;

    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for target in &chosen {
        match run_target(&fuzz_dir, target, args.time)? {
            Ok(stats) => rows.push((target.clone(), stats)),
            Err(failure) => {
                eprintln!("{failure}");
                failures.push(target.clone());
            }
        }
    }
    println!("\nfuzz: {}s per target", args.time);
    println!(
        "{:<20} {:>12} {:>9} {:>6} {:>8}",
        "target", "executions", "exec/s", "new", "rss MB"
    );
    for (target, s) in &rows {
        println!(
            "{target:<20} {:>12} {:>9} {:>6} {:>8}",
            s.executions, s.exec_per_sec, s.new_units, s.peak_rss_mb
        );
    }
    if !failures.is_empty() {
        bail!("fuzz targets failed: {}", failures.join(", "));
    }
    Ok(())
}

/// The targets: one per file in `fuzz/fuzz_targets`, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// All targets in one cargo build, so dependencies are instrumented once.
fn build(fuzz_dir: &Path) -> Result<()> {
    ensure_cargo_fuzz()?;
    let mut cmd = util::nightly("cargo");
    // cargo-fuzz's defaults: release with debug assertions and overflow
    // checks, AddressSanitizer (the ring-buffer decoder reads with unsafe).
    // The agent's build script would compile the kernel programs, which no
    // target loads (the agent embeds none under `cfg(fuzzing)`); the
    // kernel's DNS parser is fuzzed as host code from agent-common.
    cmd.args(["fuzz", "build", "--fuzz-dir"])
        .arg(fuzz_dir)
        .env("AYA_BUILD_SKIP", "1");
    println!("fuzz: {}", util::display(&cmd));
    util::run_checked(
        &mut cmd,
        "building the fuzz targets",
        "fix the build errors above; the targets build with nightly (rustup toolchain install nightly)",
    )
}

fn cargo_fuzz_present() -> bool {
    util::stdout_of(util::nightly("cargo").args(["fuzz", "--version"])).is_some()
}

/// Installs cargo-fuzz from crates.io when missing, like the bpf-linker
/// bootstrap.
fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_present() {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz (about a minute)...");
    util::run_checked(
        util::cargo().args(["install", "cargo-fuzz", "--locked"]),
        "installing cargo-fuzz",
        "it needs crates.io; or install it by hand with `cargo install cargo-fuzz`",
    )?;
    if !cargo_fuzz_present() {
        bail!(
            "cargo-fuzz was installed but `rustup run nightly cargo fuzz --version` fails\n\
             hint: make sure cargo's bin directory (~/.cargo/bin) is on PATH"
        );
    }
    Ok(())
}

/// Runs one target; the inner `Err` is a finding (crash, hang, leak, out
/// of memory), described for the terminal.
fn run_target(fuzz_dir: &Path, target: &str, seconds: u64) -> Result<Result<Stats, String>> {
    let binary = fuzz_dir
        .join("target")
        .join(TRIPLE)
        .join("release")
        .join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let scratch = fuzz_dir.join("target").join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let logs = fuzz_dir.join("target").join("logs");
    for dir in [&scratch, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let max_len = MAX_LEN
        .iter()
        .find(|(t, _)| *t == target)
        .map_or(DEFAULT_MAX_LEN, |(_, n)| *n);
    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut cmd = Command::new(&binary);
    // New inputs go to the first directory; the seeds are only read.
    cmd.arg(&scratch)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::null())
        .stderr(log);
    println!(
        "fuzz: {target} for {seconds}s (log: {})",
        log_path.display()
    );
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    let stats = parse_stats(&output);
    if status.success() {
        println!(
            "fuzz: {target}: {} executions in {:.0}s ({} exec/s)",
            stats.executions,
            started.elapsed().as_secs_f64(),
            stats.exec_per_sec
        );
        return Ok(Ok(stats));
    }
    let tail: Vec<&str> = output.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let mut report = format!(
        "fuzz: {target} FAILED ({status}) after {} executions\n{}\n",
        stats.executions,
        tail.join("\n")
    );
    match reproducer(&output) {
        Some(path) => report.push_str(&format!(
            "reproducer: {}\nrerun: {} {}\n   or: cd fuzz && cargo +nightly fuzz run {target} {}",
            path.display(),
            binary.display(),
            path.display(),
            path.display()
        )),
        None => report.push_str(&format!(
            "no reproducer written; full log: {}",
            log_path.display()
        )),
    }
    Ok(Err(report))
}

/// libFuzzer's final statistics (`-print_final_stats=1`).
fn parse_stats(output: &str) -> Stats {
    let mut stats = Stats::default();
    for line in output.lines() {
        let Some((key, value)) = line.strip_prefix("stat::").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        match key {
            "number_of_executed_units" => stats.executions = value,
            "average_exec_per_sec" => stats.exec_per_sec = value,
            "new_units_added" => stats.new_units = value,
            "peak_rss_mb" => stats.peak_rss_mb = value,
            _ => {}
        }
    }
    stats
}

/// The input libFuzzer saved for a finding: `Test unit written to PATH`.
fn reproducer(output: &str) -> Option<PathBuf> {
    output
        .lines()
        .find_map(|l| l.split_once("Test unit written to "))
        .map(|(_, path)| PathBuf::from(path.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_stats_and_the_reproducer() {
        let log = "\
#1048576\tpulse  cov: 210 ft: 700 corp: 40/2Kb exec/s: 52428 rss: 60Mb
==12== ERROR: libFuzzer: deadly signal
artifact_prefix='fuzz/artifacts/sni/'; Test unit written to fuzz/artifacts/sni/crash-0a1b
stat::number_of_executed_units: 1234567
stat::average_exec_per_sec:     20576
stat::new_units_added:          91
stat::slowest_unit_time_sec:    0
stat::peak_rss_mb:              75
";
        assert_eq!(
            parse_stats(log),
            Stats {
                executions: 1_234_567,
                exec_per_sec: 20_576,
                new_units: 91,
                peak_rss_mb: 75,
            },
            "every final stat is read"
        );
        assert_eq!(
            reproducer(log),
            Some(PathBuf::from("fuzz/artifacts/sni/crash-0a1b")),
            "the path after `Test unit written to`"
        );
        assert_eq!(parse_stats("no stats here"), Stats::default());
        assert_eq!(reproducer("Done 10 runs in 1 second(s)"), None);
    }
}
