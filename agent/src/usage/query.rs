//! `modelgate usage`'s question: per identity (or model, provider), what
//! was used since a time, how fast, how often it failed, and how much of it
//! the host governed.

use std::{collections::HashMap, path::Path, time::Duration};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::{histogram::Histogram, rollup::HOUR_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Process,
    Exe,
    Unit,
    Container,
    User,
    Model,
    Provider,
}

impl By {
    /// The grouping key as SQL over the columns `usage` and `usage_hourly`
    /// share (the rollups store '' for none).
    fn key(self) -> &'static str {
        match self {
            By::Process => "coalesce(nullif(exe, ''), '?') || ' [' || pid || ']'",
            By::Exe => "coalesce(nullif(exe, ''), '?')",
            By::Unit => "coalesce(nullif(unit, ''), '-')",
            By::Container => "coalesce(nullif(substr(container, 1, 12), ''), '-')",
            By::User => "coalesce(nullif(user, ''), CAST(uid AS TEXT))",
            By::Model => "coalesce(nullif(model, ''), '-')",
            By::Provider => "provider",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub key: String,
    /// Requests the proxy saw (governed, passthrough or refused).
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub governed: u64,
    pub passthrough: u64,
    pub blocked: u64,
    /// Connections the kernel let through without the proxy.
    pub direct: u64,
}

impl Summary {
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// The governed share of everything seen for this key, 0–100.
    pub fn coverage_pct(&self) -> f64 {
        let all = self.governed + self.passthrough + self.blocked + self.direct;
        if all == 0 {
            0.0
        } else {
            100.0 * self.governed as f64 / all as f64
        }
    }
}

/// [`summarize`] on the store at `path`, opened read-only: SQLite's WAL
/// lets a reader run beside the writing agent.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "no usage store at {}: the agent has not run with this state directory; pass the \
         agent's --state-dir",
        .0.display()
    )]
    NoStore(std::path::PathBuf),
    #[error("opening {}", .0.display())]
    Open(std::path::PathBuf, #[source] rusqlite::Error),
    #[error("querying {}", .0.display())]
    Query(std::path::PathBuf, #[source] rusqlite::Error),
}

pub fn query_file(path: &Path, since_ms: i64, by: By) -> Result<Vec<Summary>, QueryError> {
    if !path.exists() {
        return Err(QueryError::NoStore(path.to_path_buf()));
    }
    let opening = |err| QueryError::Open(path.to_path_buf(), err);
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(opening)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(opening)?;
    summarize(&conn, since_ms, by).map_err(|err| QueryError::Query(path.to_path_buf(), err))
}

/// Everything since `since_ms` grouped by `by`, most tokens first. Whole
/// hours come from the rollups, the partial first hour from the rows.
pub fn summarize(conn: &Connection, since_ms: i64, by: By) -> rusqlite::Result<Vec<Summary>> {
    let key = by.key();
    let boundary = since_ms.div_euclid(HOUR_MS) * HOUR_MS
        + if since_ms.rem_euclid(HOUR_MS) == 0 {
            0
        } else {
            HOUR_MS
        };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {key}, SUM(requests), SUM(errors), SUM(input_tokens), SUM(output_tokens),
            SUM(cost_usd), MIN(first_ms), MAX(last_ms),
            SUM(CASE coverage WHEN 'governed' THEN events ELSE 0 END),
            SUM(CASE coverage WHEN 'passthrough' THEN events ELSE 0 END),
            SUM(CASE coverage WHEN 'blocked' THEN events ELSE 0 END),
            SUM(CASE coverage WHEN 'direct' THEN events ELSE 0 END)
         FROM (
            SELECT coverage, provider, model, pid, uid, user, exe, unit, container, events,
                requests, errors, input_tokens, output_tokens, cost_usd, first_ms, last_ms
            FROM usage_hourly WHERE hour_ms >= ?2
            UNION ALL
            SELECT coverage, provider, coalesce(model, ''), pid, uid, coalesce(user, ''),
                coalesce(exe, ''), coalesce(unit, ''), coalesce(container, ''), 1,
                kind = 'request', kind = 'request' AND error, coalesce(input_tokens, 0),
                coalesce(output_tokens, 0), cost_usd, ts_ms, ts_ms
            FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2
         ) GROUP BY 1"
    ))?;
    let mut rows: Vec<Summary> = stmt
        .query_map([since_ms, boundary], |r| {
            Ok(Summary {
                key: r.get(0)?,
                requests: r.get(1)?,
                errors: r.get(2)?,
                input_tokens: r.get(3)?,
                output_tokens: r.get(4)?,
                cost_usd: r.get(5)?,
                first_seen_ms: r.get(6)?,
                last_seen_ms: r.get(7)?,
                governed: r.get(8)?,
                passthrough: r.get(9)?,
                blocked: r.get(10)?,
                direct: r.get(11)?,
                ..Summary::default()
            })
        })?
        .collect::<rusqlite::Result<_>>()?;

    let mut latencies: HashMap<String, Histogram> = HashMap::new();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {key}, latency FROM usage_hourly WHERE hour_ms >= ?1 AND latency IS NOT NULL"
    ))?;
    let mut it = stmt.query([boundary])?;
    while let Some(r) = it.next()? {
        let blob: Vec<u8> = r.get(1)?;
        latencies
            .entry(r.get(0)?)
            .or_default()
            .merge(&Histogram::decode(&blob));
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {key}, latency_ms FROM usage
         WHERE ts_ms >= ?1 AND ts_ms < ?2 AND kind = 'request' AND latency_ms IS NOT NULL"
    ))?;
    let mut it = stmt.query([since_ms, boundary])?;
    while let Some(r) = it.next()? {
        latencies.entry(r.get(0)?).or_default().record(r.get(1)?);
    }
    for row in &mut rows {
        if let Some(h) = latencies.get(&row.key) {
            row.p50_ms = h.percentile(0.50);
            row.p95_ms = h.percentile(0.95);
        }
    }
    rows.sort_by(|a, b| (b.tokens(), b.requests, &a.key).cmp(&(a.tokens(), a.requests, &b.key)));
    Ok(rows)
}
