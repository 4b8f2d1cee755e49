//! `cargo xtask bench proxy`: what the redirect proxy adds to a model API
//! call, against the same calls made directly, in the same run.
//!
//! Through the setup in `rig.rs`: a stand-in model server in this process,
//! a client in the cgroup the agent attaches to (sent through its proxy)
//! or in the one beside it (direct). The client and the server share CPU 0;
//! the load run gives the agent CPU 1 to itself, the one-client runs
//! measure it on the client's core and then wherever the scheduler puts it.

use std::time::Instant;

use anyhow::Result;
use clap::Args;

use super::{
    http_client::Mode,
    rig::{
        AGENT_CPU, CLIENT_CPU, ClientOpts, POLICY_YAML, Rig, Run, UPSTREAM, check_audit,
        check_upstream, cpu_seconds, prepare, run_label, set_affinity, vm_rss_kib,
    },
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
            latency: [run(Mode::Latency, false)?, run(Mode::Latency, true)?],
            stream: [run(Mode::Stream, false)?, run(Mode::Stream, true)?],
        });
    }
    set_affinity(agent_pid, Some(AGENT_CPU))?;
    let load_off = rig.run(&opts, Mode::Load, false)?;
    let (cpu_before, wall) = (cpu_seconds(agent_pid)?, Instant::now());
    let load_on = rig.run(&opts, Mode::Load, true)?;
    let proxy_cpu = cpu_seconds(agent_pid)? - cpu_before;
    let proxy_busy = proxy_cpu / wall.elapsed().as_secs_f64();
    let rss_kib = vm_rss_kib(agent_pid)?;

    let (audit, log) = (rig.audit.clone(), rig.log.clone());
    let (status, log_text) = rig.finish()?;
    let mut runs: Vec<&Run> = one_client
        .iter()
        .flat_map(|o| o.latency.iter().chain(&o.stream))
        .collect();
    runs.extend([&load_off, &load_on]);
    let report = Report {
        one_client: &one_client,
        load: [&load_off, &load_on],
        clients: args.clients,
        proxy_cpu,
        proxy_busy,
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
    latency: [Run; 2],
    stream: [Run; 2],
}

struct Report<'a> {
    one_client: &'a [OneClient],
    /// Direct, proxied.
    load: [&'a Run; 2],
    clients: u32,
    proxy_cpu: f64,
    /// Share of one core the agent used during the proxied load run.
    proxy_busy: f64,
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
            super::upstream::STREAM_CHUNKS,
            pair(str_off, "first"),
            pair(str_on, "first"),
            pair(str_off, "last"),
            pair(str_on, "last"),
            ms(str_on, str_off, "last_p50_us"),
            ms(str_on, str_off, "last_p99_us"),
        );
    }
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
        let rate = |run: &Run| run.count("completed") as f64 / run.get("seconds");
        let per_request = self.proxy_cpu * 1000.0 / load_on.count("completed").max(1) as f64;
        println!(
            "{} clients, proxy on 1 core: direct {} req/s; proxied {} req/s (target ≥ 10,000); \
             proxy CPU {per_request:.3} ms/request (target ≤ 0.1 ms){}",
            self.clients,
            super::group(rate(load_off) as u64),
            super::group(rate(load_on) as u64),
            match (load_off.count("errors"), load_on.count("errors")) {
                (0, 0) => String::new(),
                (a, b) => format!("; errors: direct {a}, proxied {b}"),
            }
        );
        // Below a saturated core, the proxied rate says more about the
        // client and server (sharing one core) than about the proxy.
        println!(
            "  the proxy's core was {:.0}% busy; at 100% its CPU per request would serve ≈ {} \
             req/s{}",
            self.proxy_busy * 100.0,
            super::group((1000.0 / per_request.max(1e-6)) as u64),
            if self.proxy_busy < 0.9 {
                " (the proxied rate above is bound by the client and server's core, not the proxy)"
            } else {
                ""
            }
        );
        println!(
            "proxy RSS after the run: {:.1} MB (target < 40 MB)",
            self.rss_kib as f64 / 1024.0
        );
    }
}
