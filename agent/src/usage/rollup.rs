//! Folding a batch of rows into the hourly rollups, in the batch's
//! transaction: one read and one write per (hour, identity, model,
//! coverage) group, not per row.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, ToSql, Transaction, params_from_iter};

use super::{Row, histogram::Histogram};

pub const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    hour_ms: i64,
    coverage: &'static str,
    provider: String,
    model: String,
    pid: u32,
    uid: u32,
    user: String,
    exe: String,
    unit: String,
    container: String,
}

#[derive(Debug, Default)]
struct Agg {
    events: u64,
    requests: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: Option<f64>,
    first_ms: i64,
    last_ms: i64,
    latency: Histogram,
}

impl Agg {
    fn merge(&mut self, other: Agg) {
        self.events += other.events;
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
        self.latency.merge(&other.latency);
    }
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

pub fn fold(tx: &Transaction<'_>, rows: &[Row]) -> rusqlite::Result<()> {
    let mut groups: HashMap<Key, Agg> = HashMap::new();
    for r in rows {
        let key = Key {
            hour_ms: r.ts_ms.div_euclid(HOUR_MS) * HOUR_MS,
            coverage: r.coverage,
            provider: r.provider.clone(),
            model: text(&r.model),
            pid: r.pid,
            uid: r.uid,
            user: text(&r.user),
            exe: text(&r.exe),
            unit: text(&r.unit),
            container: text(&r.container),
        };
        let request = r.kind == "request";
        let mut latency = Histogram::default();
        if let Some(ms) = r.latency_ms.filter(|_| request) {
            latency.record(ms);
        }
        let one = Agg {
            events: 1,
            requests: u64::from(request),
            errors: u64::from(request && r.error),
            input_tokens: r.input_tokens.unwrap_or(0),
            output_tokens: r.output_tokens.unwrap_or(0),
            cost_usd: r.cost_usd,
            first_ms: r.ts_ms,
            last_ms: r.ts_ms,
            latency,
        };
        match groups.get_mut(&key) {
            Some(agg) => agg.merge(one),
            None => {
                groups.insert(key, one);
            }
        }
    }

    let mut read = tx.prepare_cached(
        "SELECT events, requests, errors, input_tokens, output_tokens, cost_usd, first_ms,
            last_ms, latency
         FROM usage_hourly WHERE hour_ms = ?1 AND coverage = ?2 AND provider = ?3 AND model = ?4
            AND pid = ?5 AND uid = ?6 AND user = ?7 AND exe = ?8 AND unit = ?9 AND container = ?10",
    )?;
    let mut write = tx.prepare_cached(
        "INSERT OR REPLACE INTO usage_hourly VALUES
            (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?;
    for (k, mut agg) in groups {
        let key: [&dyn ToSql; 10] = [
            &k.hour_ms,
            &k.coverage,
            &k.provider,
            &k.model,
            &k.pid,
            &k.uid,
            &k.user,
            &k.exe,
            &k.unit,
            &k.container,
        ];
        let before = read
            .query_row(key, |r| {
                Ok(Agg {
                    events: r.get(0)?,
                    requests: r.get(1)?,
                    errors: r.get(2)?,
                    input_tokens: r.get(3)?,
                    output_tokens: r.get(4)?,
                    cost_usd: r.get(5)?,
                    first_ms: r.get(6)?,
                    last_ms: r.get(7)?,
                    latency: r
                        .get::<_, Option<Vec<u8>>>(8)?
                        .map(|b| Histogram::decode(&b))
                        .unwrap_or_default(),
                })
            })
            .optional()?;
        if let Some(before) = before {
            agg.merge(before);
        }
        let latency = (!agg.latency.is_empty()).then(|| agg.latency.encode());
        let values: [&dyn ToSql; 9] = [
            &(agg.events as i64),
            &(agg.requests as i64),
            &(agg.errors as i64),
            &(agg.input_tokens as i64),
            &(agg.output_tokens as i64),
            &agg.cost_usd,
            &agg.first_ms,
            &agg.last_ms,
            &latency,
        ];
        write.execute(params_from_iter(key.iter().chain(values.iter())))?;
    }
    Ok(())
}
