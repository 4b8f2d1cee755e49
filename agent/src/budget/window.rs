//! The windows one (rule, key) is counted in, and the refusal when a limit
//! is reached. See the module docs of `budget` for the choice of fixed
//! windows and how clock steps are handled.

use std::time::{Duration, SystemTime};

use super::{BudgetState, Exceeded, Limits};

const MINUTE: u64 = 60;
const DAY: u64 = 86_400;

/// One (rule, key)'s windows: day and minute numbers since the epoch, and
/// what was counted in them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Counters {
    pub(super) day: u64,
    pub(super) requests_day: u64,
    pub(super) tokens_day: u64,
    pub(super) usd_day: f64,
    pub(super) minute: u64,
    pub(super) requests_minute: u64,
}

/// `now` split into the numbers the windows are keyed by.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    secs: u64,
    minute: u64,
    day: u64,
}

impl Now {
    pub(super) fn of(now: SystemTime) -> Now {
        // A clock before 1970 is broken; counting it as the epoch keeps us
        // going instead of failing every request.
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Now {
            secs,
            minute: secs / MINUTE,
            day: secs / DAY,
        }
    }
}

/// Whether a stored window must be replaced by the current one. A window
/// only moves forward: when the clock steps back by up to one window, the
/// later window keeps counting, so winding the clock back does not buy a
/// fresh budget. A window further ahead was written by a clock that was
/// wrong, and would otherwise block its key until that time came.
fn stale(stored: u64, now: u64) -> bool {
    stored != now && stored != now.saturating_add(1)
}

impl Counters {
    /// Resets the windows that ended; true if anything changed.
    pub(super) fn roll(&mut self, now: Now) -> bool {
        let mut changed = false;
        if stale(self.day, now.day) {
            (self.day, self.requests_day, self.tokens_day, self.usd_day) = (now.day, 0, 0, 0.0);
            changed = true;
        }
        if stale(self.minute, now.minute) {
            (self.minute, self.requests_minute) = (now.minute, 0);
            changed = true;
        }
        changed
    }

    /// Whether both windows are over, so the counters can no longer refuse
    /// anything and may be dropped.
    pub(super) fn ended(&self, now: Now) -> bool {
        stale(self.day, now.day) && stale(self.minute, now.minute)
    }

    /// Why (rule, key) may not make another request now, if it may not.
    pub(super) fn refusal(
        &self,
        rule: &str,
        key: &str,
        limits: &Limits,
        now: Now,
    ) -> Option<Exceeded> {
        let (limit, used, max, window) = self.exceeded(limits)?;
        let start = if window == DAY { self.day } else { self.minute };
        let reset = start.saturating_add(1).saturating_mul(window);
        let retry_after_secs = reset.saturating_sub(now.secs).max(1);
        let amounts = if limit == "usd_per_day" {
            format!("${} of ${}", usd(used), usd(max))
        } else {
            format!("{used} of {max}")
        };
        let reason = format!(
            "{limit} limit reached for rule \"{rule}\", key \"{key}\": {amounts} used; \
             resets at {} (in {})",
            rfc3339(reset),
            humantime::format_duration(Duration::from_secs(retry_after_secs)),
        );
        Some(Exceeded {
            limit,
            used,
            max,
            retry_after_secs,
            reason,
        })
    }

    /// The first limit already reached, with its window's length. Day limits
    /// come first: when both a day and a minute limit are reached, the day's
    /// reset is the useful `Retry-After`.
    fn exceeded(&self, limits: &Limits) -> Option<(&'static str, f64, f64, u64)> {
        if let Some(max) = limits.requests_per_day
            && self.requests_day >= max
        {
            return Some((
                "requests_per_day",
                self.requests_day as f64,
                max as f64,
                DAY,
            ));
        }
        if let Some(max) = limits.tokens_per_day
            && self.tokens_day >= max
        {
            return Some(("tokens_per_day", self.tokens_day as f64, max as f64, DAY));
        }
        // A NaN limit refuses: fail closed on a limit we cannot read.
        if let Some(max) = limits.usd_per_day
            && (max.is_nan() || self.usd_day >= max)
        {
            return Some(("usd_per_day", self.usd_day, max, DAY));
        }
        if let Some(max) = limits.requests_per_minute
            && self.requests_minute >= max
        {
            let used = self.requests_minute as f64;
            return Some(("requests_per_minute", used, max as f64, MINUTE));
        }
        None
    }

    #[allow(dead_code)] // See `BudgetState`.
    pub(super) fn state(&self, rule: &str, key: &str) -> BudgetState {
        BudgetState {
            rule: rule.to_string(),
            key: key.to_string(),
            day: date(self.day),
            requests_day: self.requests_day,
            tokens_day: self.tokens_day,
            usd_day: self.usd_day,
            minute: rfc3339(self.minute.saturating_mul(MINUTE)),
            requests_minute: self.requests_minute,
        }
    }
}

/// Cents for sums over a dollar; four decimals below, where cents hide the
/// amount.
fn usd(amount: f64) -> String {
    if amount.abs() >= 1.0 {
        format!("{amount:.2}")
    } else {
        format!("{amount:.4}")
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch. Our own because
/// humantime's formatter fails (and `to_string` then panics) past year 9999,
/// which a hand-edited state file can reach.
pub(super) fn rfc3339(secs: u64) -> String {
    let rest = secs % DAY;
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{}T{h:02}:{m:02}:{s:02}Z", date(secs / DAY))
}

/// `YYYY-MM-DD` of a day number since the epoch: Howard Hinnant's
/// civil_from_days on unsigned days, saturating so that any u64 is safe.
#[allow(dead_code)] // See `BudgetState`.
pub(super) fn date(days: u64) -> String {
    let z = days.saturating_add(719_468);
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe.saturating_add(era.saturating_mul(400)) + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
