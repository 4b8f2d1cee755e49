//! `cargo xtask bench proxy`: what the redirect proxy adds to a model API
//! call, against the same calls made directly, in the same run.
//!
//! Through the setup in `rig.rs`: a stand-in model server in this process,
//! a client in the cgroup the agent attaches to (sent through its proxy)
//! or in the one beside it (direct). The client and the server share CPU 0;
//! the load run gives the agent CPU 1 to itself, the one-client runs
//! measure it on the client's core and then wherever the scheduler puts it.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Result;
use clap::Args;

use super::{
    http_client::Mode,
    rig::{
        AGENT_CPU, CLIENT_CPU, ClientOpts, POLICY_YAML, Rig, Run, UPSTREAM, check_audit,
        check_upstream, cpu_seconds, prepare, run_label, set_affinity, vm_rss_kib,
    },
    syscalls,
    upstream::STREAM_CHUNKS,
};

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Measured requests of the one-client run (the streaming run makes a
    /// quarter as many).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(4..))]
    requests: u32,
    /// Length of each concurrent run, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Concurrent clients (connections) of the throughput run.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// Content chunks of each streamed answer.
    #[arg(long, default_value_t = STREAM_CHUNKS, value_parser = chunk_count)]
    chunks: usize,
    /// Milliseconds between chunks in the trickle run (a model's pace);
    /// the other runs stream their chunks at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    chunk_delay_ms: u64,
    /// Measured streams of the one-client trickle run (each lasts
    /// `chunks` × `chunk-delay-ms`).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    trickle_requests: u32,
}

fn chunk_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!("`{text}` is not a chunk count from 1 to 10000")),
    }
}

/// A load run's proxied side: what the proxy spent on it.
struct Cost {
    cpu_seconds: f64,
    /// Share of one core the agent used.
    busy: f64,
    /// System calls by kind (empty without perf).
    syscalls: BTreeMap<&'static str, u64>,
}

/// Runs `mode` direct, then proxied while the agent's CPU time and system
/// calls are counted.
fn load_pair(rig: &Rig, opts: &ClientOpts, mode: Mode) -> Result<([Run; 2], Cost)> {
    let agent_pid = rig.agent_pid();
    let off = rig.run(opts, mode, false)?;
    let counting = syscalls::start(agent_pid);
    let (cpu_before, wall) = (cpu_seconds(agent_pid)?, Instant::now());
    let on = rig.run(opts, mode, true)?;
    let cpu = cpu_seconds(agent_pid)? - cpu_before;
    let busy = cpu / wall.elapsed().as_secs_f64();
    let syscalls = match counting.map(syscalls::Counting::stop) {
        Some(Ok(counts)) => counts,
        Some(Err(err)) => {
            eprintln!("bench: WARNING: {err:#}");
            BTreeMap::new()
        }
        None => BTreeMap::new(),
    };
    Ok((
        [off, on],
        Cost {
            cpu_seconds: cpu,
            busy,
            syscalls,
        },
    ))
}

