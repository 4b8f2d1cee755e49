//! `cargo xtask bench dns`: how many DNS answers per second the learning
//! path (kernel match → ring buffer → agent) handles with no loss, and the
//! ring-buffer loss counter at twice that rate.
//!
//! A DNS server thread in this process (outside the watched cgroup) answers
//! every query on 127.0.3.53:53 at once with one A record, an address of
//! its own per answer. A client placed in the "on" cgroup, which the agent
//! watches with a catalog holding `*.openai.azure.com`, asks for fresh
//! names `r<N>.openai.azure.com` at a fixed rate; every answer it receives
//! went through the agent's `cgroup_skb/ingress` program, which matched the
//! name, put the address in the endpoint map and reserved a 560-byte event
//! in the 4 MiB ring buffer for the agent (`events_lost` when the ring was
//! full). One agent per rate, started fresh; its final counters after
//! SIGTERM give `dns_matches` and `events_lost`. The client and the server
//! share CPU 0, the agent has CPU 1 to itself.
//!
//! The rate steps up until a step loses events (down, when the first one
//! already does), is refined between the last lossless step and the first
//! lossy one, then runs once at twice the highest lossless rate.
//!
//! A new address in every answer is the agent's worst case (each one
//! changes its endpoint set); `--distinct N` cycles the answers through N
//! addresses instead, as a provider's few front ends do.
//!
//! What it prints is in `dns/report.rs`.

mod report;
#[cfg(test)]
mod tests;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use self::report::{print_headline, print_step, print_sustained, print_table};
use super::{
    CGROUP_PREFIX,
    agent::{self, Agent},
    client::{self, place},
    dns_responder::Responder,
    rig::{self, AGENT_CPU, CLIENT_CPU},
};
use crate::{
    cgroup::{self, ChildCgroup},
    util,
};

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 3, 53), 53);
/// Below this, a step down stops: the agent cannot keep up at all.
const MIN_RATE: u64 = 250;
/// After the client is done, how long the agent may take to work through
/// what the ring buffer still holds before it is stopped anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(20);
/// The agent counts as idle once it uses less than this share of a core.
const IDLE_SHARE: f64 = 0.1;
const IDLE_SAMPLE: Duration = Duration::from_millis(200);
/// A step whose answers fell short of this share of its rate shows what
/// the client and server could do, not what was asked.
const REACHED: f64 = 0.95;
/// New addresses the agent's closing pace is measured over.
const TAIL: u64 = 1_000;

