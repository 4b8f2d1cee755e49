//! The usage store: `<state>/usage.db`, SQLite in WAL mode, one row per
//! audited request and per connection the kernel let through without the
//! proxy. The proxy only queues a row; one thread writes them in batched
//! transactions, so a slow disk costs queue space, never request time, and
//! a full queue is counted.

mod histogram;
mod query;
mod rollup;
mod schema;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use query::{By, Summary, query_file, summarize};
use rusqlite::{Connection, params};
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::{
    audit::{AuditRecord, Handling},
    clock::now_ms,
    identity::Identity,
    record::Decision,
};

pub const FILE_NAME: &str = "usage.db";
const QUEUE: usize = 65_536;
/// Rows written per transaction at most: one fsync amortised over many.
const BATCH: usize = 4096;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How much of an identity's model traffic the host governed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Terminated and audited by the proxy.
    Governed,
    /// Through the proxy on SNI only (metadata).
    Passthrough,
    /// Refused by the kernel or the proxy.
    Blocked,
    /// Seen in the kernel, let through without the proxy.
    Direct,
}

impl Coverage {
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::Governed => "governed",
            Coverage::Passthrough => "passthrough",
            Coverage::Blocked => "blocked",
            Coverage::Direct => "direct",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Row {
    pub ts_ms: i64,
    /// `request` (audited by the proxy) or `connection` (kernel only).
    pub kind: &'static str,
    pub coverage: &'static str,
    pub error: bool,
    pub provider: String,
    pub model: Option<String>,
    pub rule: String,
    pub pid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub container: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Of the input, read from the provider's cache (where reported).
    pub cache_read_tokens: Option<u64>,
    /// Of the output, spent on reasoning (where reported).
    pub reasoning_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub latency_ms: Option<f64>,
}

impl Row {
    fn who(identity: &Identity) -> Row {
        Row {
            ts_ms: now_ms(),
            pid: identity.tgid,
            uid: identity.uid,
            user: identity.user.clone(),
            exe: Some(identity.who().to_string()),
            unit: identity.cgroup_info.unit.clone(),
            container: identity.cgroup_info.container_id.clone(),
            ..Row::default()
        }
    }

    pub fn from_audit(record: &AuditRecord) -> Row {
        let coverage = match record.decision {
            Handling::Redirect => Coverage::Governed,
            Handling::Passthrough => Coverage::Passthrough,
            Handling::Refused => Coverage::Blocked,
        };
        Row {
            kind: "request",
            coverage: coverage.as_str(),
            error: record.failed(),
            provider: record.provider.clone(),
            model: record.model.clone(),
            rule: record.rule.clone(),
            input_tokens: record.tokens.input,
            output_tokens: record.tokens.output,
            cache_read_tokens: record.tokens.cache_read,
            reasoning_tokens: record.tokens.reasoning,
            cost_usd: record.cost_usd,
            latency_ms: Some(record.latency_ms),
            ..Row::who(&record.identity)
        }
    }

