//! `modelgate usage`'s question: per identity (or model, provider), what
//! was used since a time, how fast, how often it failed, and how much of it
//! the host governed.

use std::collections::HashMap;

use rusqlite::Connection;
use serde::Serialize;

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
    /// The grouping key as SQL over the `usage` columns.
    fn key(self) -> &'static str {
        match self {
            By::Process => "coalesce(exe, '?') || ' [' || pid || ']'",
            By::Exe => "coalesce(exe, '?')",
            By::Unit => "coalesce(unit, '-')",
            By::Container => "coalesce(substr(container, 1, 12), '-')",
            By::User => "coalesce(user, CAST(uid AS TEXT))",
            By::Model => "coalesce(model, '-')",
            By::Provider => "provider",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
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

/// Rows since `since_ms` grouped by `by`, most tokens first.
pub fn summarize(conn: &Connection, since_ms: i64, by: By) -> rusqlite::Result<Vec<Summary>> {
    let key = by.key();
    let mut stmt = conn.prepare(&format!(
        "SELECT {key}, SUM(kind = 'request'), SUM(kind = 'request' AND error),
            SUM(coalesce(input_tokens, 0)), SUM(coalesce(output_tokens, 0)), SUM(cost_usd),
            MIN(ts_ms), MAX(ts_ms), SUM(coverage = 'governed'), SUM(coverage = 'passthrough'),
            SUM(coverage = 'blocked'), SUM(coverage = 'direct')
         FROM usage WHERE ts_ms >= ?1 GROUP BY 1"
    ))?;
    let mut rows: Vec<Summary> = stmt
        .query_map([since_ms], |r| {
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

    let mut latencies: HashMap<String, Vec<f64>> = HashMap::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT {key}, latency_ms FROM usage
         WHERE ts_ms >= ?1 AND kind = 'request' AND latency_ms IS NOT NULL"
    ))?;
    let mut it = stmt.query([since_ms])?;
    while let Some(r) = it.next()? {
        latencies.entry(r.get(0)?).or_default().push(r.get(1)?);
    }
    for row in &mut rows {
        if let Some(values) = latencies.get_mut(&row.key) {
            values.sort_by(f64::total_cmp);
            row.p50_ms = percentile(values, 0.50);
            row.p95_ms = percentile(values, 0.95);
        }
    }
    rows.sort_by(|a, b| (b.tokens(), b.requests, &a.key).cmp(&(a.tokens(), a.requests, &b.key)));
    Ok(rows)
}

/// Nearest-rank percentile of sorted values.
pub(super) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}
