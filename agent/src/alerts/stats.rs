//! Counters that make every loss visible: lock-free for the sinks to bump,
//! read as a snapshot by [`super::Alerts::stats`].

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use serde::Serialize;
use tracing::warn;

/// One sink's counters.
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub name: String,
    /// Where it delivers: the file's path, the syslog socket or address,
    /// the webhook's scheme and authority.
    pub target: String,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    /// Alerts waiting in the sink's spool (webhooks only).
    pub spool_depth: AtomicU64,
}

impl SinkCounters {
    pub fn new(name: String) -> SinkCounters {
        SinkCounters {
            name,
            ..SinkCounters::default()
        }
    }

    /// [`SinkCounters::new`] for a sink delivering to `target`.
    pub fn to(name: String, target: String) -> SinkCounters {
        SinkCounters {
            name,
            target,
            ..SinkCounters::default()
        }
    }

    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a loss and logs it: the first, then at every power of two,
    /// so a storm of losses is visible without flooding the log.
    pub fn dropped(&self, n: u64, why: &str) {
        if n == 0 {
            return;
        }
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        let total = before + n;
        if before == 0 || (before + 1..=total).any(u64::is_power_of_two) {
            warn!(sink = %self.name, dropped_total = total, "alerts lost: {why}");
        }
    }

    pub fn snapshot(&self) -> SinkStats {
        SinkStats {
            sink: self.name.clone(),
            target: self.target.clone(),
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            spool_depth: self.spool_depth.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// `file`, `syslog` or `webhook-<hash>` (the spool directory's name).
    pub sink: String,
    /// Where it delivers ([`SinkCounters::target`]).
    pub target: String,
    pub delivered: u64,
    /// Delivery attempts that failed and will be tried again.
    pub retried: u64,
    /// Alerts this sink lost: queue full, write failed, refused (4xx),
    /// gave up, or pushed out of a full spool.
    pub dropped: u64,
    pub spool_depth: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Alerts handed to `send`.
    pub received: u64,
    /// Refused by `send` because the queue was full: lost for every sink.
    pub queue_full: u64,
    /// Repeats absorbed into a folded alert (not losses).
    pub folded: u64,
    /// Sent without folding because the fold table was full.
    pub alerts_unfolded: u64,
    pub sinks: Vec<SinkStats>,
}

impl fmt::Display for Stats {
    /// `key=value` pairs for one log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} queue_full={} folded={} alerts_unfolded={}",
            self.received, self.queue_full, self.folded, self.alerts_unfolded
        )?;
        for sink in &self.sinks {
            write!(
                f,
                " {0}.delivered={1} {0}.retried={2} {0}.dropped={3}",
                sink.sink, sink.delivered, sink.retried, sink.dropped
            )?;
            if sink.sink.starts_with("webhook") {
                write!(f, " {}.spool_depth={}", sink.sink, sink.spool_depth)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_display() {
        let counters = SinkCounters::new("webhook-ab12".into());
        counters.delivered();
        counters.dropped(3, "test");
        counters.spool_depth.store(7, Ordering::Relaxed);
        let stats = Stats {
            received: 5,
            sinks: vec![counters.snapshot()],
            ..Stats::default()
        };
        let line = stats.to_string();
        assert!(line.contains("received=5"), "{line}");
        assert!(line.contains("webhook-ab12.delivered=1"), "{line}");
        assert!(line.contains("webhook-ab12.dropped=3"), "{line}");
        assert!(line.contains("webhook-ab12.spool_depth=7"), "{line}");
    }
}
