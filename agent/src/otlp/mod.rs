//! Fleet export: every audit record as an OpenTelemetry log record, and
//! GenAI metrics, sent over OTLP/HTTP (protobuf) to a collector.
//!
//! ```text
//! proxy ─ record() ─┬─▶ aggregate (metrics, under a lock) ─ every interval ─▶ POST /v1/metrics
//!                   └─▶ try_send ─▶ bounded queue ─▶ batch ─▶ POST /v1/logs (retry, backoff)
//! ```
//!
//! The proxy never waits: a full queue drops the record and counts it
//! (`modelgate_records_dropped_total{queue="otlp"}`), as does a batch the
//! collector refused or that could not be delivered within a minute.
//! Metrics are cumulative and aggregated before the queue, so they stay
//! exact through log loss and collector outages. At shutdown what is
//! queued is flushed, within a bound.

mod config;
mod export;
mod logs;
mod metrics;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse},
    resource::v1::Resource,
};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{info, warn};

pub use self::config::OtlpConfig;
use self::{
    export::{BACKOFF, Client, Delivery, RetryPolicy, Sender},
    metrics::Aggregator,
};
use crate::audit::AuditRecord;

/// How long a log batch is retried before its records are counted lost.
const GIVE_UP: Duration = Duration::from_secs(60);

/// What the proxy holds: cheap to call on every request.
#[derive(Clone)]
pub struct OtlpHandle {
    tx: mpsc::Sender<AuditRecord>,
    aggregate: Arc<Mutex<Aggregator>>,
    loss: Loss,
}

impl OtlpHandle {
    /// Counts the record in the metrics and queues it for export; never
    /// waits.
    pub fn send(&self, record: &AuditRecord) {
        self.aggregate
            .lock()
            .expect("OTLP aggregate lock poisoned")
            .observe(record);
        // Reserve first: a full queue costs no copy of the record.
        match self.tx.try_reserve() {
            Ok(permit) => {
                let mut copy = record.clone();
                // Never exported (see logs.rs); not kept in the queue either.
                copy.prompt = None;
                copy.output = None;
                permit.send(copy);
            }
            Err(_) => self.loss.lost(
                1,
                "the OTLP queue is full (the collector is slow or down); raise otlp.queue or \
                 check the collector",
            ),
        }
    }
}

/// Records lost on the way to the collector, shown as
/// `modelgate_records_dropped_total{queue="otlp"}`.
#[derive(Clone)]
struct Loss(Arc<AtomicU64>);

impl Loss {
    /// Counts a loss and logs it: the first, then at every power of two,
    /// so a storm of losses is visible without flooding the log.
    fn lost(&self, n: u64, why: &str) {
        if n == 0 {
            return;
        }
        let before = self.0.fetch_add(n, Ordering::Relaxed);
        let total = before + n;
        if before == 0 || (before + 1..=total).any(u64::is_power_of_two) {
            warn!(
                lost = n,
                dropped_total = total,
                "OTLP log records lost: {why}"
            );
        }
    }
}

/// The export tasks, for the daemon to stop.
pub struct Exporter {
    stop: watch::Sender<Option<Instant>>,
    logs: JoinHandle<()>,
    metrics: JoinHandle<()>,
    exported: Counter,
    loss: Loss,
}

impl Exporter {
    /// Sends what is still queued and a last metrics export, giving up on
    /// whatever is left after `within` (counted as lost). Call it once the
    /// proxy has stopped, so no record arrives after the queue is drained.
    pub async fn finish(self, within: Duration) {
        let _ = self.stop.send(Some(Instant::now() + within));
        // The tasks honour the deadline themselves; the margin covers a
        // last encode, and a task stuck past it is not waited for.
        let both = async {
            let _ = self.logs.await;
            let _ = self.metrics.await;
        };
        if tokio::time::timeout(within + Duration::from_secs(2), both)
            .await
            .is_err()
        {
            warn!("the OTLP exporter did not finish in time; stopping without it");
        }
        info!(
            log_records_exported = self.exported.get(),
            log_records_lost = self.loss.0.load(Ordering::Relaxed),
            "OTLP exporter stopped"
        );
    }
}

/// What `modelgate status` shows of the export.
pub struct Health {
    pub endpoint: String,
    exported: Counter,
    loss: Loss,
}

impl Health {
    pub fn exported(&self) -> u64 {
        self.exported.get()
    }

