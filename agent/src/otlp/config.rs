//! The `otlp:` section of agent.yaml. Absent, nothing is exported; present,
//! `endpoint` is required and everything else has a default. Mistakes are
//! reported with their line when the file is read; header secrets named by
//! `headers_env` are read at start, so a missing variable stops the agent
//! with a message instead of failing every export later.

use std::{collections::BTreeMap, fmt, num::NonZeroUsize, path::PathBuf, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde::Deserialize;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_QUEUE: usize = 8192;
pub const DEFAULT_BATCH: usize = 512;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Headers the protocol needs as the exporter sets them.
const RESERVED: [HeaderName; 5] = [
    http::header::HOST,
    http::header::CONTENT_TYPE,
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::TRANSFER_ENCODING,
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://collector:4318`;
    /// records go to `<endpoint>/v1/logs`, metrics to `<endpoint>/v1/metrics`.
    pub endpoint: Endpoint,
    /// Extra request headers, e.g. a tenant id.
    #[serde(default)]
    pub headers: Headers,
    /// Headers whose value is read from an environment variable at start
    /// (header name → variable name): API keys stay out of the file.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Bound on one export request: connect, TLS, send and answer.
    #[serde(default = "default_timeout", with = "crate::yaml::positive_duration")]
    pub timeout: Duration,
    /// Audit records waiting for export; past this they are dropped and
    /// counted (`modelgate_records_dropped_total{queue="otlp"}`).
    #[serde(default = "default_queue")]
    pub queue: NonZeroUsize,
    /// Log records per export request.
    #[serde(default = "default_batch")]
    pub batch: NonZeroUsize,
    /// How long a record may wait for its batch to fill, and how often
    /// metrics are exported.
    #[serde(default = "default_interval", with = "crate::yaml::positive_duration")]
    pub interval: Duration,
    /// An extra trust root (PEM) beside the system's, for an https endpoint.
    pub ca_file: Option<PathBuf>,
    /// Extra resource attributes, e.g. `deployment.environment.name: prod`.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_queue() -> NonZeroUsize {
    NonZeroUsize::new(DEFAULT_QUEUE).expect("not zero")
}

fn default_batch() -> NonZeroUsize {
    NonZeroUsize::new(DEFAULT_BATCH).expect("not zero")
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}

impl OtlpConfig {
    /// The request headers: `headers` plus `headers_env` read now. Errors
    /// name the header and say what to fix.
    pub fn header_map(&self) -> Result<HeaderMap, HeaderError> {
        self.header_map_with(|var| std::env::var(var).ok())
    }

    fn header_map_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<HeaderMap, HeaderError> {
        let mut map = HeaderMap::new();
        let mut add = |name: &str, value: String, from: &'static str| {
            let header = HeaderName::try_from(name).map_err(|_| HeaderError::Name {
                from,
                name: name.to_string(),
            })?;
            if RESERVED.contains(&header) {
                return Err(HeaderError::Reserved {
                    from,
                    name: name.to_string(),
                });
            }
            let mut value = HeaderValue::try_from(value).map_err(|_| HeaderError::Value {
                from,
                name: name.to_string(),
            })?;
            value.set_sensitive(true);
            map.insert(header, value);
            Ok(())
        };
        for (name, value) in &self.headers.0 {
            add(name, value.clone(), "headers")?;
        }
        for (name, var) in &self.headers_env {
            let Some(value) = env(var).filter(|v| !v.is_empty()) else {
                return Err(HeaderError::Unset {
                    var: var.clone(),
                    name: name.clone(),
                });
            };
            add(name, value, "headers_env")?;
        }
        Ok(map)
    }
}

/// A configured export header cannot be sent; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("otlp.{from}: `{name}` is not a valid HTTP header name")]
    Name { from: &'static str, name: String },
    #[error("otlp.{from}: `{name}` is set by the exporter itself; remove it")]
    Reserved { from: &'static str, name: String },
    #[error(
        "otlp.{from}: the value of `{name}` is not a valid HTTP header value (control \
         characters or a line break?)"
    )]
    Value { from: &'static str, name: String },
    #[error(
        "otlp.headers_env: the environment variable {var} for header `{name}` is not set or \
         empty; set it in the agent's environment (e.g. the unit's Environment= or \
         EnvironmentFile=)"
    )]
    Unset { var: String, name: String },
}

/// An http(s) base URL without credentials or query.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Endpoint(Uri);

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        let uri: Uri = raw
            .parse()
            .map_err(|err| format!("`{raw}` is not a URL: {err}"))?;
        let with_host = uri.host().is_some_and(|h| !h.is_empty());
        if !matches!(uri.scheme_str(), Some("http" | "https")) || !with_host {
            return Err(format!(
                "`{raw}` is not an http(s) URL with a host, like http://collector:4318 \
                 (OTLP/HTTP; gRPC endpoints are not supported)"
            ));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(
                "the endpoint must not carry credentials; put them in `headers_env`".to_string(),
            );
        }
        if uri.query().is_some() {
            return Err(format!("`{raw}`: the endpoint takes no query string"));
        }
        Ok(Endpoint(uri))
    }
}

