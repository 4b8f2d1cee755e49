//! Prometheus metrics: model requests, tokens, errors and latency by
//! provider, model, decision and workload, plus the agent's health. Served
//! at `/metrics` on a loopback address, as OpenMetrics or Prometheus text
//! 0.0.4, whichever the scraper asks for ([`http`]).
//!
//! Every monotonic count is a counter (`…_total`), every level a gauge; the
//! counts other parts of the agent keep in their own atomics are copied
//! into the registry at each scrape.

mod http;
mod labels;

#[cfg(test)]
mod docs_tests;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

pub use http::serve;
pub use labels::HandshakeFailure;
use labels::{
    CounterLabels, LatencyLabels, MapLabels, MemoryLabels, QueueLabels, ReasonLabels,
    RequestLabels, SignalLabels, SinkLabels, TokenLabels,
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditRecord, Handling};

/// The GenAI semantic conventions' bucket advice for
/// `gen_ai.client.operation.time_to_first_chunk` and
/// `time_per_output_chunk` (seconds).
pub const CHUNK_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Distinct workload labels kept; the rest are counted as `other`, so one
/// host cannot blow up a Prometheus server's series count.
pub const MAX_WORKLOADS: usize = 100;

/// One request being served by the proxy: counted in
/// `modelgate_proxy_requests_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Requests the proxy audited since the agent started (`modelgate
/// status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTotals {
    /// Every audit record: served, failed or refused.
    pub audited: u64,
    /// Served but failed: upstream error, client gone, HTTP status >= 400.
    pub errors: u64,
    /// Refused by the policy (blocked, quarantined, data, budget, ...).
    pub refused: u64,
}

/// Audited requests since start, for `modelgate status`.
#[derive(Debug, Default)]
struct Totals {
    audited: AtomicU64,
    errors: AtomicU64,
    refused: AtomicU64,
}

