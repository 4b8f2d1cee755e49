//! Folding repeats: an alert storm (one process retrying a refused request
//! a thousand times) must reach security as one alert with a count, not as
//! a thousand pages.
//!
//! The first alert of an id goes out at once. Repeats within the window
//! only raise the count; when the window closes, the latest repeat goes out
//! once, carrying the cumulative count and the first and last times, and a
//! new window starts. A window that closes without repeats ends the series:
//! the next occurrence is news again and goes out at once.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::Alert;

/// Ids tracked at once. Past it, new ids are not folded (sent as they
/// come, counted as `unfolded`), so memory stays bounded under any storm.
pub const DEFAULT_CAP: usize = 10_000;

struct Series {
    count: u64,
    first_seen: String,
    last_seen: String,
    /// The latest repeat not sent yet.
    pending: Option<Alert>,
}

pub struct Folder {
    window: Duration,
    cap: usize,
    series: HashMap<String, Series>,
    /// When each open window closes. Every window is equally long, so they
    /// close in the order they opened: a queue, not a heap.
    deadlines: VecDeque<(Instant, String)>,
    /// Repeats absorbed into a series.
    pub folded: u64,
    /// Alerts sent unfolded because the table was full.
    pub unfolded: u64,
}

impl Folder {
    /// A zero window disables folding.
    pub fn new(window: Duration, cap: usize) -> Folder {
        Folder {
            window,
            cap,
            series: HashMap::new(),
            deadlines: VecDeque::new(),
            folded: 0,
            unfolded: 0,
        }
    }

    /// Takes an alert; returns it if it goes out now.
    pub fn offer(&mut self, mut alert: Alert, now: Instant) -> Option<Alert> {
        if self.window.is_zero() || alert.id.is_empty() {
            return Some(alert);
        }
        if let Some(series) = self.series.get_mut(&alert.id) {
            series.count += alert.count.max(1);
            // Producers run on several threads: occurrences may arrive a
            // little out of order. The timestamps sort as text.
            if alert.first_seen < series.first_seen {
                series.first_seen = alert.first_seen.clone();
            }
            if alert.last_seen > series.last_seen {
                series.last_seen = alert.last_seen.clone();
            }
            alert.count = series.count;
            alert.first_seen = series.first_seen.clone();
            alert.last_seen = series.last_seen.clone();
            series.pending = Some(alert);
            self.folded += 1;
            return None;
        }
        if self.series.len() >= self.cap {
            self.unfolded += 1;
            return Some(alert);
        }
        self.series.insert(
            alert.id.clone(),
            Series {
                count: alert.count.max(1),
                first_seen: alert.first_seen.clone(),
                last_seen: alert.last_seen.clone(),
                pending: None,
            },
        );
        self.deadlines
            .push_back((now + self.window, alert.id.clone()));
        Some(alert)
    }