    /// A kernel decision, when it is one the proxy will not also record.
    pub fn from_connection(decision: &Decision) -> Option<Row> {
        use crate::policy::Action;
        let coverage = match decision.action {
            Action::Redirect | Action::Passthrough | Action::Quarantine => return None,
            Action::Block => Coverage::Blocked,
            Action::Allow | Action::Monitor => Coverage::Direct,
        };
        Some(Row {
            kind: "connection",
            coverage: coverage.as_str(),
            provider: decision.provider.clone(),
            rule: decision.rule.clone(),
            ..Row::who(&decision.identity)
        })
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct UsageLog {
    tx: mpsc::Sender<Row>,
    pub dropped: Arc<AtomicU64>,
    /// Rows in the store since start.
    pub written: Arc<AtomicU64>,
    /// Rows whose transaction failed: lost.
    pub failed: Arc<AtomicU64>,
}

impl UsageLog {
    /// Queues `row`, or hands it back when the queue is full (benches wait
    /// instead of dropping).
    pub fn try_send(&self, row: Row) -> Result<(), Box<Row>> {
        self.tx.try_send(row).map_err(|err| match err {
            mpsc::error::TrySendError::Full(row) | mpsc::error::TrySendError::Closed(row) => {
                Box::new(row)
            }
        })
    }

    pub fn send(&self, row: Row) {
        if self.try_send(row).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "the usage queue is full; usage rows are being dropped"
                );
            }
        }
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The usage store could not be opened for writing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the usage store {}", .0.display())]
    Open(PathBuf, #[source] rusqlite::Error),
    #[error("migrating the usage store {}", .0.display())]
    Migrate(PathBuf, #[source] schema::MigrateError),
    #[error("starting the usage writer")]
    Writer(#[source] std::io::Error),
}

/// Opens (creating or migrating) the store for writing.
pub fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    let opening = |err| StoreError::Open(path.to_path_buf(), err);
    let mut conn = Connection::open(path).map_err(opening)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        // WAL + NORMAL: a crash may lose the last batches, never corrupts.
        .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
        .and_then(|()| conn.busy_timeout(Duration::from_secs(5)))
        .map_err(opening)?;
    schema::migrate(&mut conn).map_err(|err| StoreError::Migrate(path.to_path_buf(), err))?;
    Ok(conn)
}

/// Starts the writer. It ends, with everything queued written, when the
/// last `UsageLog` is dropped.
pub fn open(
    state_dir: &Path,
    retention: Duration,
) -> Result<(UsageLog, JoinHandle<()>), StoreError> {
    let mut conn = open_rw(&path(state_dir))?;
    let (tx, mut rx) = mpsc::channel::<Row>(QUEUE);
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (rows_written, rows_failed) = (written.clone(), failed.clone());
    let writer = std::thread::Builder::new()
        .name("usage-writer".into())
        .spawn(move || {
            crate::jsonl::lower_priority();
            let mut last_prune: Option<Instant> = None;
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(row) = rx.blocking_recv() {
                batch.push(row);
                while batch.len() < BATCH
                    && let Ok(row) = rx.try_recv()
                {
                    batch.push(row);
                }
                match insert(&mut conn, &batch) {
                    Ok(()) => {
                        rows_written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Err(err) => {
                        rows_failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        error!(error = %err, rows = batch.len(), "cannot write usage rows");
                    }
                }
                batch.clear();
                if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(Instant::now());
                    if let Err(err) = prune(&conn, retention) {
                        warn!(error = %err, "cannot remove expired usage rows");
                    }
                }
            }
        })
        .map_err(StoreError::Writer)?;
    Ok((
        UsageLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            written,
            failed,
        },
        writer,
    ))
}

pub fn insert(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO usage (ts_ms, kind, coverage, error, provider, model, rule, pid, uid,
                user, exe, unit, container, input_tokens, output_tokens, cost_usd, latency_ms,
                cache_read_tokens, reasoning_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19)",
        )?;
        for r in rows {
            stmt.execute(params![
                r.ts_ms,
                r.kind,
                r.coverage,
                r.error,
                r.provider,
                r.model,
                r.rule,
                r.pid,
                r.uid,
                r.user,
                r.exe,
                r.unit,
                r.container,
                r.input_tokens.map(|t| t as i64),
                r.output_tokens.map(|t| t as i64),
                r.cost_usd,
                r.latency_ms,
                r.cache_read_tokens.map(|t| t as i64),
                r.reasoning_tokens.map(|t| t as i64),
            ])?;
        }
    }
    rollup::fold(&tx, rows)?;
    tx.commit()
}

fn prune(conn: &Connection, retention: Duration) -> rusqlite::Result<usize> {
    let cutoff = now_ms() - retention.as_millis() as i64;
    // An hour is kept while any of it is within the retention.
    conn.execute(
        "DELETE FROM usage_hourly WHERE hour_ms + ?2 <= ?1",
        [cutoff, rollup::HOUR_MS],
    )?;
    conn.execute("DELETE FROM usage WHERE ts_ms < ?1", [cutoff])
}

#[cfg(test)]
mod tests;
