//! Budgets and rate limits per policy rule and identity key, persisted so
//! that restarting the agent does not hand out a fresh day's budget.
//!
//! Windows are fixed and aligned: a minute is `[hh:mm:00, hh:mm+1:00)` and a
//! day is the UTC calendar day. Unix time ignores leap seconds, so
//! `secs / 86_400` is exactly the UTC day. Fixed windows cost two integers
//! per key, persist trivially and match what "per day" means on a provider's
//! bill; the price is that a client can fit up to twice `requests_per_minute`
//! into a short burst that straddles a minute boundary.
//!
//! Token and dollar limits can only be enforced at the next request, because
//! a request's size is known after its response: a request is admitted while
//! the day's total is below the limit, so the last one admitted may overshoot
//! by its own size. Usage counts in the window in which it is recorded.
//!
//! Keys are the proxy's strings (see [`BudgetKey`]). A request whose
//! identity lacks the attribute should get a fixed placeholder key, so such
//! requests share one budget instead of each escaping it.
//!
//! The proxy holds [`Budgets`] in a mutex: `check` and `record_usage` are a
//! couple of hash lookups and never touch the disk. `save` writes the file;
//! [`Budgets::take_save`] lets the caller do that I/O outside the lock.

mod price_file;
mod prices;
#[cfg(test)]
mod prices_tests;
mod store;
#[cfg(test)]
mod tests;
mod window;

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use self::window::{Counters, Now};
pub use self::{prices::Prices, store::SaveJob};

/// The state file, under the agent's state directory.
pub const FILE_NAME: &str = "budgets.json";

/// The limits a policy rule may carry. Absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
    /// Input plus output tokens.
    pub tokens_per_day: Option<u64>,
    pub usd_per_day: Option<f64>,
}

impl Limits {
    /// For the policy loader: a dollar limit must be a finite, non-negative
    /// number. (`check` fails closed on a bad one anyway: NaN or negative
    /// refuses every request.)
    pub fn validate(&self) -> Result<(), String> {
        match self.usd_per_day {
            Some(usd) if !(usd.is_finite() && usd >= 0.0) => Err(format!(
                "usd_per_day must be a non-negative number, got {usd}"
            )),
            _ => Ok(()),
        }
    }
}

/// Which identity attribute a rule's budget is kept by. The proxy turns it
/// into the key string; `Rule` is one budget shared by everything the rule
/// matches, and the default because it is the strictest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetKey {
    Exe,
    Unit,
    Container,
    User,
    #[default]
    Rule,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    /// The limit's name as written in the policy, e.g. `requests_per_day`.
    pub limit: &'static str,
    pub used: f64,
    pub max: f64,
    /// Seconds until the window resets (at least 1), for `Retry-After`.
    pub retry_after_secs: u64,
    /// A sentence naming the limit, the rule, the key and when it resets.
    pub reason: String,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Counters of one (rule, key), for `modelgate usage`-like displays.
#[allow(dead_code)] // Nothing in the agent displays budgets yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetState {
    pub rule: String,
    pub key: String,
    /// The UTC day the day counters belong to, `YYYY-MM-DD`.
    pub day: String,
    pub requests_day: u64,
    pub tokens_day: u64,
    pub usd_day: f64,
    /// Start of the minute `requests_minute` belongs to, RFC 3339.
    pub minute: String,
    pub requests_minute: u64,
}

/// Counters per rule, then per identity key. Two levels so a lookup borrows
/// the caller's `&str`s instead of building a combined key per request.
type Map = HashMap<String, HashMap<String, Counters>>;

pub struct Budgets {
    path: PathBuf,
    map: Map,
    /// Changed since the last save.
    dirty: bool,
}

impl Budgets {
    /// Empty budgets that will save to `<state_dir>/budgets.json`.
    pub fn new(state_dir: &Path) -> Budgets {
        Budgets {
            path: state_dir.join(FILE_NAME),
            map: Map::new(),
            dirty: false,
        }
    }

    /// Loads `<state_dir>/budgets.json` if present. A corrupt or unreadable
    /// file starts the budgets empty with a warning for the caller to log:
    /// losing a day's counts is better than an agent that will not start.
    pub fn load(state_dir: &Path) -> (Budgets, Option<String>) {
        let mut budgets = Budgets::new(state_dir);
        let warning = store::load(&budgets.path, &mut budgets.map);
        (budgets, warning)
    }

