//! Live per-process counters for `modelgate top`: cumulative since the
//! agent started, so a client gets rates by diffing two snapshots and no
//! window has to be agreed on between the two sides.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::{audit::AuditRecord, identity::Identity};

/// Processes kept; past this the one seen longest ago makes room, so a
/// host that forks a client per request cannot grow the table unbounded.
const MAX_PROCS: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcStats {
    pub pid: u32,
    pub who: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub user: String,
    /// Requests through the proxy.
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Sum of the requests' latencies: with `requests`, a mean over any
    /// interval.
    pub latency_ms: f64,
    /// Connections the kernel saw that did not go through the proxy.
    pub direct: u64,
    pub blocked: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub last_seen_ms: i64,
    /// Requests being served now: a long stream shows while it runs, not
    /// only once it ends.
    #[serde(default)]
    pub in_flight: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub now_ms: i64,
    pub procs: Vec<ProcStats>,
}

#[derive(Default)]
pub struct Live {
    procs: Mutex<HashMap<(u32, String), ProcStats>>,
}

impl Live {
    pub fn request(&self, audit: &AuditRecord) {
        self.update(&audit.identity, |p| {
            p.requests += 1;
            if audit.failed() {
                p.errors += 1;
            }
            p.input_tokens += audit.tokens.input.unwrap_or(0);
            p.output_tokens += audit.tokens.output.unwrap_or(0);
            p.latency_ms += audit.latency_ms;
            if let Some(model) = &audit.model {
                p.model = Some(model.clone());
            }
        });
    }

    /// A connect the kernel decided: `redirect` ones show up again as
    /// requests, so only the others are counted here.
    pub fn connect(&self, identity: &Identity, action: &str) {
        match action {
            "block" => self.update(identity, |p| p.blocked += 1),
            "allow" | "monitor" => self.update(identity, |p| p.direct += 1),
            _ => {}
        }
    }

    /// A request the proxy started serving: counted in flight for its
    /// process until the guard is dropped (the response's end).
    pub fn start(self: &Arc<Self>, identity: &Identity) -> Active {
        self.update(identity, |p| p.in_flight += 1);
        Active {
            live: self.clone(),
            key: (identity.tgid, identity.who().to_string()),
        }
    }

    /// The model a request in flight asked for, shown before it ends.
    pub fn model(&self, identity: &Identity, model: Option<&str>) {
        if let Some(model) = model {
            let key = (identity.tgid, identity.who().to_string());
            if let Some(p) = self.procs.lock().expect("poisoned").get_mut(&key) {
                p.model = Some(model.to_string());
            }
        }
    }

    fn update(&self, identity: &Identity, apply: impl FnOnce(&mut ProcStats)) {
        let key = (identity.tgid, identity.who().to_string());
        let now = crate::clock::now_ms();
        let mut procs = self.procs.lock().expect("poisoned");
        if !procs.contains_key(&key) && procs.len() >= MAX_PROCS {
            // A process with a request in flight is not the one to forget.
            let oldest = procs
                .iter()
                .min_by_key(|(_, p)| (p.in_flight > 0, p.last_seen_ms))
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                procs.remove(&oldest);
            }
        }
        let entry = procs.entry(key).or_insert_with(|| ProcStats {
            pid: identity.tgid,
            who: identity.who().to_string(),
            unit: identity.cgroup_info.unit.clone(),
            container: identity
                .cgroup_info
                .container_id
                .as_ref()
                .map(|c| c.chars().take(12).collect()),
            user: identity
                .user
                .clone()
                .unwrap_or_else(|| identity.uid.to_string()),
            ..ProcStats::default()
        });
        entry.last_seen_ms = now;
        apply(entry);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            now_ms: crate::clock::now_ms(),
            procs: self
                .procs
                .lock()
                .expect("poisoned")
                .values()
                .cloned()
                .collect(),
        }
    }
}

/// One request in flight; see [`Live::start`].
pub struct Active {
    live: Arc<Live>,
    key: (u32, String),
}

impl Drop for Active {
    fn drop(&mut self) {
        let mut procs = self.live.procs.lock().expect("poisoned");
        if let Some(p) = procs.get_mut(&self.key) {
            p.in_flight = p.in_flight.saturating_sub(1);
            p.last_seen_ms = crate::clock::now_ms();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(tgid: u32, exe: &str) -> Identity {
        Identity {
            tgid,
            pid: tgid,
            exe: Some(exe.into()),
            ..Identity::default()
        }
    }

    #[test]
    fn the_oldest_process_makes_room() {
        let live = Live::default();
        for tgid in 0..MAX_PROCS as u32 {
            live.connect(&identity(tgid, "/bin/a"), "monitor");
        }
        // Make process 7 the most recent: it must survive the eviction.
        std::thread::sleep(std::time::Duration::from_millis(2));
        live.connect(&identity(7, "/bin/a"), "block");
        live.connect(&identity(99_999, "/bin/new"), "monitor");
        let snap = live.snapshot();
        assert_eq!(snap.procs.len(), MAX_PROCS);
        assert!(snap.procs.iter().any(|p| p.pid == 99_999));
        let seven = snap.procs.iter().find(|p| p.pid == 7).unwrap();
        assert_eq!((seven.direct, seven.blocked), (1, 1));
    }

    #[test]
    fn a_request_counts_in_flight_until_it_ends() {
        let live = Arc::new(Live::default());
        let who = identity(5, "/usr/bin/python3");
        let first = live.start(&who);
        let second = live.start(&who);
        live.model(&who, Some("o3"));
        assert_eq!(live.snapshot().procs[0].in_flight, 2);
        assert_eq!(
            live.snapshot().procs[0].model.as_deref(),
            Some("o3"),
            "the model shows before the request ends"
        );
        drop(first);
        assert_eq!(live.snapshot().procs[0].in_flight, 1);
        drop(second);
        let snap = live.snapshot();
        assert_eq!((snap.procs[0].in_flight, snap.procs[0].requests), (0, 0));
    }

    #[test]
    fn redirected_connects_are_not_counted_twice() {
        let live = Live::default();
        live.connect(&identity(1, "/bin/a"), "redirect");
        assert!(live.snapshot().procs.is_empty());
    }
}