const ENDPOINTS_YAML: &str = "\
# Written by `cargo xtask bench dns`: a wildcard, learned from DNS answers.
providers:
  - name: azure-openai
    api: azure-openai
    hosts: [\"*.openai.azure.com\"]
";
const POLICY_YAML: &str = "\
# Written by `cargo xtask bench dns`.
default_action: monitor
rules: []
";
const AGENT_YAML: &str = "\
# Written by `cargo xtask bench dns`: no fixed proxy port to collide on.
proxy_port: 0
";

#[derive(Debug, Args)]
pub struct DnsArgs {
    /// Answer rates (per second) to step through, until one loses events.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [5_000u64, 10_000, 20_000, 40_000, 80_000],
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    rates: Vec<u64>,
    /// Length of each step's client run, in seconds.
    #[arg(long, default_value_t = 3.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Extra steps halving the gap between the highest lossless rate and
    /// the lowest lossy one.
    #[arg(long, default_value_t = 1)]
    refine: u32,
    /// UDP sockets the client spreads its queries over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    sockets: u16,
    /// Addresses the answers cycle through, as a real provider's few front
    /// ends; 0: every answer a new address (each one new to the agent).
    #[arg(long, default_value_t = 0)]
    distinct: u32,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

pub fn run(args: &DnsArgs) -> Result<()> {
    let bin = rig::prepare("dns", &format!("{SERVER} (UDP)"))?;
    let started = Instant::now();
    let mount = cgroup::mount()?;
    super::remove_stale_cgroups(&mount);
    let pid = std::process::id();
    // Every agent is stopped within its step; `Bench` drops the server
    // before it removes the cgroup.
    let on = ChildCgroup::create(&mount, &format!("{CGROUP_PREFIX}dns-on-{pid}"))?;
    let pin = client::can_use_cpu(CLIENT_CPU) && client::can_use_cpu(AGENT_CPU);
    if !pin {
        println!(
            "bench: CPUs {CLIENT_CPU} and {AGENT_CPU} are not both in this process's affinity \
             mask; nothing is pinned"
        );
    }
    let responder = Responder::start(
        SocketAddr::V4(SERVER),
        pin.then_some(CLIENT_CPU),
        args.distinct,
    )?;

    let dir = util::xtask_dir();
    let policies = dir.join("bench-dns-policies");
    super::write_files(
        &policies,
        &[
            ("endpoints.yaml", ENDPOINTS_YAML),
            ("policy.yaml", POLICY_YAML),
        ],
    )?;
    let config = dir.join("bench-dns-agent.yaml");
    fs::write(&config, AGENT_YAML).with_context(|| format!("writing {}", config.display()))?;
    let bench = Bench {
        bin,
        exe: std::env::current_exe().context("finding the xtask binary for the bench client")?,
        on,
        responder,
        policies,
        config,
        dir,
        pin,
        seconds: args.seconds,
        sockets: args.sockets,
    };
    println!(
        "bench: DNS server on {} (UDP){}, {}; client in {}; one fresh agent per rate{}; {} s per \
         step",
        bench.responder.addr(),
        if pin {
            format!(", it and the client on CPU {CLIENT_CPU}")
        } else {
            String::new()
        },
        match args.distinct {
            0 => "a new address in every answer".to_owned(),
            n => format!("answers cycling through {n} addresses"),
        },
        bench.on.path().display(),
        if pin {
            format!(" on CPU {AGENT_CPU}")
        } else {
            String::new()
        },
        args.seconds
    );

    let found = search(&args.rates, args.refine, |rate| bench.step(rate))?;

    let Bench { responder, .. } = bench;
    let served = responder.answered();
    drop(responder);
    print_table(&found.steps);
    println!("DNS server: {} answers sent in all", super::group(served));
    print_headline(&found);
    print_sustained(&found.steps, args.seconds);
    println!(
        "bench: {:.0} s in all (after the build)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The steps run, the highest lossless one and the one at twice its rate.
#[derive(Debug, Default)]
struct Search {
    steps: Vec<Step>,
    best: Option<usize>,
    double: Option<usize>,
    /// A lossless step fell short of its rate: the client and the server
    /// could offer no more, so higher rates were not tried.
    saturated: bool,
}

/// Steps up through `rates` until a step loses events or the load
/// generator falls short (down from the lowest, halving, when it already
/// loses), halves the gap between the highest lossless rate and the lowest
/// lossy one `refine` times, then runs twice the highest lossless rate.
fn search(rates: &[u64], refine: u32, mut step: impl FnMut(u64) -> Result<Step>) -> Result<Search> {
    let mut found = Search::default();
    let mut rates = rates.to_vec();
    rates.sort_unstable();
    rates.dedup();
    let mut lossy = None::<u64>;
    let mut run = |found: &mut Search, rate: u64| -> Result<bool> {
        let s = step(rate)?;
        let lost = s.lost();
        if !lost {
            found.saturated = !s.reached();
            found.best = Some(found.steps.len());
        }
        found.steps.push(s);
        Ok(lost)
    };
    for &rate in &rates {
        if run(&mut found, rate)? {
            lossy = Some(rate);
            break;
        }
        if found.saturated {
            break;
        }
    }
    // The lowest step already lost events: halve until one does not.
    if found.best.is_none()
        && let Some(&lowest) = rates.first()
    {
        let mut rate = lowest / 2;
        while rate >= MIN_RATE {
            if !run(&mut found, rate)? {
                break;
            }
            lossy = Some(rate);
            rate /= 2;
        }
    }
    for _ in 0..refine {
        let (Some(best), Some(high), false) = (found.best, lossy, found.saturated) else {
            break;
        };
        let low = found.steps[best].rate;
        let mid = round_rate(low.midpoint(high));
        if mid <= low || mid >= high {
            break;
        }
        if run(&mut found, mid)? {
            lossy = Some(mid);
        }
    }
    if let (Some(best), false) = (found.best, found.saturated) {
        let rate = found.steps[best].rate * 2;
        let s = step(rate)?;
        found.double = Some(found.steps.len());
        found.steps.push(s);
    }
    Ok(found)
}

/// Rates between steps are rounded to a figure that reads well.
fn round_rate(rate: u64) -> u64 {
    let unit = match rate {
        0..10_000 => 250,
        10_000..100_000 => 1_000,
        _ => 5_000,
    };
    (rate + unit / 2) / unit * unit
}

/// What every step shares.
struct Bench {
    bin: PathBuf,
    exe: PathBuf,
    // Fields drop in order: the server stops, then the cgroup goes.
    responder: Responder,
    on: ChildCgroup,
    policies: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    pin: bool,
    seconds: f64,
    sockets: u16,
}

/// One rate: what the client saw, what the kernel counted and what the
/// agent spent.
#[derive(Debug, Clone, Default)]
struct Step {
    rate: u64,
    sent: u64,
    answered: u64,
    seconds: f64,
    client_errors: u64,
    /// `dns_matches`, `dns_learned`, `events_lost` from the final counters
    /// (None when the agent logged none).
    matches: Option<u64>,
    learned: Option<u64>,
    lost: Option<u64>,
    /// The agent's CPU seconds from the client's start until it was idle.
    agent_cpu: f64,
    /// From the client's end until the agent was idle; None: still busy
    /// at [`CATCH_UP_LIMIT`].
    catch_up: Option<f64>,
    /// `endpoint maps updated` records in the agent's log, and the sum of
    /// their `added` (the agent writes each address it absorbed from an
    /// answer into the endpoint map once more).
    map_updates: u64,
    map_added: u64,
    /// How fast the agent absorbed its last [`TAIL`] new addresses (per
    /// second), and how many it held by then: its pace when it has a
    /// backlog, from the timestamps of those records.
    tail_rate: Option<f64>,
    tail_total: u64,
    /// Error and warning records the agent logged, and the first of each.
    errors: u64,
    first_error: Option<String>,
    warnings: u64,
    first_warning: Option<String>,
}

impl Step {
    /// Lost events, or no counters to tell: either way not "no loss".
    fn lost(&self) -> bool {
        self.lost != Some(0)
    }

    fn delivered(&self) -> Option<u64> {
        Some(self.matches?.saturating_sub(self.lost?))
    }

    fn answered_rate(&self) -> f64 {
        self.answered as f64 / self.seconds.max(1e-9)
    }

    /// The client got (nearly) all the answers it asked for at its rate.
    fn reached(&self) -> bool {
        self.answered_rate() >= self.rate as f64 * REACHED
    }
}

impl Bench {
    /// Starts an agent, runs the client at `rate`, waits for the agent to
    /// catch up, stops it and reads its counters.
    fn step(&self, rate: u64) -> Result<Step> {
        super::check_interrupted()?;
        let file = |name: &str| self.dir.join(format!("bench-dns-{rate}-{name}"));
        let (log, events, state_dir) = (file("agent.log"), file("events.jsonl"), file("state"));
        // Stale files would make their records look like this run's (and
        // the last step's heartbeat would read as an enforcement gap).
        let _ = fs::remove_file(&events);
        let _ = fs::remove_dir_all(&state_dir);
        fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let agent = Agent::start(&agent::Paths {
            bin: &self.bin,
            policies: &self.policies,
            cgroup: self.on.path(),
            events: &events,
            state_dir: &state_dir,
            log: &log,
            config: Some(&self.config),
            upstream_ca: None,
            cpu: self.pin.then_some(AGENT_CPU),
        })?;
        let agent_pid = agent.pid();
        let cpu_before = rig::cpu_seconds(agent_pid)?;
        let out = self.client(rate)?;
        let (catch_up, cpu_after) = wait_idle(agent_pid)?;
        let (status, log_text) = agent.stop()?;
        super::check_interrupted()?;

        let mut step = Step {
            rate,
            sent: count(&out, "sent"),
            answered: count(&out, "answered"),
            seconds: out
                .get("seconds")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN),
            client_errors: count(&out, "errors") + count(&out, "bad"),
            agent_cpu: cpu_after - cpu_before,
            catch_up: catch_up.map(|d| d.as_secs_f64()),
            ..Step::default()
        };
        if let Some(first) = out.get("first_error").and_then(|e| e.as_str()) {
            eprintln!("bench: WARNING: at {rate}/s the client's first error: {first}");
        }
        if !status.success() {
            eprintln!(
                "bench: WARNING: the agent exited with {status}; see {}",
                log.display()
            );
        }
        match agent::final_counters(&log_text) {
            Some(counters) => {
                step.matches = agent::counter(&counters, "dns_matches");
                step.learned = agent::counter(&counters, "dns_learned");
                step.lost = agent::counter(&counters, "events_lost");
            }
            None => eprintln!(
                "bench: WARNING: the agent logged no `final counters` line; see {}",
                log.display()
            ),
        }
        read_log(&log_text, &mut step);
        print_step(&step, &log);
        Ok(step)
    }

    /// Runs `exe bench-dns-client` in the "on" cgroup and returns its JSON.
    fn client(&self, rate: u64) -> Result<serde_json::Value> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("bench-dns-client")
            .args(["--rate", &rate.to_string()])
            .args(["--seconds", &self.seconds.to_string()])
            .args(["--server", &SERVER.to_string()])
            .args(["--sockets", &self.sockets.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(&mut cmd, Some(&self.on), self.pin.then_some(CLIENT_CPU))?;
        let out = cmd.output();
        super::check_interrupted()?;
        let out = out.with_context(|| {
            format!(
                "starting the bench DNS client in {} (`{}`)",
                self.on.path().display(),
                util::display(&cmd)
            )
        })?;
        if !out.status.success() {
            bail!(
                "the bench DNS client failed ({}) in {}",
                out.status,
                self.on.path().display()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .with_context(|| format!("the bench DNS client printed {text:?}, not a JSON line"))
    }
}

fn count(out: &serde_json::Value, key: &str) -> u64 {
    out.get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// Waits until the agent has worked through what the ring buffer holds:
/// its CPU use over [`IDLE_SAMPLE`] falls below [`IDLE_SHARE`] of a core.
/// Returns how long that took (None: still busy at [`CATCH_UP_LIMIT`]) and
/// the agent's CPU seconds at that point.
fn wait_idle(pid: u32) -> Result<(Option<Duration>, f64)> {
    let start = Instant::now();
    let mut last = rig::cpu_seconds(pid)?;
    loop {
        let window = Instant::now();
        thread::sleep(IDLE_SAMPLE);
        super::check_interrupted()?;
        let now = rig::cpu_seconds(pid)?;
        let busy = (now - last) / window.elapsed().as_secs_f64();
        if busy < IDLE_SHARE {
            // The window it went idle in counts as catching up.
            return Ok((Some(window.saturating_duration_since(start)), now));
        }
        last = now;
        if start.elapsed() > CATCH_UP_LIMIT {
            return Ok((None, now));
        }
    }
}

/// Fills the step's log-derived fields from the agent's JSON log.
fn read_log(log: &str, step: &mut Step) {
    // (time, new addresses so far, addresses in the map) at every update.
    let mut adds: Vec<(f64, u64, u64)> = Vec::new();
    for record in log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let message = record
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default();
        let level = record
            .get("level")
            .and_then(|l| l.as_str())
            .unwrap_or_default();
        if message == "endpoint maps updated" {
            step.map_updates += 1;
            let added = record.get("added").and_then(|a| a.as_u64()).unwrap_or(0);
            step.map_added += added;
            let time = record
                .get("timestamp")
                .and_then(|t| t.as_str())
                .and_then(unix_seconds);
            let total = record.get("total").and_then(|t| t.as_u64()).unwrap_or(0);
            if let (Some(time), true) = (time, added > 0) {
                adds.push((time, step.map_added, total));
            }
        }
        let (n, first) = match level {
            "ERROR" => (&mut step.errors, &mut step.first_error),
            "WARN" => (&mut step.warnings, &mut step.first_warning),
            _ => continue,
        };
        *n += 1;
        first.get_or_insert_with(|| summarize(&record));
    }
    if let Some(&(end, last, total)) = adds.last()
        && let Some(&(start, first, _)) = adds.iter().rev().find(|a| last - a.1 >= TAIL)
        && end > start
    {
        step.tail_rate = Some((last - first) as f64 / (end - start));
        step.tail_total = total;
    }
}

/// `2026-11-26T03:50:13.027670Z` (the agent's log timestamps, UTC) in
/// seconds since the epoch.
fn unix_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.splitn(3, ':');
    let (h, min) = (
        hms.next()?.parse::<i64>().ok()?,
        hms.next()?.parse::<i64>().ok()?,
    );
    let sec = hms.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

/// A log record in one short line: its message and other fields.
fn summarize(record: &serde_json::Value) -> String {
    let Some(fields) = record.as_object() else {
        return record.to_string();
    };
    let mut text = fields
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    for (key, value) in fields {
        if !matches!(
            key.as_str(),
            "message" | "timestamp" | "level" | "target" | "span" | "spans"
        ) {
            text.push_str(&format!(" {key}={value}"));
        }
    }
    if text.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}