    /// Counts one request against every limit of (rule, key) and admits it,
    /// or refuses it with the first limit reached. A refused request is not
    /// counted, so a client that keeps retrying does not push its own reset
    /// further away.
    pub fn check(
        &mut self,
        rule: &str,
        key: &str,
        limits: &Limits,
        now: SystemTime,
    ) -> Result<(), Exceeded> {
        let now = Now::of(now);
        let (changed, result) = with_counters(&mut self.map, rule, key, |c| {
            let rolled = c.roll(now);
            if let Some(refused) = c.refusal(rule, key, limits, now) {
                return (rolled, Err(refused));
            }
            c.requests_day = c.requests_day.saturating_add(1);
            c.requests_minute = c.requests_minute.saturating_add(1);
            (true, Ok(()))
        });
        self.dirty |= changed;
        result
    }

    /// Adds a response's tokens and dollars. A cost that is not a finite,
    /// non-negative number is ignored rather than poisoning the day's total.
    pub fn record_usage(&mut self, rule: &str, key: &str, tokens: u64, usd: f64, now: SystemTime) {
        let now = Now::of(now);
        with_counters(&mut self.map, rule, key, |c| {
            c.roll(now);
            c.tokens_day = c.tokens_day.saturating_add(tokens);
            if usd.is_finite() && usd > 0.0 {
                c.usd_day = (c.usd_day + usd).min(f64::MAX);
            }
            (true, ())
        });
        self.dirty = true;
    }

    /// Drops the keys whose windows have all ended, so the map and the file
    /// hold only what can still refuse a request. Call it now and then (a
    /// timer), not per request: it walks every key.
    pub fn prune(&mut self, now: SystemTime) {
        let now = Now::of(now);
        let before: usize = self.map.values().map(HashMap::len).sum();
        for keys in self.map.values_mut() {
            keys.retain(|_, c| !c.ended(now));
        }
        self.map.retain(|_, keys| !keys.is_empty());
        let after: usize = self.map.values().map(HashMap::len).sum();
        self.dirty |= after != before;
    }

    /// Writes the file atomically if anything changed since the last save.
    /// This does disk I/O and fsyncs: under a shared mutex, prefer
    /// [`Budgets::take_save`] and write outside the lock.
    #[cfg(test)]
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some(job) = self.take_save() else {
            return Ok(());
        };
        let result = job.write();
        if result.is_err() {
            self.mark_unsaved();
        }
        result
    }

    /// The bytes to write if anything changed, marking the budgets saved.
    /// If [`SaveJob::write`] then fails, call [`Budgets::mark_unsaved`] so
    /// the next save tries again. Run one save at a time, in order.
    pub fn take_save(&mut self) -> Option<SaveJob> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(store::job(&self.path, &self.map))
    }

    pub fn mark_unsaved(&mut self) {
        self.dirty = true;
    }
}

// Displays (`modelgate usage` and the like). Nothing in the agent calls
// these yet; the allow keeps a binary crate's dead-code lint quiet until then.
#[allow(dead_code)]
impl Budgets {
    /// The stored counters of every (rule, key), sorted. A window that has
    /// ended shows its old counts; `day` and `minute` say which window they
    /// are. See [`Budgets::snapshot_at`] for what counts now.
    pub fn snapshot(&self) -> Vec<BudgetState> {
        self.states(|c| c.clone())
    }

    /// Like [`Budgets::snapshot`], with ended windows shown as empty current
    /// windows: what a request at `now` would be counted against.
    pub fn snapshot_at(&self, now: SystemTime) -> Vec<BudgetState> {
        let now = Now::of(now);
        self.states(|c| {
            let mut c = c.clone();
            c.roll(now);
            c
        })
    }

    fn states(&self, view: impl Fn(&Counters) -> Counters) -> Vec<BudgetState> {
        let mut states: Vec<BudgetState> = self
            .map
            .iter()
            .flat_map(|(rule, keys)| keys.iter().map(move |(key, c)| (rule, key, c)))
            .map(|(rule, key, c)| view(c).state(rule, key))
            .collect();
        states.sort_by(|a, b| (&a.rule, &a.key).cmp(&(&b.rule, &b.key)));
        states
    }
}

/// Runs `f` on the counters of (rule, key), creating them if needed. `f`
/// says whether it changed them. (A closure instead of returning `&mut`:
/// the get-or-insert that returns a borrow does not pass the borrow checker
/// without a second lookup and an unwrap.)
fn with_counters<R>(
    map: &mut Map,
    rule: &str,
    key: &str,
    f: impl FnOnce(&mut Counters) -> (bool, R),
) -> (bool, R) {
    if let Some(counters) = map.get_mut(rule).and_then(|keys| keys.get_mut(key)) {
        return f(counters);
    }
    let mut counters = Counters::default();
    let (changed, result) = f(&mut counters);
    if changed {
        let keys = map.entry(rule.to_string()).or_default();
        keys.insert(key.to_string(), counters);
    }
    (changed, result)
}