pub fn run(args: &ProxyArgs) -> Result<()> {
    let bin = prepare("proxy", &UPSTREAM.to_string())?;
    let rig = Rig::start(&bin, "proxy", POLICY_YAML)?;
    let agent_pid = rig.agent_pid();
    let opts = ClientOpts {
        requests: args.requests,
        seconds: args.seconds,
        clients: args.clients,
        body: None,
        chunks: args.chunks,
        ..ClientOpts::default()
    };
    // One client, twice: with the proxy on its client's core, the figure
    // is what the proxy itself adds; where the scheduler puts it (usually
    // the idle core), it also holds four cross-core wake-ups per request,
    // which cost tens of µs each on a VM whose idle vCPUs halt.
    let mut one_client = Vec::new();
    for cpu in [Some(CLIENT_CPU), None] {
        set_affinity(agent_pid, cpu)?;
        let place = if cpu.is_some() {
            "same core"
        } else {
            "any core"
        };
        let run = |mode: Mode, proxied: bool| {
            let label = format!("{} (agent: {place})", run_label(mode, proxied));
            rig.run_labeled(&opts, mode, proxied, label)
        };
        one_client.push(OneClient {
            pinned: cpu.is_some(),
            chunks: args.chunks,
            latency: [run(Mode::Latency, false)?, run(Mode::Latency, true)?],
            stream: [run(Mode::Stream, false)?, run(Mode::Stream, true)?],
        });
    }
    // A model's pace: every chunk should reach the client as it arrives.
    let trickle_opts = ClientOpts {
        requests: args.trickle_requests * 4,
        chunk_delay_ms: args.chunk_delay_ms,
        ..opts
    };
    let trickle = [
        rig.run_labeled(&trickle_opts, Mode::Stream, false, "trickle direct".into())?,
        rig.run_labeled(&trickle_opts, Mode::Stream, true, "trickle proxied".into())?,
    ];
    set_affinity(agent_pid, Some(AGENT_CPU))?;
    let (load, load_cost) = load_pair(&rig, &opts, Mode::Load)?;
    let (stream_load, stream_cost) = load_pair(&rig, &opts, Mode::StreamLoad)?;
    let rss_kib = vm_rss_kib(agent_pid)?;

    let (audit, log) = (rig.audit.clone(), rig.log.clone());
    let (status, log_text) = rig.finish()?;
    let mut runs: Vec<&Run> = one_client
        .iter()
        .flat_map(|o| o.latency.iter().chain(&o.stream))
        .collect();
    runs.extend(trickle.iter().chain(&load).chain(&stream_load));
    let report = Report {
        one_client: &one_client,
        trickle: &trickle,
        chunk_delay_ms: args.chunk_delay_ms,
        load: [&load[0], &load[1]],
        load_cost: &load_cost,
        stream_load: [&stream_load[0], &stream_load[1]],
        stream_cost: &stream_cost,
        clients: args.clients,
        chunks: args.chunks,
        rss_kib,
    };
    report.print();
    check_upstream(&runs);
    check_audit(&runs, &audit);
    super::print_final_counters(status, &log_text, &log);
    Ok(())
}

/// The one-client runs (direct, proxied) with the agent placed one way.
struct OneClient {
    /// On the client's core, or wherever the scheduler puts it.
    pinned: bool,
    /// Content chunks per stream.
    chunks: usize,
    latency: [Run; 2],
    stream: [Run; 2],
}

