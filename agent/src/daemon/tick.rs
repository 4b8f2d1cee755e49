//! The periodic work: cache purges, heap trim, heartbeats, tamper checks,
//! expiries, counters.

use std::time::Instant;

use agent_common::Counter;
use tracing::{error, info, warn};

use super::Agent;
use crate::bypass;

impl Agent {
    pub(super) fn tick(&mut self) {
        self.procs.purge();
        crate::proxy::release_unused_tokenizers();
        // Bursts fill the record queues (bounded) and glibc keeps what they
        // freed: hand it back, so RSS shows what is live, not the last peak.
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) };
        self.beat(false);
        self.check_tamper();
        if self.learned.expire(Instant::now())
            && let Err(err) = self.sync_endpoints()
        {
            error!("{err:#}");
        }
        self.expire_quarantines();
        self.save_budgets();
        self.refresh_rule_files();
        match self.cgroups.rescan() {
            Ok(true) => {
                if let Err(err) = self.refresh_cgroup_entries() {
                    error!("{err:#}");
                }
            }
            Ok(false) => {}
            Err(err) => warn!("{err:#}"),
        }
        self.report_counters(false);
    }

    /// Lost events are never silent: every increase is logged.
    pub(super) fn report_counters(&mut self, summary: bool) {
        let counters = match self.maps.counters() {
            Ok(counters) => counters,
            Err(err) => {
                warn!("{}", crate::errors::chain(&err));
                return;
            }
        };
        let get = |c: Counter| {
            counters
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| *v)
                .unwrap_or(0)
        };
        self.metrics.set_kernel(&counters);
        self.metrics.set_map_sizes(&self.maps.sizes());
        let lost = get(Counter::EventsLost);
        if lost > self.lost_reported {
            // Some were DNS answers the kernel acted on but we never saw:
            // drop what we cannot account for (a lookup answered again
            // brings it back), so the map does not fill with orphans.
            let removed = self.maps.remove_unknown_endpoints();
            if removed > 0 {
                warn!(
                    removed,
                    "removed endpoint addresses learned by the kernel whose events were lost"
                );
            }
            warn!(
                lost_total = lost,
                lost_new = lost - self.lost_reported,
                "the kernel dropped events because the ring buffer was full; \
                 their verdicts were enforced but not recorded"
            );
            self.lost_reported = lost;
        }
        if summary {
            let fields: Vec<String> = counters
                .iter()
                .map(|(c, v)| format!("{}={v}", c.name()))
                .collect();
            info!(
                counters = %fields.join(" "),
                records_written = self.sink.written(),
                records_failed = self.sink.lost(),
                decode_errors = self.decode_errors,
                "final counters"
            );
        }
    }

    /// Tells the kernel we are alive (fail_mode open counts from this).
    pub(super) fn kernel_beat(&mut self) {
        if let Err(err) = self.maps.beat() {
            warn!("{}", crate::errors::chain(&err));
        }
    }

    pub(super) fn beat(&self, clean: bool) {
        if let Some(heartbeat) = &self.heartbeat
            && let Err(err) = heartbeat.beat(clean)
        {
            warn!(error = %err, "cannot write the heartbeat file; an enforcement gap may go unreported");
        }
    }

    /// Someone detaching our programs is reported once per program, and
    /// again if it happens again after they came back.
    pub(super) fn check_tamper(&mut self) {
        let Some(attachments) = &self.attachments else {
            return;
        };
        let missing = attachments.missing();
        let new: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|name| !self.tampered.contains(name))
            .collect();
        if !new.is_empty() {
            error!(programs = %new.join(", "), "modelgate's programs were detached by someone else");
            let cgroup = self.settings.cgroup.display().to_string();
            self.alerts.send(bypass::tamper_alert(&new, &cgroup));
        }
        self.tampered = missing;
    }
}
