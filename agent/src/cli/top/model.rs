//! What `modelgate top` shows, from two snapshots of the agent's
//! cumulative counters: rates over the interval between them, grouped,
//! filtered and sorted. No terminal here, so it is tested as plain data.

use std::collections::HashMap;

use crate::live::{ProcStats, Snapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    Process,
    Exe,
    Unit,
    Container,
    User,
}

impl Group {
    pub fn next(self) -> Group {
        match self {
            Group::Process => Group::Exe,
            Group::Exe => Group::Unit,
            Group::Unit => Group::Container,
            Group::Container => Group::User,
            Group::User => Group::Process,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Group::Process => "process",
            Group::Exe => "exe",
            Group::Unit => "unit",
            Group::Container => "container",
            Group::User => "user",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Group::Process => "processes",
            Group::Exe => "executables",
            Group::Unit => "units",
            Group::Container => "containers",
            Group::User => "users",
        }
    }

    fn key(self, p: &ProcStats) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        match self {
            Group::Process => format!("{} {}", p.pid, short(&p.who)),
            Group::Exe => p.who.clone(),
            Group::Unit => or_dash(&p.unit),
            Group::Container => or_dash(&p.container),
            Group::User => p.user.clone(),
        }
    }
}

/// The file name of an executable path: a pid says which process already.
fn short(who: &str) -> &str {
    who.rsplit('/').next().unwrap_or(who)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    Requests,
    Tokens,
    Errors,
    Latency,
    Name,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Requests => Sort::Tokens,
            Sort::Tokens => Sort::Errors,
            Sort::Errors => Sort::Latency,
            Sort::Latency => Sort::Name,
            Sort::Name => Sort::Requests,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Requests => "req/s",
            Sort::Tokens => "tok/s",
            Sort::Errors => "err/s",
            Sort::Latency => "latency",
            Sort::Name => "name",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub key: String,
    pub procs: usize,
    pub req_s: f64,
    pub tok_s: f64,
    pub err_s: f64,
    /// Mean latency of the requests that finished in the interval.
    pub latency_ms: Option<f64>,
    pub model: String,
    /// Since the agent started: connects that bypassed the proxy, and
    /// connects refused.
    pub direct: u64,
    pub blocked: u64,
    /// Requests being served now (a long stream shows while it runs).
    pub in_flight: u64,
    last_seen_ms: i64,
}

/// Processes idle this long leave the screen (the agent keeps counting
/// them): a host that runs a short-lived client per call would otherwise
/// bury the busy ones.
const IDLE_MS: i64 = 60_000;