    pub fn lost(&self) -> u64 {
        self.loss.0.load(Ordering::Relaxed)
    }
}

impl Exporter {
    pub fn health(&self, config: &OtlpConfig) -> Health {
        Health {
            endpoint: config.endpoint.to_string(),
            exported: self.exported.clone(),
            loss: self.loss.clone(),
        }
    }
}

/// Resolves once the agent is stopping; never, if the exporter was
/// dropped without `finish`.
async fn stopped(stop: &mut watch::Receiver<Option<Instant>>) {
    if stop.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The exporter cannot start; each says what to fix in `otlp:`.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(transparent)]
    Header(#[from] config::HeaderError),
    #[error("preparing the OTLP exporter (otlp: in agent.yaml)")]
    Client(#[source] crate::trust::TrustError),
}

/// Checks the settings (headers, trust roots) and starts the exporter;
/// counters go to `metrics`.
pub fn spawn(
    config: &OtlpConfig,
    metrics: &crate::metrics::Metrics,
) -> Result<(OtlpHandle, Exporter), OtlpError> {
    let headers = Arc::new(config.header_map()?);
    let client = || Client::new(config, headers.clone()).map_err(OtlpError::Client);
    let resource = logs::resource(&crate::alerts::syslog::hostname(), &config.resource);
    let (stop_tx, stop_rx) = watch::channel(None);
    let loss = Loss(Arc::new(AtomicU64::new(0)));
    metrics.watch_queue("otlp", loss.0.clone());
    let aggregate = Arc::new(Mutex::new(Aggregator::new(SystemTime::now())));
    let (tx, rx) = mpsc::channel(config.queue.get());

    let (exported, failed) = metrics.otlp_counters("logs");
    let logs_exported = exported.clone();
    let sender = Sender::new(
        "logs",
        client()?,
        &config.endpoint,
        RetryPolicy {
            backoff: BACKOFF,
            give_up: GIVE_UP,
        },
        stop_rx.clone(),
        failed,
    );
    let logs = tokio::spawn(run_logs(LogsTask {
        rx,
        sender,
        resource: resource.clone(),
        batch: config.batch.get(),
        interval: config.interval,
        stop: stop_rx.clone(),
        exported,
        loss: loss.clone(),
    }));

    let (exported, failed) = metrics.otlp_counters("metrics");
    let sender = Sender::new(
        "metrics",
        client()?,
        &config.endpoint,
        // The next export carries the same totals and more: retrying a
        // snapshot longer than an interval would only delay it.
        RetryPolicy {
            backoff: BACKOFF,
            give_up: config.interval,
        },
        stop_rx.clone(),
        failed,
    );
    let metrics = tokio::spawn(run_metrics(MetricsTask {
        aggregate: aggregate.clone(),
        sender,
        resource,
        interval: config.interval,
        stop: stop_rx,
        exported,
    }));
    info!(endpoint = %config.endpoint, "exporting audit records and metrics over OTLP");
    Ok((
        OtlpHandle {
            tx,
            aggregate,
            loss: loss.clone(),
        },
        Exporter {
            stop: stop_tx,
            logs,
            metrics,
            exported: logs_exported,
            loss,
        },
    ))
}

struct LogsTask {
    rx: mpsc::Receiver<AuditRecord>,
    sender: Sender,
    resource: Resource,
    batch: usize,
    interval: Duration,
    stop: watch::Receiver<Option<Instant>>,
    exported: Counter,
    loss: Loss,
}

/// Batches records — up to `batch`, or what came within `interval` of
/// the first — and delivers each batch before taking the next, so an
/// outage backs up into the bounded queue rather than into memory.
async fn run_logs(mut t: LogsTask) {
    let mut stopping = t.stop.borrow().is_some();
    loop {
        let first = if stopping {
            t.rx.try_recv().ok()
        } else {
            tokio::select! {
                record = t.rx.recv() => record,
                _ = stopped(&mut t.stop) => {
                    stopping = true;
                    continue;
                }
            }
        };
        // Closed (the proxy is gone) or, when stopping, drained.
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let flush_at = Instant::now() + t.interval;
        while batch.len() < t.batch {
            if stopping {
                match t.rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
                continue;
            }
            tokio::select! {
                record = t.rx.recv() => match record {
                    Some(record) => batch.push(record),
                    None => break,
                },
                _ = tokio::time::sleep_until(flush_at) => break,
                _ = stopped(&mut t.stop) => stopping = true,
            }
        }
        let observed = SystemTime::now();
        let count = batch.len() as u64;
        let records = batch
            .iter()
            .map(|record| logs::log_record(record, observed))
            .collect();
        drop(batch);
        let body = Bytes::from(logs::request(&t.resource, records).encode_to_vec());
        match t.sender.deliver(body).await {
            Delivery::Accepted(answer) => {
                let partial = ExportLogsServiceResponse::decode(answer)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .filter(|p| p.rejected_log_records > 0);
                let rejected = partial
                    .as_ref()
                    .map_or(0, |p| (p.rejected_log_records as u64).min(count));
                t.exported.inc_by(count - rejected);
                if let Some(partial) = partial {
                    t.loss.lost(
                        rejected,
                        &format!(
                            "the collector rejected part of a batch: {}",
                            partial.error_message
                        ),
                    );
                }
            }
            Delivery::Lost(why) => t.loss.lost(count, &why),
        }
    }
}

struct MetricsTask {
    aggregate: Arc<Mutex<Aggregator>>,
    sender: Sender,
    resource: Resource,
    interval: Duration,
    stop: watch::Receiver<Option<Instant>>,
    exported: Counter,
}

/// Exports the totals every interval while there are any, and once more
/// at shutdown.
async fn run_metrics(mut t: MetricsTask) {
    let mut lost_in_a_row = 0u64;
    let mut tick = tokio::time::interval(t.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped(&mut t.stop) => true,
        };
        let (body, points) = {
            let aggregate = t.aggregate.lock().expect("OTLP aggregate lock poisoned");
            let points = aggregate.points();
            let request = (points > 0).then(|| aggregate.request(&t.resource, SystemTime::now()));
            (request.map(|r| Bytes::from(r.encode_to_vec())), points)
        };
        if let Some(body) = body {
            match t.sender.deliver(body).await {
                Delivery::Accepted(answer) => {
                    lost_in_a_row = 0;
                    t.exported.inc_by(points as u64);
                    if let Some(partial) = ExportMetricsServiceResponse::decode(answer)
                        .ok()
                        .and_then(|r| r.partial_success)
                        .filter(|p| p.rejected_data_points > 0)
                    {
                        warn!(rejected = partial.rejected_data_points,
                            message = %partial.error_message,
                            "the collector rejected some OTLP data points");
                    }
                }
                // Nothing is lost for good: the next export has the totals.
                Delivery::Lost(why) => {
                    lost_in_a_row += 1;
                    if lost_in_a_row.is_power_of_two() {
                        warn!(
                            exports = lost_in_a_row,
                            "OTLP metrics exports not delivered (the next one carries the totals): {why}"
                        );
                    }
                }
            }
        }
        if last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{audit::Destination, identity::Identity, policy::StorePrompts};

    fn record() -> AuditRecord {
        let mut record = AuditRecord::new(
            crate::audit::Handling::Redirect,
            "default".into(),
            "openai".into(),
            Destination {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 443,
            },
            "https",
            1,
            Identity::default(),
        );
        record.tokens.input = Some(3);
        record.store_text(StorePrompts::Full, "a prompt", "an output");
        record
    }

    #[test]
    fn a_full_queue_drops_and_counts_but_metrics_stay_exact() {
        let (tx, mut rx) = mpsc::channel(2);
        let handle = OtlpHandle {
            tx,
            aggregate: Arc::new(Mutex::new(Aggregator::new(SystemTime::now()))),
            loss: Loss(Arc::new(AtomicU64::new(0))),
        };
        for _ in 0..5 {
            handle.send(&record());
        }
        assert_eq!(
            handle.loss.0.load(Ordering::Relaxed),
            3,
            "two fit, three lost"
        );
        let queued = rx.try_recv().unwrap();
        assert!(
            queued.prompt.is_none() && queued.output.is_none(),
            "no text is queued"
        );
        assert_eq!(queued.tokens.input, Some(3));
        let aggregate = handle.aggregate.lock().unwrap();
        let request = aggregate.request(&Resource::default(), SystemTime::now());
        let text = format!("{request:?}");
        assert!(
            text.contains("sum: Some(15.0)"),
            "5 × 3 input tokens: {text}"
        );
    }
}