struct Report<'a> {
    one_client: &'a [OneClient],
    /// One client, chunks `chunk_delay_ms` apart: direct, proxied.
    trickle: &'a [Run; 2],
    chunk_delay_ms: u64,
    /// Direct, proxied.
    load: [&'a Run; 2],
    load_cost: &'a Cost,
    stream_load: [&'a Run; 2],
    stream_cost: &'a Cost,
    clients: u32,
    chunks: usize,
    rss_kib: u64,
}

impl OneClient {
    fn print(&self) {
        let [lat_off, lat_on] = &self.latency;
        let [str_off, str_on] = &self.stream;
        let ms = |on: &Run, off: &Run, key: &str| (on.get(key) - off.get(key)) / 1000.0;
        if self.pinned {
            println!(
                "1 client, proxy on the client's core (CPU {CLIENT_CPU}): what the proxy adds"
            );
        } else {
            println!(
                "1 client, proxy where the scheduler puts it (as a service runs): plus cross-core wake-ups"
            );
        }
        println!(
            "  non-streaming: direct p50 {:.0} µs p99 {:.0} µs; proxied p50 {:.0} µs p99 {:.0} µs; \
             added p50 {:.2} ms (target < 0.2 ms), p99 {:.2} ms (target < 1 ms)",
            lat_off.get("p50_us"),
            lat_off.get("p99_us"),
            lat_on.get("p50_us"),
            lat_on.get("p99_us"),
            ms(lat_on, lat_off, "p50_us"),
            ms(lat_on, lat_off, "p99_us"),
        );
        let pair = |run: &Run, key: &str| {
            format!(
                "p50 {:.0} µs p99 {:.0} µs",
                run.get(&format!("{key}_p50_us")),
                run.get(&format!("{key}_p99_us"))
            )
        };
        println!(
            "  {}-chunk stream: time to first byte direct {}, proxied {}; to last byte direct {}, \
             proxied {}; added to last byte p50 {:.2} ms (target < 0.5 ms), p99 {:.2} ms",
            self.chunks,
            pair(str_off, "first"),
            pair(str_on, "first"),
            pair(str_off, "last"),
            pair(str_on, "last"),
            ms(str_on, str_off, "last_p50_us"),
            ms(str_on, str_off, "last_p99_us"),
        );
    }
}

fn errors(off: &Run, on: &Run) -> String {
    match (off.count("errors"), on.count("errors")) {
        (0, 0) => String::new(),
        (a, b) => format!("; errors: direct {a}, proxied {b}"),
    }
}

/// Below a saturated core, the proxied rate says more about the client and
/// server (sharing one core) than about the proxy.
fn busy_note(cost: &Cost, per_request_ms: f64) {
    println!(
        "  the proxy's core was {:.0}% busy; at 100% its CPU per request would serve ≈ {} \
         req/s{}",
        cost.busy * 100.0,
        super::group((1000.0 / per_request_ms.max(1e-6)) as u64),
        if cost.busy < 0.9 {
            " (the proxied rate above is bound by the client and server's core, not the proxy)"
        } else {
            ""
        }
    );
}

impl Report<'_> {
    fn print(&self) {
        let [load_off, load_on] = self.load;
        let upstream = match (load_on.upstream.http1, load_on.upstream.http2) {
            (0, n) if n > 0 => "h2 upstream",
            (n, 0) if n > 0 => "HTTP/1.1 upstream",
            _ => "HTTP/1.1 and h2 upstream",
        };
        println!("proxy bench (TLS client→proxy→TLS upstream, HTTP/1.1 client, {upstream})");
        for one in self.one_client {
            one.print();
        }
        let [trickle_off, trickle_on] = self.trickle;
        println!(
            "1 client, {} chunks {} ms apart (a model's pace): chunks later than the server's \
             pace direct p99 {:.0} µs max {:.0} µs; proxied p99 {:.0} µs max {:.0} µs (target: \
             every chunk within 1 ms of direct)",
            self.chunks,
            self.chunk_delay_ms,
            trickle_off.get("late_p99_us"),
            trickle_off.get("late_max_us"),
            trickle_on.get("late_p99_us"),
            trickle_on.get("late_max_us"),
        );
        let rate = |run: &Run| run.count("completed") as f64 / run.get("seconds");
        let per_request = |cost: &Cost, run: &Run| {
            cost.cpu_seconds * 1000.0 / run.count("completed").max(1) as f64
        };
        let plain_ms = per_request(self.load_cost, load_on);
        println!(
            "{} clients, proxy on 1 core: direct {} req/s; proxied {} req/s (target ≥ 10,000); \
             proxy CPU {plain_ms:.3} ms/request (target ≤ 0.1 ms){}",
            self.clients,
            super::group(rate(load_off) as u64),
            super::group(rate(load_on) as u64),
            errors(load_off, load_on),
        );
        busy_note(self.load_cost, plain_ms);
        let [stream_off, stream_on] = self.stream_load;
        let stream_ms = per_request(self.stream_cost, stream_on);
        // Content chunks, the usage chunk and `[DONE]`.
        let events = self.chunks as f64 + 2.0;
        println!(
            "{} clients streaming ({} chunks at once), proxy on 1 core: direct {} streams/s; \
             proxied {} streams/s = {:.0}% of direct (target ≥ 35%); proxy CPU {stream_ms:.3} \
             ms/stream = {:.1}× a plain request (target ≤ 2×), {:.1} µs/chunk{}",
            self.clients,
            self.chunks,
            super::group(rate(stream_off) as u64),
            super::group(rate(stream_on) as u64),
            rate(stream_on) / rate(stream_off).max(1e-9) * 100.0,
            stream_ms / plain_ms.max(1e-9),
            stream_ms * 1000.0 / events,
            errors(stream_off, stream_on),
        );
        busy_note(self.stream_cost, stream_ms);
        for (what, cost, run) in [
            ("plain request", self.load_cost, load_on),
            ("stream", self.stream_cost, stream_on),
        ] {
            if cost.syscalls.is_empty() {
                continue;
            }
            let n = run.count("completed").max(1) as f64;
            let kinds: Vec<String> = syscalls::KINDS
                .iter()
                .filter_map(|(kind, _)| {
                    let count = *cost.syscalls.get(kind)?;
                    Some(format!("{kind} {:.1}", count as f64 / n))
                })
                .collect();
            println!("  proxy system calls per {what}: {}", kinds.join(", "));
        }
        println!(
            "proxy RSS after the run: {:.1} MB (target < 40 MB)",
            self.rss_kib as f64 / 1024.0
        );
    }
}