/// Rates between `prev` and `cur` per group, those matching `filter`
/// (case-insensitive, in the key or the model), sorted, busiest first.
///
/// Grouped by process, a process that has exited (`alive` says no) leaves
/// the screen once it has nothing in the interval: a host that runs a
/// short-lived client per call would otherwise show a pile of zero rows.
/// Other groupings keep its counts in its group.
pub fn rows(
    prev: &Snapshot,
    cur: &Snapshot,
    group: Group,
    sort: Sort,
    filter: &str,
    alive: &dyn Fn(u32) -> bool,
) -> Vec<Row> {
    let seconds = ((cur.now_ms - prev.now_ms) as f64 / 1000.0).max(0.001);
    let before: HashMap<(u32, &str), &ProcStats> = prev
        .procs
        .iter()
        .map(|p| ((p.pid, p.who.as_str()), p))
        .collect();
    let mut groups: HashMap<String, (Row, f64, u64)> = HashMap::new();
    let zero = ProcStats::default();
    let old_of = |p: &ProcStats| {
        before
            .get(&(p.pid, p.who.as_str()))
            .copied()
            .unwrap_or(&zero)
    };
    let shown = |p: &&ProcStats| {
        if p.in_flight > 0 {
            return true;
        }
        if cur.now_ms - p.last_seen_ms >= IDLE_MS {
            return false;
        }
        if group != Group::Process {
            return true;
        }
        let old = old_of(p);
        let active = p.requests > old.requests
            || p.direct > old.direct
            || p.blocked > old.blocked
            || p.in_flight != old.in_flight;
        active || alive(p.pid)
    };
    for p in cur.procs.iter().filter(shown) {
        let old = old_of(p);
        let key = group.key(p);
        let (row, latency_sum, finished) = groups.entry(key.clone()).or_insert_with(|| {
            (
                Row {
                    key,
                    ..Row::default()
                },
                0.0,
                0,
            )
        });
        let requests = p.requests.saturating_sub(old.requests);
        row.procs += 1;
        row.req_s += requests as f64 / seconds;
        let tokens =
            (p.input_tokens + p.output_tokens).saturating_sub(old.input_tokens + old.output_tokens);
        row.tok_s += tokens as f64 / seconds;
        row.err_s += p.errors.saturating_sub(old.errors) as f64 / seconds;
        *latency_sum += (p.latency_ms - old.latency_ms).max(0.0);
        *finished += requests;
        row.direct += p.direct;
        row.blocked += p.blocked;
        row.in_flight += p.in_flight;
        if let Some(model) = &p.model
            && p.last_seen_ms >= row.last_seen_ms
        {
            row.model = model.clone();
        }
        row.last_seen_ms = row.last_seen_ms.max(p.last_seen_ms);
    }
    let filter = filter.to_lowercase();
    let mut rows: Vec<Row> = groups
        .into_values()
        .map(|(mut row, latency_sum, finished)| {
            row.latency_ms = (finished > 0).then(|| latency_sum / finished as f64);
            row
        })
        .filter(|row| {
            filter.is_empty()
                || row.key.to_lowercase().contains(&filter)
                || row.model.to_lowercase().contains(&filter)
        })
        .collect();
    let by = |row: &Row| match sort {
        Sort::Requests => row.req_s,
        Sort::Tokens => row.tok_s,
        Sort::Errors => row.err_s,
        Sort::Latency => row.latency_ms.unwrap_or(0.0),
        Sort::Name => 0.0,
    };
    rows.sort_by(|a, b| {
        by(b)
            .total_cmp(&by(a))
            // Ties (idle rows) by the most recently active, then by name,
            // so rows do not jump around between refreshes.
            .then(b.last_seen_ms.cmp(&a.last_seen_ms).then(a.key.cmp(&b.key)))
    });
    if sort == Sort::Name {
        rows.sort_by(|a, b| a.key.cmp(&b.key));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(
        pid: u32,
        who: &str,
        unit: &str,
        requests: u64,
        tokens: u64,
        latency: f64,
    ) -> ProcStats {
        ProcStats {
            pid,
            who: who.into(),
            unit: Some(unit.into()),
            user: "root".into(),
            requests,
            input_tokens: tokens,
            latency_ms: latency,
            model: Some(format!("model-{pid}")),
            last_seen_ms: i64::from(pid),
            ..ProcStats::default()
        }
    }

    fn snap(now_ms: i64, procs: Vec<ProcStats>) -> Snapshot {
        Snapshot { now_ms, procs }
    }

    /// Every process still runs.
    const ALIVE: fn(u32) -> bool = |_| true;

    #[test]
    fn exited_processes_leave_the_process_view_once_quiet() {
        // Ten one-shot clients, each one request, all exited; one of them
        // finished its request in this interval.
        let done: Vec<ProcStats> = (1..=10)
            .map(|pid| {
                let mut p = proc(pid, "/usr/bin/curl", "a.service", 1, 5, 10.0);
                p.last_seen_ms = 900;
                p
            })
            .collect();
        let prev = snap(0, done[..9].to_vec());
        let cur = snap(1000, done.clone());
        let exited = |_| false;
        let shown = rows(&prev, &cur, Group::Process, Sort::Requests, "", &exited);
        assert_eq!(
            shown.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["10 curl"],
            "only the exited process with a request in the interval"
        );
        // By executable they still count, as one row.
        let by_exe = rows(&prev, &cur, Group::Exe, Sort::Requests, "", &exited);
        assert_eq!((by_exe.len(), by_exe[0].procs), (1, 10));
        // Running ones stay, quiet or not.
        let running = rows(&prev, &cur, Group::Process, Sort::Requests, "", &ALIVE);
        assert_eq!(running.len(), 10);
    }

    #[test]
    fn a_request_in_flight_shows_however_long_it_runs() {
        let mut streaming = proc(3, "/usr/bin/python3", "a.service", 0, 0, 0.0);
        streaming.in_flight = 1;
        streaming.last_seen_ms = 0;
        let now = IDLE_MS * 3;
        let prev = snap(now - 1000, vec![streaming.clone()]);
        let cur = snap(now, vec![streaming]);
        let shown = rows(&prev, &cur, Group::Process, Sort::Tokens, "", &|_| false);
        assert_eq!(shown.len(), 1, "a 3-minute stream is on screen");
        assert_eq!(
            (shown[0].key.as_str(), shown[0].in_flight),
            ("3 python3", 1)
        );
    }

    #[test]
    fn idle_processes_leave_the_screen() {
        let mut old = proc(1, "/usr/bin/curl", "a.service", 1, 1, 1.0);
        old.last_seen_ms = 0;
        let mut busy = proc(2, "/usr/bin/curl", "a.service", 1, 1, 1.0);
        busy.last_seen_ms = IDLE_MS;
        let cur = snap(IDLE_MS + 1, vec![old, busy]);
        let rows = rows(
            &snap(0, vec![]),
            &cur,
            Group::Process,
            Sort::Name,
            "",
            &ALIVE,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key, "2 curl");
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let prev = snap(
            0,
            vec![proc(1, "/usr/bin/curl", "a.service", 10, 100, 1000.0)],
        );
        let cur = snap(
            2000,
            vec![
                proc(1, "/usr/bin/curl", "a.service", 14, 300, 1400.0),
                proc(2, "/usr/bin/python3", "b.service", 2, 50, 60.0),
            ],
        );
        let rows = rows(&prev, &cur, Group::Process, Sort::Requests, "", &ALIVE);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key, "1 curl");
        assert_eq!(rows[0].req_s, 2.0);
        assert_eq!(rows[0].tok_s, 100.0);
        assert_eq!(rows[0].latency_ms, Some(100.0));
        // New since the last snapshot: everything it did is in the interval.
        assert_eq!(rows[1].req_s, 1.0);
        assert_eq!(rows[1].latency_ms, Some(30.0));
    }

    #[test]
    fn groups_sum_and_filters_match_keys_or_models() {
        let prev = snap(0, vec![]);
        let cur = snap(
            1000,
            vec![
                proc(1, "/usr/bin/curl", "a.service", 1, 10, 5.0),
                proc(2, "/usr/bin/curl", "b.service", 3, 10, 5.0),
                proc(3, "/usr/bin/python3", "b.service", 1, 500, 5.0),
            ],
        );
        let by_exe = rows(&prev, &cur, Group::Exe, Sort::Requests, "", &ALIVE);
        assert_eq!(by_exe[0].key, "/usr/bin/curl");
        assert_eq!((by_exe[0].procs, by_exe[0].req_s), (2, 4.0));
        let by_unit = rows(&prev, &cur, Group::Unit, Sort::Tokens, "", &ALIVE);
        assert_eq!(by_unit[0].key, "b.service");
        assert_eq!(by_unit[0].model, "model-3", "the most recent model");
        let filtered = rows(&prev, &cur, Group::Process, Sort::Name, "MODEL-2", &ALIVE);
        assert_eq!(filtered.len(), 1);
        assert_eq!(filtered[0].key, "2 curl");
    }

    #[test]
    fn a_reused_pid_with_another_exe_is_another_process() {
        let prev = snap(0, vec![proc(7, "/usr/bin/curl", "a.service", 50, 0, 0.0)]);
        let cur = snap(1000, vec![proc(7, "/usr/bin/wget", "a.service", 1, 0, 0.0)]);
        let rows = rows(&prev, &cur, Group::Process, Sort::Requests, "", &ALIVE);
        assert_eq!(rows[0].req_s, 1.0);
    }
}