impl Endpoint {
    pub fn https(&self) -> bool {
        self.0.scheme_str() == Some("https")
    }

    /// The host, without the brackets of an IPv6 literal.
    pub fn host(&self) -> &str {
        self.0.host().unwrap_or_default().trim_matches(['[', ']'])
    }

    pub fn port(&self) -> u16 {
        self.0
            .port_u16()
            .unwrap_or(if self.https() { 443 } else { 80 })
    }

    /// What the `Host` header says.
    pub fn authority(&self) -> String {
        self.0
            .authority()
            .map_or_else(|| self.host().to_string(), |a| a.to_string())
    }

    /// The path of a signal's resource: `/v1/logs` under the base path,
    /// as the OTLP/HTTP exporters' `OTEL_EXPORTER_OTLP_ENDPOINT` has it.
    pub fn signal_path(&self, signal: &str) -> String {
        format!("{}/v1/{signal}", self.0.path().trim_end_matches('/'))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.0.scheme_str().unwrap_or("http"),
            self.authority(),
            self.0.path().trim_end_matches('/')
        )
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// Header names and values; values may be credentials, so Debug shows
/// only the names.
#[derive(Clone, Default, Deserialize)]
pub struct Headers(pub BTreeMap<String, String>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OtlpConfig, String> {
        crate::yaml::parse::<OtlpConfig>("agent.yaml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_example_parses() {
        let config = parse(
            "endpoint: https://collector.example:4318/otlp/\n\
             headers: {x-scope-orgid: team-a}\n\
             headers_env: {authorization: OTLP_TOKEN}\n\
             timeout: 3s\n\
             queue: 100\n\
             batch: 10\n\
             interval: 500ms\n\
             ca_file: /etc/ssl/collector.pem\n\
             resource: {deployment.environment.name: prod}\n",
        )
        .unwrap();
        assert!(config.endpoint.https());
        assert_eq!(config.endpoint.port(), 4318);
        assert_eq!(config.endpoint.signal_path("logs"), "/otlp/v1/logs");
        assert_eq!(config.timeout, Duration::from_secs(3));
        assert_eq!((config.queue.get(), config.batch.get()), (100, 10));
        assert_eq!(config.interval, Duration::from_millis(500));
        assert_eq!(config.resource["deployment.environment.name"], "prod");
        let headers = config
            .header_map_with(|var| (var == "OTLP_TOKEN").then(|| "Bearer s3cret".into()))
            .unwrap();
        assert_eq!(headers["authorization"], "Bearer s3cret");
        assert_eq!(headers["x-scope-orgid"], "team-a");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("team-a") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn defaults_and_the_base_path() {
        let config = parse("endpoint: http://127.0.0.1:4318").unwrap();
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        assert_eq!(config.queue.get(), DEFAULT_QUEUE);
        assert_eq!(config.batch.get(), DEFAULT_BATCH);
        assert_eq!(config.interval, DEFAULT_INTERVAL);
        assert_eq!(config.endpoint.signal_path("metrics"), "/v1/metrics");
        assert_eq!(config.endpoint.to_string(), "http://127.0.0.1:4318");
        assert_eq!(
            parse("endpoint: 'http://[::1]'").unwrap().endpoint.host(),
            "::1"
        );
    }

    #[test]
    fn mistakes_are_errors_with_a_reason() {
        for (text, expect) in [
            ("{}", "missing field `endpoint`"),
            ("endpoint: grpc://c:4317", "not an http(s) URL"),
            (
                "endpoint: 'http://u:p@c:4318'",
                "must not carry credentials",
            ),
            ("endpoint: 'http://c:4318/?a=b'", "no query string"),
            ("endpoint: http://c\ninterval: often", "not a duration"),
            (
                "endpoint: http://c\nbatchsize: 3",
                "unknown field `batchsize`",
            ),
            ("endpoint: http://c\nbatch: 0", "nonzero"),
            ("endpoint: http://c\ntimeout: 0s", "longer than 0s"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
        let config = parse("endpoint: http://c\nheaders_env: {authorization: NOPE}").unwrap();
        let err = config.header_map_with(|_| None).unwrap_err().to_string();
        assert!(err.contains("NOPE") && err.contains("not set"), "{err}");
        let config = parse("endpoint: http://c\nheaders: {'bad header': x}").unwrap();
        let err = format!("{:#}", config.header_map().unwrap_err());
        assert!(err.contains("not a valid HTTP header name"), "{err}");
        let config = parse("endpoint: http://c\nheaders: {Content-Type: text/plain}").unwrap();
        let err = format!("{:#}", config.header_map().unwrap_err());
        assert!(err.contains("set by the exporter itself"), "{err}");
    }
}