    /// When the next window closes, if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// Closes the windows that ended by `now`; returns the updates to send.
    pub fn expire(&mut self, now: Instant) -> Vec<Alert> {
        let mut out = Vec::new();
        while self.deadlines.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, id)) = self.deadlines.pop_front() else {
                break;
            };
            let Some(series) = self.series.get_mut(&id) else {
                continue;
            };
            match series.pending.take() {
                Some(alert) => {
                    // The storm goes on: one update per window, the count
                    // cumulative since the series began. `now + window` is
                    // never earlier than a queued deadline, so the queue
                    // stays in order.
                    out.push(alert);
                    self.deadlines.push_back((now + self.window, id));
                }
                None => {
                    self.series.remove(&id);
                }
            }
        }
        out
    }

    /// At shutdown: every pending repeat goes out now, so no count is lost.
    pub fn flush(&mut self) -> Vec<Alert> {
        let out = self
            .deadlines
            .drain(..)
            .filter_map(|(_, id)| self.series.get_mut(&id)?.pending.take())
            .collect();
        self.series.clear();
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::tests::sample;

    const WINDOW: Duration = Duration::from_secs(60);

    fn at(alert: &Alert, time: &str) -> Alert {
        let mut alert = alert.clone();
        alert.time = time.into();
        alert.first_seen = time.into();
        alert.last_seen = time.into();
        alert
    }

    #[test]
    fn repeats_in_the_window_go_out_once_with_count_and_times() {
        let t0 = Instant::now();
        let mut folder = Folder::new(WINDOW, DEFAULT_CAP);
        let a = sample("unmanaged-key", "/usr/bin/python3");
        let first = folder.offer(at(&a, "2026-01-01T00:00:00Z"), t0).unwrap();
        assert_eq!(first.count, 1);
        assert!(
            folder
                .offer(at(&a, "2026-01-01T00:00:01Z"), t0 + Duration::from_secs(1))
                .is_none()
        );
        assert!(
            folder
                .offer(at(&a, "2026-01-01T00:00:02Z"), t0 + Duration::from_secs(2))
                .is_none()
        );
        assert_eq!(folder.next_deadline(), Some(t0 + WINDOW));
        assert!(folder.expire(t0 + Duration::from_secs(59)).is_empty());

        let updates = folder.expire(t0 + WINDOW);
        assert_eq!(updates.len(), 1);
        let update = &updates[0];
        assert_eq!(update.id, first.id);
        assert_eq!(update.count, 3);
        assert_eq!(update.first_seen, "2026-01-01T00:00:00Z");
        assert_eq!(update.last_seen, "2026-01-01T00:00:02Z");
        assert_eq!(update.time, "2026-01-01T00:00:02Z");
        assert_eq!(folder.folded, 2);

        // The storm goes on in the next window: the count is cumulative.
        assert!(
            folder
                .offer(at(&a, "2026-01-01T00:01:10Z"), t0 + Duration::from_secs(70))
                .is_none()
        );
        let updates = folder.expire(t0 + 2 * WINDOW);
        assert_eq!(updates[0].count, 4);
        assert_eq!(updates[0].first_seen, "2026-01-01T00:00:00Z");

        // A quiet window ends the series; the next one is news again.
        assert!(folder.expire(t0 + 3 * WINDOW).is_empty());
        assert_eq!(folder.len(), 0);
        let again = folder
            .offer(at(&a, "2026-01-01T00:05:00Z"), t0 + 4 * WINDOW)
            .unwrap();
        assert_eq!(again.count, 1);
        assert_eq!(again.first_seen, "2026-01-01T00:05:00Z");
    }

    #[test]
    fn a_single_alert_produces_no_update() {
        let t0 = Instant::now();
        let mut folder = Folder::new(WINDOW, DEFAULT_CAP);
        assert!(folder.offer(sample("quarantine", "/bin/sh"), t0).is_some());
        assert!(folder.expire(t0 + WINDOW).is_empty());
        assert_eq!(folder.len(), 0);
        assert_eq!(folder.next_deadline(), None);
    }

    #[test]
    fn different_ids_fold_separately() {
        let t0 = Instant::now();
        let mut folder = Folder::new(WINDOW, DEFAULT_CAP);
        let a = sample("unmanaged-key", "/usr/bin/python3");
        let b = sample("unmanaged-key", "/usr/bin/node");
        assert!(folder.offer(a.clone(), t0).is_some());
        assert!(folder.offer(b.clone(), t0).is_some());
        assert!(folder.offer(a.clone(), t0).is_none());
        let updates = folder.expire(t0 + WINDOW);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].id, a.id);
    }

    #[test]
    fn over_the_cap_alerts_go_out_unfolded() {
        let t0 = Instant::now();
        let mut folder = Folder::new(WINDOW, 2);
        let a = sample("unmanaged-key", "/a");
        let b = sample("unmanaged-key", "/b");
        let c = sample("unmanaged-key", "/c");
        assert!(folder.offer(a.clone(), t0).is_some());
        assert!(folder.offer(b, t0).is_some());
        assert!(folder.offer(c.clone(), t0).is_some());
        assert!(folder.offer(c, t0).is_some(), "not tracked: sent again");
        assert_eq!(folder.unfolded, 2);
        assert!(folder.offer(a, t0).is_none(), "tracked ids still fold");
        assert_eq!(folder.len(), 2);
    }

    #[test]
    fn a_zero_window_or_no_id_disables_folding() {
        let t0 = Instant::now();
        let mut folder = Folder::new(Duration::ZERO, DEFAULT_CAP);
        let a = sample("unmanaged-key", "/a");
        assert!(folder.offer(a.clone(), t0).is_some());
        assert!(folder.offer(a, t0).is_some());
        let mut folder = Folder::new(WINDOW, DEFAULT_CAP);
        let mut anonymous = sample("unmanaged-key", "/a");
        anonymous.id.clear();
        assert!(folder.offer(anonymous.clone(), t0).is_some());
        assert!(folder.offer(anonymous, t0).is_some());
    }

    #[test]
    fn flush_sends_every_pending_repeat() {
        let t0 = Instant::now();
        let mut folder = Folder::new(WINDOW, DEFAULT_CAP);
        let a = sample("unmanaged-key", "/a");
        let b = sample("unmanaged-key", "/b");
        for _ in 0..3 {
            folder.offer(a.clone(), t0);
        }
        folder.offer(b, t0);
        let out = folder.flush();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 3);
        assert_eq!(folder.len(), 0);
        assert_eq!(folder.next_deadline(), None);
    }
}
