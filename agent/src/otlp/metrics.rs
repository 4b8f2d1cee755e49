//! Metrics for OTLP, aggregated as records come (so they stay exact even
//! when the log queue overflows) and exported with cumulative temporality:
//! a lost export costs nothing, the next one carries the totals.
//!
//! - `gen_ai.client.token.usage` (histogram, `{token}`, by
//!   `gen_ai.token.type`) and `gen_ai.client.operation.duration`
//!   (histogram, `s`), with the GenAI semantic conventions' bucket
//!   boundaries and attributes, plus `modelgate.workload`;
//! - for streams, `gen_ai.client.operation.time_to_first_chunk` and
//!   `gen_ai.client.operation.time_per_output_chunk` (histograms, `s`);
//! - `modelgate.requests` (monotonic sum) by decision and outcome.
//!
//! Attribute sets are bounded twice: workloads as in the Prometheus
//! metrics (then `other`), and series per metric, past which values go to
//! the one set `{otel.metric.overflow = true}`, as the OpenTelemetry SDKs'
//! cardinality limit does.

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

use super::logs::{error_type, key_value, scope, string, unix_nanos};
use crate::{
    audit::{AuditRecord, Handling},
    metrics::{CHUNK_BOUNDS, MAX_WORKLOADS},
};

/// The semantic conventions' advice for `gen_ai.client.token.usage`.
pub const TOKEN_BOUNDS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// The semantic conventions' advice for `gen_ai.client.operation.duration`.
pub const DURATION_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Distinct attribute sets per metric before the overflow set.
const MAX_SERIES: usize = 2000;

