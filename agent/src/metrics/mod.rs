//! Prometheus metrics: model requests, tokens, errors and latency by
//! provider, model, decision and workload, plus the agent's health. Served
//! as text at `/metrics` on a loopback address.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::warn;

use crate::audit::AuditRecord;

/// Distinct workload labels kept; the rest are counted as `other`, so one
/// host cannot blow up a Prometheus server's series count.
pub const MAX_WORKLOADS: usize = 100;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: String,
    model: String,
    decision: String,
    outcome: String,
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    model: String,
    workload: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    provider: String,
    model: String,
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoryLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    kernel: Family<CounterLabels, Gauge>,
    dropped: Family<QueueLabels, Gauge>,
    otlp_exported: Family<SignalLabels, Counter>,
    otlp_failed: Family<SignalLabels, Counter>,
    /// The queues' own loss counters, read at each scrape.
    queues: Mutex<Vec<(&'static str, Arc<AtomicU64>)>>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    /// Client connections the proxy closed at once at its limit; read at
    /// each scrape.
    proxy_refused: Gauge,
    proxy_refused_source: Mutex<Option<Arc<AtomicU64>>>,
    /// Read at each scrape: the alert sinks own their counts.
    alerts: Mutex<Option<crate::alerts::AlertCounters>>,
    alerts_delivered: Family<SinkLabels, Gauge>,
    alerts_dropped: Family<SinkLabels, Gauge>,
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
        let kernel = Family::<CounterLabels, Gauge>::default();
        registry.register(
            "kernel",
            "The kernel programs' counters (connects per action, events lost, DNS)",
            kernel.clone(),
        );
        let dropped = Family::<QueueLabels, Gauge>::default();
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
        let alerts_delivered = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "alerts_delivered",
            "Alerts each sink delivered (file, syslog, webhook-<id>)",
            alerts_delivered.clone(),
        );
        let alerts_dropped = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "alerts_dropped",
            "Alerts lost: by a sink, or `queue` when the alert queue was full",
            alerts_dropped.clone(),
        );
        let alerts_spool = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "alerts_spool_depth",
            "Alerts waiting in a webhook's on-disk spool for delivery",
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
        let proxy_refused = Gauge::default();
        registry.register(
            "proxy_connections_refused",
            "Client connections closed at once because client_limits.max_connections were \
             being served",
            proxy_refused.clone(),
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
            alerts_delivered,
            alerts_dropped,
            alerts_spool,
            map_entries,
            map_capacity,
            alerts: Mutex::new(None),
            requests,
            tokens,
            latency,
            kernel,
            dropped,
            otlp_exported,
            otlp_failed,
            queues: Mutex::new(Vec::new()),
            workloads: Mutex::new(HashSet::new()),
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

    pub fn observe(&self, record: &AuditRecord) {
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
        self.latency
            .get_or_create(&LatencyLabels {
                provider: record.provider.clone(),
                model,
                workload,
            })
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

    /// Reports `counter` as `modelgate_records_dropped{queue}`.
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

    pub fn watch_proxy_refused(&self, counter: Arc<AtomicU64>) {
        *self.proxy_refused_source.lock().expect("poisoned") = Some(counter);
    }

    /// Reports the alert sinks' deliveries, losses and spool depths.
    pub fn watch_alerts(&self, alerts: crate::alerts::AlertCounters) {
        *self.alerts.lock().expect("poisoned") = Some(alerts);
    }

    pub fn set_kernel(&self, counters: &[(agent_common::Counter, u64)]) {
        for (counter, value) in counters {
            self.kernel
                .get_or_create(&CounterLabels {
                    counter: counter.name().to_string(),
                })
                .set(*value as i64);
        }
    }

    fn render(&self) -> String {
        for (queue, counter) in self.queues.lock().expect("poisoned").iter() {
            self.dropped
                .get_or_create(&QueueLabels { queue })
                .set(counter.load(Ordering::Relaxed) as i64);
        }
        if let Some(refused) = &*self.proxy_refused_source.lock().expect("poisoned") {
            self.proxy_refused
                .set(refused.load(Ordering::Relaxed) as i64);
        }
        if let Some(alerts) = &*self.alerts.lock().expect("poisoned") {
            let stats = alerts.stats();
            self.alerts_dropped
                .get_or_create(&SinkLabels {
                    sink: "queue".into(),
                })
                .set(stats.queue_full as i64);
            for sink in stats.sinks {
                let labels = SinkLabels { sink: sink.sink };
                self.alerts_delivered
                    .get_or_create(&labels)
                    .set(sink.delivered as i64);
                self.alerts_dropped
                    .get_or_create(&labels)
                    .set(sink.dropped as i64);
                self.alerts_spool
                    .get_or_create(&labels)
                    .set(sink.spool_depth as i64);
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
        let mut text = String::new();
        if let Err(err) = encode(&mut text, &self.registry) {
            warn!(error = %err, "cannot encode metrics");
        }
        text
    }
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

/// Serves `/metrics` on `addr` (port 0: any free port); returns the
/// address bound.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics listener {addr}; pick another with --metrics-addr")
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let response = if request.uri().path() == "/metrics" {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(metrics.render())))
                        } else {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                        };
                        Ok::<_, std::convert::Infallible>(response.expect("static parts"))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}
