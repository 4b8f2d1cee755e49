//! Keeps the addresses of the catalog's exact host names current.
//!
//! Each host is re-resolved when its answer's TTL runs out (clamped, so a
//! TTL of 0 cannot spin and a day-long TTL cannot hide a move). A failed
//! lookup keeps the last good addresses: dropping them would quietly stop
//! enforcement for that host.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use hickory_resolver::TokioResolver;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, info, warn};

pub const MIN_TTL: Duration = Duration::from_secs(30);
pub const MAX_TTL: Duration = Duration::from_secs(3600);
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// A fresh answer for one host: the complete set of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub host: String,
    pub addrs: Vec<IpAddr>,
}

#[derive(Debug)]
struct HostState {
    due: Instant,
    retry: Duration,
    failures: u32,
}

/// Runs until `hosts` is closed. Sends one `Resolved` per successful lookup.
pub async fn run(mut hosts: watch::Receiver<Vec<String>>, out: mpsc::Sender<Resolved>) {
    let resolver = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(resolver) => resolver,
        Err(err) => {
            warn!(
                error = %err,
                "cannot read the system resolver configuration (/etc/resolv.conf); \
                 catalog host names will not be resolved, only `addresses:` entries are enforced"
            );
            return;
        }
    };
    let mut state: HashMap<String, HostState> = HashMap::new();
    loop {
        let now = Instant::now();
        let wanted = hosts.borrow_and_update().clone();
        state.retain(|host, _| wanted.contains(host));
        for host in &wanted {
            state.entry(host.clone()).or_insert(HostState {
                due: now,
                retry: FIRST_RETRY,
                failures: 0,
            });
        }
        let due: Vec<String> = state
            .iter()
            .filter(|(_, s)| s.due <= now)
            .map(|(h, _)| h.clone())
            .collect();
        // All due hosts at once: a catalog of dozens of names must not take
        // dozens of round trips to come up.
        let mut lookups = JoinSet::new();
        for host in due {
            let resolver = resolver.clone();
            lookups.spawn(async move {
                let answer = resolver.lookup_ip(host.as_str()).await;
                (host, answer)
            });
        }
        let mut newly_failing = Vec::new();
        while let Some(joined) = lookups.join_next().await {
            let Ok((host, answer)) = joined else { continue };
            let Some(entry) = state.get_mut(&host) else {
                continue;
            };
            match answer {
                Ok(answer) => {
                    let addrs: Vec<IpAddr> = answer.iter().collect();
                    let ttl = answer
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now())
                        .clamp(MIN_TTL, MAX_TTL);
                    debug!(%host, addrs = %crate::fields::list(&addrs), ttl_s = ttl.as_secs(), "resolved");
                    if entry.failures > 0 {
                        info!(%host, "resolving works again");
                    }
                    entry.due = Instant::now() + ttl;
                    entry.retry = FIRST_RETRY;
                    entry.failures = 0;
                    if out.send(Resolved { host, addrs }).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    entry.failures += 1;
                    debug!(%host, error = %err, failures = entry.failures, "resolve failed");
                    if entry.failures == 1 {
                        newly_failing.push((host, err.to_string()));
                    }
                    entry.due = Instant::now() + entry.retry;
                    entry.retry = (entry.retry * 2).min(MAX_RETRY);
                }
            }
        }
        // One line per outage, not one per host: with DNS down, a catalog of
        // 40 names would otherwise flood the journal.
        newly_failing.sort();
        if let Some((first, error)) = newly_failing.first() {
            let names: Vec<&str> = newly_failing
                .iter()
                .take(5)
                .map(|(h, _)| h.as_str())
                .collect();
            warn!(
                failing = newly_failing.len(),
                of = state.len(),
                hosts = %names.join(", "),
                first_error = %format!("{first}: {error}"),
                "cannot resolve catalog hosts; keeping their last known addresses and retrying \
                 (MODELGATE_LOG=debug lists each)"
            );
        }
        let next = state
            .values()
            .map(|s| s.due)
            .min()
            .unwrap_or_else(|| Instant::now() + MAX_TTL);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = hosts.changed() => if changed.is_err() { return },
        }
    }
}

/// The union of resolved addresses per host, as the agent last heard them.
#[derive(Debug, Default, Clone)]
pub struct ResolvedHosts {
    by_host: BTreeMap<String, Vec<IpAddr>>,
}

impl ResolvedHosts {
    /// Returns true when the set for this host changed.
    pub fn update(&mut self, update: Resolved) -> bool {
        let mut addrs = update.addrs;
        addrs.sort();
        addrs.dedup();
        if self.by_host.get(&update.host) == Some(&addrs) {
            return false;
        }
        self.by_host.insert(update.host, addrs);
        true
    }

    pub fn retain_hosts(&mut self, hosts: &[String]) {
        self.by_host.retain(|h, _| hosts.contains(h));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[IpAddr])> {
        self.by_host.iter().map(|(h, a)| (h.as_str(), a.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn updates_report_changes_only() {
        let mut hosts = ResolvedHosts::default();
        let a = Resolved {
            host: "a".into(),
            addrs: vec![ip("10.0.0.2"), ip("10.0.0.1")],
        };
        assert!(hosts.update(a.clone()));
        let reordered = Resolved {
            host: "a".into(),
            addrs: vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.1")],
        };
        assert!(!hosts.update(reordered), "same set in another order");
        assert!(hosts.update(Resolved {
            host: "a".into(),
            addrs: vec![ip("10.0.0.3")],
        }));
        hosts.retain_hosts(&[]);
        assert_eq!(hosts.iter().count(), 0);
    }
}