type Attrs = Vec<(&'static str, String)>;

/// One metric's series, capped.
struct Series<T> {
    by_attrs: HashMap<Attrs, T>,
    overflow: Option<T>,
}

impl<T: Default> Series<T> {
    fn new() -> Series<T> {
        Series {
            by_attrs: HashMap::new(),
            overflow: None,
        }
    }

    fn entry(&mut self, attrs: Attrs) -> &mut T {
        if self.by_attrs.len() < MAX_SERIES || self.by_attrs.contains_key(&attrs) {
            self.by_attrs.entry(attrs).or_default()
        } else {
            self.overflow.get_or_insert_with(T::default)
        }
    }

    fn len(&self) -> usize {
        self.by_attrs.len() + usize::from(self.overflow.is_some())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every series with its attributes, the overflow set last.
    fn each(&self) -> impl Iterator<Item = (Vec<KeyValue>, &T)> {
        self.by_attrs
            .iter()
            .map(|(attrs, value)| {
                let kvs = attrs.iter().map(|(k, v)| key_value(k, string(v))).collect();
                (kvs, value)
            })
            .chain(self.overflow.iter().map(|value| {
                let overflow = AnyValue {
                    value: Some(any_value::Value::BoolValue(true)),
                };
                (vec![key_value("otel.metric.overflow", overflow)], value)
            }))
    }
}

/// An explicit-bucket histogram: bucket `i` counts values in
/// `(bounds[i-1], bounds[i]]`, the last one everything above.
#[derive(Debug, Default, Clone)]
struct Hist {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hist {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
            self.min = value;
            self.max = value;
        }
        self.counts[bounds.partition_point(|bound| *bound < value)] += 1;
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }
}

pub struct Aggregator {
    start: SystemTime,
    tokens: Series<Hist>,
    duration: Series<Hist>,
    first_chunk: Series<Hist>,
    per_chunk: Series<Hist>,
    requests: Series<u64>,
    workloads: HashSet<String>,
}

impl Aggregator {
    pub fn new(start: SystemTime) -> Aggregator {
        Aggregator {
            start,
            tokens: Series::new(),
            duration: Series::new(),
            first_chunk: Series::new(),
            per_chunk: Series::new(),
            requests: Series::new(),
            workloads: HashSet::new(),
        }
    }

    fn workload(&mut self, record: &AuditRecord) -> String {
        let name = crate::metrics::workload_of(&record.identity);
        if self.workloads.contains(&name) || self.workloads.len() < MAX_WORKLOADS {
            self.workloads.insert(name.clone());
            name
        } else {
            "other".into()
        }
    }

    pub fn observe(&mut self, record: &AuditRecord) {
        let workload = self.workload(record);
        let operation = record.operation.unwrap_or("unknown").to_string();
        let mut base: Attrs = vec![
            ("gen_ai.operation.name", operation),
            ("gen_ai.provider.name", record.provider.clone()),
        ];
        if let Some(model) = &record.model {
            base.push(("gen_ai.request.model", model.clone()));
        }
        base.push(("modelgate.workload", workload.clone()));

        for (kind, count) in [
            ("input", record.tokens.input),
            ("output", record.tokens.output),
        ] {
            if let Some(count) = count {
                let mut attrs = base.clone();
                attrs.push(("gen_ai.token.type", kind.to_string()));
                self.tokens
                    .entry(attrs)
                    .observe(&TOKEN_BOUNDS, count as f64);
            }
        }
        // Streams only, as the conventions say.
        if let Some(first) = record.time_to_first_chunk_ms {
            self.first_chunk
                .entry(base.clone())
                .observe(&CHUNK_BOUNDS, first / 1000.0);
        }
        if !record.chunk_gaps_s.is_empty() {
            let per_chunk = self.per_chunk.entry(base.clone());
            for gap in &record.chunk_gaps_s {
                per_chunk.observe(&CHUNK_BOUNDS, f64::from(*gap));
            }
        }
        // Only requests that went upstream are operations; a refusal or a
        // passthrough connection has no operation to time.
        if record.decision == Handling::Redirect {
            let mut attrs = base;
            if let Some(error) = error_type(record) {
                attrs.push(("error.type", error));
            }
            self.duration
                .entry(attrs)
                .observe(&DURATION_BOUNDS, record.latency_ms / 1000.0);
        }
        let mut attrs: Attrs = vec![("gen_ai.provider.name", record.provider.clone())];
        if let Some(model) = &record.model {
            attrs.push(("gen_ai.request.model", model.clone()));
        }
        attrs.extend([
            ("modelgate.decision", record.decision.to_string()),
            ("modelgate.outcome", record.outcome.to_string()),
            ("modelgate.workload", workload),
        ]);
        *self.requests.entry(attrs) += 1;
    }

    /// Data points an export carries.
    pub fn points(&self) -> usize {
        self.tokens.len()
            + self.duration.len()
            + self.first_chunk.len()
            + self.per_chunk.len()
            + self.requests.len()
    }

    /// Everything so far, as one export request stamped `now`.
    pub fn request(&self, resource: &Resource, now: SystemTime) -> ExportMetricsServiceRequest {
        let (start, now) = (unix_nanos(self.start), unix_nanos(now));
        let cumulative = AggregationTemporality::Cumulative as i32;
        let histogram = |series: &Series<Hist>, bounds: &[f64]| {
            let data_points = series
                .each()
                .map(|(attributes, hist)| HistogramDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: hist.count,
                    sum: Some(hist.sum),
                    bucket_counts: hist.counts.clone(),
                    explicit_bounds: bounds.to_vec(),
                    min: Some(hist.min),
                    max: Some(hist.max),
                    ..HistogramDataPoint::default()
                })
                .collect();
            Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: cumulative,
            })
        };
        let requests = Data::Sum(Sum {
            data_points: self
                .requests
                .each()
                .map(|(attributes, count)| NumberDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsInt(
                        i64::try_from(*count).unwrap_or(i64::MAX),
                    )),
                    ..NumberDataPoint::default()
                })
                .collect(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        });
        let metric = |name: &str, description: &str, unit: &str, data: Data| Metric {
            name: name.to_string(),
            description: description.to_string(),
            unit: unit.to_string(),
            data: Some(data),
            ..Metric::default()
        };
        let mut metrics = Vec::with_capacity(5);
        if !self.tokens.is_empty() {
            metrics.push(metric(
                "gen_ai.client.token.usage",
                "Number of input and output tokens used",
                "{token}",
                histogram(&self.tokens, &TOKEN_BOUNDS),
            ));
        }
        if !self.duration.is_empty() {
            metrics.push(metric(
                "gen_ai.client.operation.duration",
                "GenAI operation duration",
                "s",
                histogram(&self.duration, &DURATION_BOUNDS),
            ));
        }
        if !self.first_chunk.is_empty() {
            metrics.push(metric(
                "gen_ai.client.operation.time_to_first_chunk",
                "Time to receive the first chunk, from the request to the first chunk of the \
                 response stream",
                "s",
                histogram(&self.first_chunk, &CHUNK_BOUNDS),
            ));
        }
        if !self.per_chunk.is_empty() {
            metrics.push(metric(
                "gen_ai.client.operation.time_per_output_chunk",
                "Time per output chunk, for each chunk after the first: from the end of the \
                 previous chunk to the end of this one",
                "s",
                histogram(&self.per_chunk, &CHUNK_BOUNDS),
            ));
        }
        if !self.requests.is_empty() {
            metrics.push(metric(
                "modelgate.requests",
                "Model API requests through the proxy, by decision and outcome",
                "{request}",
                requests,
            ));
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{audit::Destination, identity::Identity};

    fn record(model: &str, exe: &str, input: u64, output: u64, latency_ms: f64) -> AuditRecord {
        let identity = Identity {
            exe: Some(exe.into()),
            ..Identity::default()
        };
        let mut record = AuditRecord::new(
            Handling::Redirect,
            "default".into(),
            "openai".into(),
            Destination {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 443,
            },
            "https",
            1,
            identity,
        );
        record.operation = Some("chat");
        record.model = Some(model.into());
        record.tokens.input = Some(input);
        record.tokens.output = Some(output);
        record.latency_ms = latency_ms;
        record
    }

    fn metric<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        request.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
        attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    #[test]
    fn streams_get_chunk_timing_histograms_and_plain_answers_do_not() {
        let mut agg = Aggregator::new(SystemTime::UNIX_EPOCH);
        agg.observe(&record("gpt-4o", "/usr/bin/curl", 1, 1, 50.0));
        let request = agg.request(&Resource::default(), SystemTime::now());
        let names: Vec<&str> = request.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("chunk")),
            "not for a plain answer: {names:?}"
        );
        let mut streamed = record("gpt-4o", "/usr/bin/curl", 1, 3, 900.0);
        streamed.time_to_first_chunk_ms = Some(300.0);
        streamed.chunk_gaps_s = vec![0.05, 0.05, 0.5];
        agg.observe(&streamed);
        let request = agg.request(&Resource::default(), SystemTime::now());
        let histogram = |name: &str| match &metric(&request, name).data {
            Some(Data::Histogram(h)) => h.data_points[0].clone(),
            _ => panic!("{name} is a histogram"),
        };
        let first = histogram("gen_ai.client.operation.time_to_first_chunk");
        assert_eq!((first.count, first.sum), (1, Some(0.3)));
        assert_eq!(first.explicit_bounds, CHUNK_BOUNDS.to_vec());
        assert_eq!(
            metric(&request, "gen_ai.client.operation.time_to_first_chunk").unit,
            "s"
        );
        let per = histogram("gen_ai.client.operation.time_per_output_chunk");
        assert_eq!(per.count, 3);
        assert!((per.sum.unwrap() - 0.6).abs() < 1e-6, "{per:?}");
        assert_eq!(attr(&per.attributes, "gen_ai.operation.name"), Some("chat"));
        assert_eq!(
            attr(&per.attributes, "gen_ai.request.model"),
            Some("gpt-4o")
        );
    }

    #[test]
    fn token_histograms_sum_to_the_records_tokens() {
        let mut agg = Aggregator::new(SystemTime::UNIX_EPOCH);
        agg.observe(&record("gpt-4o", "/usr/bin/curl", 11, 7, 120.0));
        agg.observe(&record("gpt-4o", "/usr/bin/curl", 5, 3000, 2500.0));
        agg.observe(&record("gpt-4.1", "/usr/bin/python3", 1, 0, 10.0));
        let request = agg.request(&Resource::default(), SystemTime::now());
        let Some(Data::Histogram(tokens)) = &metric(&request, "gen_ai.client.token.usage").data
        else {
            panic!("token usage is a histogram");
        };
        assert_eq!(
            tokens.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let total = |kind: &str| -> f64 {
            tokens
                .data_points
                .iter()
                .filter(|p| attr(&p.attributes, "gen_ai.token.type") == Some(kind))
                .map(|p| p.sum.unwrap())
                .sum()
        };
        assert_eq!(total("input"), 17.0);
        assert_eq!(total("output"), 3007.0);
        let point = tokens
            .data_points
            .iter()
            .find(|p| {
                attr(&p.attributes, "gen_ai.request.model") == Some("gpt-4o")
                    && attr(&p.attributes, "gen_ai.token.type") == Some("output")
            })
            .unwrap();
        assert_eq!(
            attr(&point.attributes, "modelgate.workload"),
            Some("/usr/bin/curl")
        );
        assert_eq!(
            attr(&point.attributes, "gen_ai.provider.name"),
            Some("openai")
        );
        assert_eq!(point.count, 2);
        // 7 is in (4, 16], 3000 in (1024, 4096].
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(point.bucket_counts[2], 1);
        assert_eq!(point.bucket_counts[6], 1);
        assert_eq!(point.bucket_counts.len(), TOKEN_BOUNDS.len() + 1);
        assert_eq!((point.min, point.max), (Some(7.0), Some(3000.0)));
        // A count of exactly a bound is in that bound's bucket.
        assert_eq!(
            tokens
                .data_points
                .iter()
                .find(
                    |p| attr(&p.attributes, "gen_ai.request.model") == Some("gpt-4.1")
                        && attr(&p.attributes, "gen_ai.token.type") == Some("input")
                )
                .unwrap()
                .bucket_counts[0],
            1
        );

        let Some(Data::Histogram(duration)) =
            &metric(&request, "gen_ai.client.operation.duration").data
        else {
            panic!("duration is a histogram");
        };
        let seconds: f64 = duration.data_points.iter().map(|p| p.sum.unwrap()).sum();
        assert!((seconds - 2.63).abs() < 1e-9, "{seconds}");
        assert_eq!(
            metric(&request, "gen_ai.client.operation.duration").unit,
            "s"
        );
        let Some(Data::Sum(requests)) = &metric(&request, "modelgate.requests").data else {
            panic!("requests is a sum");
        };
        assert!(requests.is_monotonic);
        let count: i64 = requests
            .data_points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(n)) => n,
                _ => 0,
            })
            .sum();
        assert_eq!(count, 3);
    }

    #[test]
    fn failures_and_refusals_are_told_apart() {
        let mut agg = Aggregator::new(SystemTime::UNIX_EPOCH);
        let mut failed = record("m", "/bin/a", 1, 1, 5.0);
        failed.outcome = crate::audit::Outcome::UpstreamError;
        agg.observe(&failed);
        let mut refused = record("m", "/bin/a", 1, 1, 5.0);
        refused.decision = Handling::Refused;
        refused.tokens = Default::default();
        agg.observe(&refused);
        let request = agg.request(&Resource::default(), SystemTime::now());
        let Some(Data::Histogram(duration)) =
            &metric(&request, "gen_ai.client.operation.duration").data
        else {
            panic!("duration is a histogram");
        };
        assert_eq!(duration.data_points.len(), 1, "the refusal is not timed");
        assert_eq!(
            attr(&duration.data_points[0].attributes, "error.type"),
            Some("upstream_error")
        );
        let Some(Data::Sum(requests)) = &metric(&request, "modelgate.requests").data else {
            panic!("requests is a sum");
        };
        let decisions: HashSet<_> = requests
            .data_points
            .iter()
            .filter_map(|p| attr(&p.attributes, "modelgate.decision"))
            .collect();
        assert_eq!(decisions, HashSet::from(["redirect", "refused"]));
    }

    #[test]
    fn series_are_capped_into_an_overflow_set() {
        let mut agg = Aggregator::new(SystemTime::UNIX_EPOCH);
        for n in 0..MAX_SERIES + 50 {
            let mut r = record(&format!("model-{n}"), "/bin/a", 1, 0, 1.0);
            r.tokens.output = None;
            agg.observe(&r);
        }
        let request = agg.request(&Resource::default(), SystemTime::now());
        let Some(Data::Histogram(tokens)) = &metric(&request, "gen_ai.client.token.usage").data
        else {
            panic!("token usage is a histogram");
        };
        assert_eq!(tokens.data_points.len(), MAX_SERIES + 1);
        let overflow = tokens
            .data_points
            .iter()
            .find(|p| {
                p.attributes
                    .iter()
                    .any(|kv| kv.key == "otel.metric.overflow")
            })
            .expect("an overflow series");
        assert_eq!(overflow.count, 50);
        let total: u64 = tokens.data_points.iter().map(|p| p.count).sum();
        assert_eq!(
            total,
            (MAX_SERIES + 50) as u64,
            "nothing is lost to the cap"
        );
    }

    #[test]
    fn workloads_are_capped_into_other() {
        let mut agg = Aggregator::new(SystemTime::UNIX_EPOCH);
        for n in 0..MAX_WORKLOADS + 5 {
            agg.observe(&record("m", &format!("/bin/p{n}"), 1, 1, 1.0));
        }
        let request = agg.request(&Resource::default(), SystemTime::now());
        let Some(Data::Sum(requests)) = &metric(&request, "modelgate.requests").data else {
            panic!("requests is a sum");
        };
        assert_eq!(requests.data_points.len(), MAX_WORKLOADS + 1);
        assert!(
            requests
                .data_points
                .iter()
                .any(|p| attr(&p.attributes, "modelgate.workload") == Some("other"))
        );
    }
}
