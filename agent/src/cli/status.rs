//! `modelgate status`: what the running agent is doing, and whether
//! anything is being lost.

use std::{fmt::Write as _, path::Path, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::control::{client::Client, status::Status};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The status as one JSON document.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs, state_dir: &Path) -> Result<ExitCode> {
    let reply = Client::new(state_dir).get("/v1/status")?.ok()?;
    if args.json {
        super::table::print(&format!("{}\n", reply.text().trim_end()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let status: Status = reply.json()?;
    super::table::print(&render(&status))?;
    Ok(ExitCode::SUCCESS)
}

fn render(s: &Status) -> String {
    let mut out = String::new();
    let uptime = humantime::format_duration(std::time::Duration::from_secs(s.uptime_s));
    let _ = writeln!(
        out,
        "modelgate {} (pid {}), up {uptime} since {}",
        s.version, s.pid, s.started
    );
    let _ = writeln!(out, "attached   {}", programs_line(s));
    let _ = writeln!(
        out,
        "pinned     {} (fail_mode {})",
        s.attach.pins, s.attach.fail_mode
    );
    for program in s.attach.programs.iter().filter(|p| !p.attached) {
        let _ = writeln!(out, "           DETACHED: {}", program.name);
    }
    let p = &s.policy;
    let _ = writeln!(
        out,
        "policy     {} from {}, loaded {} (generation {}): {} providers, {} rules, default {}",
        p.version, p.dir, p.loaded, p.generation, p.providers, p.rules, p.default_action
    );
    let count = |name: &str| s.counters.get(name).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "connects   {} to endpoints: {} allowed, {} monitored, {} blocked, {} redirected",
        count("endpoint_hits"),
        count("allowed"),
        count("monitored"),
        count("blocked"),
        count("redirected")
    );
    let r = &s.requests;
    let _ = writeln!(
        out,
        "requests   {} audited since start: {} served, {} errors, {} refused",
        r.audited,
        r.audited.saturating_sub(r.errors + r.refused),
        r.errors,
        r.refused
    );
    let _ = writeln!(
        out,
        "events     {} lost in the kernel ({} of them connect decisions); alerts pending: {}",
        count("events_lost"),
        count("connect_events_lost"),
        s.alerts_pending
    );
    let _ = writeln!(
        out,
        "proxy      {} ({} connections)",
        s.proxy.listeners.join(", "),
        s.proxy.connections
    );
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let _ = writeln!(
        out,
        "memory     RSS {:.1} MiB; heap {:.1} MiB in use, {:.1} MiB free in the allocator",
        mib(s.memory.rss_bytes),
        mib(s.memory.heap_in_use_bytes),
        mib(s.memory.heap_free_bytes)
    );
    let _ = writeln!(out, "metrics    http://{}/metrics", s.metrics);
    let _ = writeln!(out, "control    {}", s.control);
    let maps: Vec<String> = s
        .maps
        .iter()
        .map(|m| format!("{} {}/{}", m.map, m.entries, m.capacity))
        .collect();
    let _ = writeln!(out, "maps       {}", maps.join(", "));
    let _ = writeln!(out, "sinks");
    let rows: Vec<[String; 5]> = s
        .sinks
        .iter()
        .map(|k| {
            [
                k.name.clone(),
                k.state().to_string(),
                k.delivered.map_or("-".into(), |d| d.to_string()),
                format!("{} lost, {} pending", k.lost, k.pending),
                k.target.clone(),
            ]
        })
        .collect();
    for line in
        super::table::table(["NAME", "STATE", "DELIVERED", "LOSSES", "TARGET"], &rows).lines()
    {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The cgroup, and how many of the programs are in force: the cgroup's
/// (checked against the kernel now) and the host-wide tracepoints, so the
/// total is the start-up log's.
fn programs_line(s: &Status) -> String {
    let programs = &s.attach.programs;
    let attached = programs.iter().filter(|p| p.attached).count();
    let scoped = |scope: &str| {
        programs
            .iter()
            .filter(|p| p.scope.as_deref() == Some(scope))
            .count()
    };
    let (cgroup, host) = (scoped("cgroup"), scoped("host"));
    let split = if cgroup + host == programs.len() && host > 0 {
        format!(": {cgroup} on the cgroup, {host} host-wide tracepoints")
    } else {
        String::new()
    };
    format!(
        "{} ({attached}/{} programs{split})",
        s.attach.cgroup,
        programs.len()
    )
}