pub struct Metrics {
    registry: Registry,
    totals: Totals,
    requests: Family<RequestLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cache_read_tokens: Family<LatencyLabels, Counter>,
    reasoning_tokens: Family<LatencyLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    first_chunk: Family<LatencyLabels, Histogram>,
    per_chunk: Family<LatencyLabels, Histogram>,
    kernel: Family<CounterLabels, Counter>,
    dropped: Family<QueueLabels, Counter>,
    otlp_exported: Family<SignalLabels, Counter>,
    otlp_failed: Family<SignalLabels, Counter>,
    /// The queues' own loss counters, read at each scrape.
    queues: Mutex<Vec<(&'static str, Arc<AtomicU64>)>>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    /// Client connections the proxy closed at once at its limit; read at
    /// each scrape.
    proxy_refused: Counter,
    proxy_refused_source: Mutex<Option<Arc<AtomicU64>>>,
    proxy_in_flight: Gauge,
    tls_failures: Family<ReasonLabels, Counter>,
    /// Read at each scrape: the alert sinks own their counts.
    alerts: Mutex<Option<crate::alerts::AlertCounters>>,
    alerts_delivered: Family<SinkLabels, Counter>,
    alerts_dropped: Family<SinkLabels, Counter>,
    alerts_spool: Family<SinkLabels, Gauge>,
    workloads: Mutex<HashSet<String>>,
    /// Read at each scrape.
    memory: Family<MemoryLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("modelgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Model API requests through the proxy, by decision and outcome",
            requests.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gen_ai_usage_tokens",
            "Tokens used (gen_ai.usage.input_tokens / output_tokens)",
            tokens.clone(),
        );
        let cache_read_tokens = Family::<LatencyLabels, Counter>::default();
        registry.register(
            "gen_ai_usage_cache_read_input_tokens",
            "Input tokens read from the provider's prompt cache, where it reports them \
             (gen_ai.usage.cache_read.input_tokens; part of the input tokens)",
            cache_read_tokens.clone(),
        );
        let reasoning_tokens = Family::<LatencyLabels, Counter>::default();
        registry.register(
            "gen_ai_usage_reasoning_output_tokens",
            "Output tokens spent on reasoning, where the provider reports them \
             (gen_ai.usage.reasoning.output_tokens)",
            reasoning_tokens.clone(),
        );
        let first_chunk = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(CHUNK_BOUNDS)
        });
        registry.register(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Streams only: from the request's arrival to the first chunk of the answer \
             (gen_ai.client.operation.time_to_first_chunk)",
            first_chunk.clone(),
        );
        let per_chunk = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(CHUNK_BOUNDS)
        });
        registry.register(
            "gen_ai_client_operation_time_per_output_chunk_seconds",
            "Streams only: for each chunk after the first, the time since the previous one \
             (gen_ai.client.operation.time_per_output_chunk)",
            per_chunk.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response",
            latency.clone(),
        );
        let kernel = Family::<CounterLabels, Counter>::default();
        registry.register(
            "kernel",
            "The kernel programs' counters (connects per action, events lost, DNS)",
            kernel.clone(),
        );
        let dropped = Family::<QueueLabels, Counter>::default();
        registry.register(
            "records_dropped",
            "Records lost on the way: a writer's queue was full (audit, usage); for otlp, \
             also refused by the collector or not delivered in time",
            dropped.clone(),
        );
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_entries",
            "Entries in the kernel maps the agent fills",
            map_entries.clone(),
        );
        let map_capacity = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_capacity",
            "Capacity of those maps; past it new entries are refused",
            map_capacity.clone(),
        );
        let alerts_delivered = Family::<SinkLabels, Counter>::default();
        registry.register(
            "alerts_delivered",
            "Alerts each sink delivered (file, syslog, webhook-<id>)",
            alerts_delivered.clone(),
        );
        let alerts_dropped = Family::<SinkLabels, Counter>::default();
        registry.register(
            "alerts_dropped",
            "Alerts lost: by a sink, or `queue` when the alert queue was full",
            alerts_dropped.clone(),
        );
        let alerts_spool = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "alerts_spool_depth",
            "Alerts waiting in a webhook's on-disk spool for delivery (webhooks only: the \
             other sinks have no spool)",
            alerts_spool.clone(),
        );
        let otlp_exported = Family::<SignalLabels, Counter>::default();
        registry.register(
            "otlp_exported",
            "Log records and metric data points the OTLP collector accepted",
            otlp_exported.clone(),
        );
        let otlp_failed = Family::<SignalLabels, Counter>::default();
        registry.register(
            "otlp_failed",
            "OTLP export requests that failed (each retry counts)",
            otlp_failed.clone(),
        );
        let proxy_refused = Counter::default();
        registry.register(
            "proxy_connections_refused",
            "Client connections closed at once because client_limits.max_connections were \
             being served",
            proxy_refused.clone(),
        );
        let proxy_in_flight = Gauge::default();
        registry.register(
            "proxy_requests_in_flight",
            "Requests the proxy is serving: from their arrival to the end of their response \
             (a stream counts until it ends)",
            proxy_in_flight.clone(),
        );
        let tls_failures = Family::<ReasonLabels, Counter>::default();
        for reason in HandshakeFailure::ALL {
            // Every reason is there from the start, at 0, so rate() sees
            // the first failure.
            drop(tls_failures.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            }));
        }
        registry.register(
            "proxy_tls_handshake_failures",
            "TLS handshakes with redirected clients that did not complete, by reason \
             (client_hello, timeout, host_mismatch, certificate, client_rejected, other)",
            tls_failures.clone(),
        );
        let memory = Family::<MemoryLabels, Gauge>::default();
        registry.register(
            "memory_bytes",
            "The agent's memory: rss, heap_in_use (live allocations), heap_free (kept by the \
             allocator)",
            memory.clone(),
        );
        Arc::new(Metrics {
            registry,
            memory,
            proxy_refused,
            proxy_refused_source: Mutex::new(None),
            proxy_in_flight,
            tls_failures,
            alerts_delivered,
            alerts_dropped,
            alerts_spool,
            map_entries,
            map_capacity,
            alerts: Mutex::new(None),
            requests,
            tokens,
            cache_read_tokens,
            reasoning_tokens,
            latency,
            first_chunk,
            per_chunk,
            kernel,
            dropped,
            otlp_exported,
            otlp_failed,
            queues: Mutex::new(Vec::new()),
            workloads: Mutex::new(HashSet::new()),
            totals: Totals::default(),
        })
    }

    /// The workload, capped in number.
    fn workload(&self, record: &AuditRecord) -> String {
        let name = workload_of(&record.identity);
        let mut seen = self.workloads.lock().expect("poisoned");
        if seen.contains(&name) || seen.len() < MAX_WORKLOADS {
            seen.insert(name.clone());
            name
        } else {
            "other".into()
        }
    }

    /// Audited requests since start: all, failed (upstream error, client
    /// gone, an HTTP error status), refused by policy.
    pub fn request_totals(&self) -> RequestTotals {
        RequestTotals {
            audited: self.totals.audited.load(Ordering::Relaxed),
            errors: self.totals.errors.load(Ordering::Relaxed),
            refused: self.totals.refused.load(Ordering::Relaxed),
        }
    }

    pub fn observe(&self, record: &AuditRecord) {
        self.totals.audited.fetch_add(1, Ordering::Relaxed);
        if record.decision == Handling::Refused {
            self.totals.refused.fetch_add(1, Ordering::Relaxed);
        } else if record.failed() {
            self.totals.errors.fetch_add(1, Ordering::Relaxed);
        }
        let workload = self.workload(record);
        let model = record.model.clone().unwrap_or_else(|| "unknown".into());
        self.requests
            .get_or_create(&RequestLabels {
                provider: record.provider.clone(),
                model: model.clone(),
                decision: record.decision.to_string(),
                outcome: record.outcome.to_string(),
                workload: workload.clone(),
            })
            .inc();
        for (kind, count) in [
            ("input", record.tokens.input),
            ("output", record.tokens.output),
        ] {
            if let Some(count) = count {
                self.tokens
                    .get_or_create(&TokenLabels {
                        provider: record.provider.clone(),
                        model: model.clone(),
                        workload: workload.clone(),
                        r#type: kind.into(),
                    })
                    .inc_by(count);
            }
        }
        let labels = LatencyLabels {
            provider: record.provider.clone(),
            model,
            workload,
        };
        if let Some(count) = record.tokens.cache_read {
            self.cache_read_tokens.get_or_create(&labels).inc_by(count);
        }
        if let Some(count) = record.tokens.reasoning {
            self.reasoning_tokens.get_or_create(&labels).inc_by(count);
        }
        if let Some(first) = record.time_to_first_chunk_ms {
            self.first_chunk
                .get_or_create(&labels)
                .observe(first / 1000.0);
        }
        if !record.chunk_gaps_s.is_empty() {
            let per_chunk = self.per_chunk.get_or_create(&labels);
            for gap in &record.chunk_gaps_s {
                per_chunk.observe(f64::from(*gap));
            }
        }
        self.latency
            .get_or_create(&labels)
            .observe(record.latency_ms / 1000.0);
    }

    /// The OTLP exporter's counters for `signal` (`logs`, `metrics`):
    /// items exported, and export requests that failed.
    pub fn otlp_counters(&self, signal: &'static str) -> (Counter, Counter) {
        let labels = SignalLabels { signal };
        (
            self.otlp_exported.get_or_create(&labels).clone(),
            self.otlp_failed.get_or_create(&labels).clone(),
        )
    }

    /// Reports `counter` as `modelgate_records_dropped_total{queue}`.
    pub fn watch_queue(&self, queue: &'static str, counter: Arc<AtomicU64>) {
        self.queues.lock().expect("poisoned").push((queue, counter));
    }

    pub fn set_map_sizes(&self, sizes: &[crate::ebpf::maps::MapSize]) {
        for size in sizes {
            let labels = MapLabels { map: size.map };
            self.map_entries
                .get_or_create(&labels)
                .set(size.entries as i64);
            self.map_capacity
                .get_or_create(&labels)
                .set(i64::from(size.capacity));
        }
    }

    /// A request the proxy started serving; it stays counted in flight
    /// until the returned guard is dropped.
    pub fn request_in_flight(&self) -> InFlight {
        self.proxy_in_flight.inc();
        InFlight(self.proxy_in_flight.clone())
    }

    pub fn tls_handshake_failed(&self, reason: HandshakeFailure) {
        self.tls_failures
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn watch_proxy_refused(&self, counter: Arc<AtomicU64>) {
        *self.proxy_refused_source.lock().expect("poisoned") = Some(counter);
    }

    /// Reports the alert sinks' deliveries, losses and spool depths.
    pub fn watch_alerts(&self, alerts: crate::alerts::AlertCounters) {
        *self.alerts.lock().expect("poisoned") = Some(alerts);
    }

    pub fn set_kernel(&self, counters: &[(agent_common::Counter, u64)]) {
        for (counter, value) in counters {
            let labels = CounterLabels {
                counter: counter.name().to_string(),
            };
            copy(&self.kernel.get_or_create(&labels), *value);
        }
    }

    /// A series in every family (an empty family is not written at all),
    /// so a test sees every name the agent can export.
    #[cfg(test)]
    fn with_a_series_in_every_family(self: Arc<Self>) -> Arc<Self> {
        drop(self.requests.get_or_create(&RequestLabels::default()));
        drop(self.tokens.get_or_create(&TokenLabels::default()));
        drop(self.latency.get_or_create(&LatencyLabels::default()));
        drop(
            self.cache_read_tokens
                .get_or_create(&LatencyLabels::default()),
        );
        drop(
            self.reasoning_tokens
                .get_or_create(&LatencyLabels::default()),
        );
        drop(self.first_chunk.get_or_create(&LatencyLabels::default()));
        drop(self.per_chunk.get_or_create(&LatencyLabels::default()));
        drop(self.kernel.get_or_create(&CounterLabels::default()));
        drop(self.dropped.get_or_create(&QueueLabels::default()));
        drop(self.otlp_exported.get_or_create(&SignalLabels::default()));
        drop(self.otlp_failed.get_or_create(&SignalLabels::default()));
        drop(self.map_entries.get_or_create(&MapLabels::default()));
        drop(self.map_capacity.get_or_create(&MapLabels::default()));
        drop(self.alerts_delivered.get_or_create(&SinkLabels::default()));
        drop(self.alerts_dropped.get_or_create(&SinkLabels::default()));
        drop(self.alerts_spool.get_or_create(&SinkLabels::default()));
        drop(self.memory.get_or_create(&MemoryLabels::default()));
        self
    }

    /// Copies the counts kept elsewhere into the registry, for a scrape.
    fn refresh(&self) {
        for (queue, counter) in self.queues.lock().expect("poisoned").iter() {
            copy(
                &self.dropped.get_or_create(&QueueLabels { queue }),
                counter.load(Ordering::Relaxed),
            );
        }
        if let Some(refused) = &*self.proxy_refused_source.lock().expect("poisoned") {
            copy(&self.proxy_refused, refused.load(Ordering::Relaxed));
        }
        if let Some(alerts) = &*self.alerts.lock().expect("poisoned") {
            let stats = alerts.stats();
            copy(
                &self.alerts_dropped.get_or_create(&SinkLabels {
                    sink: "queue".into(),
                }),
                stats.queue_full,
            );
            for sink in stats.sinks {
                // Only a webhook spools (its sink is named for its spool
                // directory); a depth for the others would always be 0.
                let spools = sink.sink.starts_with("webhook-");
                let labels = SinkLabels { sink: sink.sink };
                copy(
                    &self.alerts_delivered.get_or_create(&labels),
                    sink.delivered,
                );
                copy(&self.alerts_dropped.get_or_create(&labels), sink.dropped);
                if spools {
                    self.alerts_spool
                        .get_or_create(&labels)
                        .set(sink.spool_depth as i64);
                }
            }
        }
        let memory = crate::memory::now();
        for (kind, bytes) in [
            ("rss", memory.rss_bytes),
            ("heap_in_use", memory.heap_in_use_bytes),
            ("heap_free", memory.heap_free_bytes),
        ] {
            self.memory
                .get_or_create(&MemoryLabels { kind })
                .set(bytes as i64);
        }
    }
}

/// Sets `counter` to `value`, a count kept (monotonic) elsewhere.
fn copy(counter: &Counter, value: u64) {
    counter.inner().store(value, Ordering::Relaxed);
}

/// The workload label: the unit, else the container (short id), else the
/// exe.
pub fn workload_of(id: &crate::identity::Identity) -> String {
    id.cgroup_info
        .unit
        .clone()
        .or_else(|| {
            id.cgroup_info
                .container_id
                .clone()
                .map(|c| c.chars().take(12).collect())
        })
        .or_else(|| id.exe.clone())
        .unwrap_or_else(|| "unknown".into())
}
