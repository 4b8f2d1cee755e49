//! OTLP/HTTP delivery: protobuf bodies POSTed over one kept-alive
//! HTTP/1.1 connection per signal, retried as the OTLP specification
//! says — connection failures, 429, 502, 503 and 504, with exponential
//! backoff, jitter and the server's `Retry-After` — and given up after a
//! bounded time, or at once on any other error status.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use tokio::{sync::watch, time::Instant};
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use super::config::{Endpoint, OtlpConfig};
use crate::{alerts::backoff::Backoff, delivery::Connection};

/// 1 s doubling to 30 s, jittered.
pub const BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    cap: Duration::from_secs(30),
};

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx; the body may report a partial success.
    Accepted(Bytes),
    /// An error status the specification says not to retry.
    Refused(StatusCode),
    /// Worth another try, after `after` if the server said.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// The OTLP/HTTP rule: 429, 502, 503 and 504 are retried, every other
/// error status is final.
pub fn classify(status: StatusCode, after: Option<Duration>, body: Bytes) -> Attempt {
    match status.as_u16() {
        200..=299 => Attempt::Accepted(body),
        429 | 502 | 503 | 504 => Attempt::Retry {
            reason: format!("the collector answered {status}"),
            after,
        },
        _ => Attempt::Refused(status),
    }
}

/// When to stop retrying a payload.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// From the first attempt; past it the payload is given up.
    pub give_up: Duration,
}

impl RetryPolicy {
    /// The pause before the next attempt, or None to give up: when the
    /// pause would end past `limit`, waiting cannot help. The server's
    /// `Retry-After` is honoured: never retried sooner than it asked.
    pub fn next_delay(
        &self,
        attempt: u32,
        after: Option<Duration>,
        now: Instant,
        limit: Instant,
    ) -> Option<Duration> {
        let delay = self.backoff.delay(attempt).max(after.unwrap_or_default());
        (now + delay <= limit).then_some(delay)
    }
}

/// One connection to the collector, made again when it breaks.
pub struct Client {
    authority: String,
    headers: Arc<HeaderMap>,
    conn: Connection,
}

impl Client {
    pub fn new(
        config: &OtlpConfig,
        headers: Arc<HeaderMap>,
    ) -> Result<Client, crate::trust::TrustError> {
        let tls = if config.endpoint.https() {
            let tls =
                crate::trust::client_config(config.ca_file.as_deref(), "OTLP", &[b"http/1.1"])?;
            Some(TlsConnector::from(tls))
        } else {
            None
        };
        let endpoint = &config.endpoint;
        Ok(Client {
            authority: endpoint.authority(),
            headers,
            conn: Connection::new(endpoint.host(), endpoint.port(), tls, config.timeout),
        })
    }

    /// POSTs `body` to `path`.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Attempt {
        let mut request = match Request::post(path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                header::USER_AGENT,
                concat!("modelgate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
        {
            Ok(request) => request,
            Err(err) => {
                return Attempt::Retry {
                    reason: format!("building the request: {err}"),
                    after: None,
                };
            }
        };
        request
            .headers_mut()
            .extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        match self.conn.send(request).await {
            Ok(answer) => classify(answer.status, answer.retry_after, answer.body),
            Err(reason) => Attempt::Retry {
                reason,
                after: None,
            },
        }
    }
}

/// What became of a payload.
#[derive(Debug)]
pub enum Delivery {
    /// The collector took it; the body may report a partial success.
    Accepted(Bytes),
    /// Refused, or given up: the reason, for the log.
    Lost(String),
}

/// Delivers one signal's payloads, retrying within the policy and the
/// shutdown deadline; counts failed attempts and logs outages once, not
/// at every retry.
pub struct Sender {
    pub signal: &'static str,
    client: Client,
    path: String,
    policy: RetryPolicy,
    /// Set when the agent stops: nothing is retried past this instant.
    stop: watch::Receiver<Option<Instant>>,
    failed: Counter,
    failures: u64,
}

impl Sender {
    pub fn new(
        signal: &'static str,
        client: Client,
        endpoint: &Endpoint,
        policy: RetryPolicy,
        stop: watch::Receiver<Option<Instant>>,
        failed: Counter,
    ) -> Sender {
        Sender {
            signal,
            client,
            path: endpoint.signal_path(signal),
            policy,
            stop,
            failed,
            failures: 0,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        *self.stop.borrow()
    }

    pub async fn deliver(&mut self, body: Bytes) -> Delivery {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let outcome = match self.deadline() {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline, self.client.post(&self.path, body.clone()))
                        .await
                        .unwrap_or_else(|_| Attempt::Retry {
                            reason: "the agent is stopping and its time to flush ran out".into(),
                            after: None,
                        })
                }
                None => self.client.post(&self.path, body.clone()).await,
            };
            match outcome {
                Attempt::Accepted(answer) => {
                    if self.failures > 0 {
                        info!(
                            signal = self.signal,
                            failed_attempts = self.failures,
                            "the OTLP collector is reachable again"
                        );
                        self.failures = 0;
                    }
                    return Delivery::Accepted(answer);
                }
                Attempt::Refused(status) => {
                    self.failed.inc();
                    return Delivery::Lost(format!(
                        "the collector refused the export with {status}; check the endpoint's \
                         path, its headers (credentials) and the collector's log"
                    ));
                }
                Attempt::Retry { reason, after } => {
                    self.failed.inc();
                    self.failures += 1;
                    // The first failure of an outage, then ever more rarely.
                    if self.failures.is_power_of_two() {
                        warn!(signal = self.signal, error = %reason, failed_attempts = self.failures,
                            "OTLP export failed; retrying with backoff");
                    }
                    let give_up = started + self.policy.give_up;
                    let limit = self.deadline().map_or(give_up, |d| d.min(give_up));
                    let now = Instant::now();
                    let Some(delay) = self.policy.next_delay(attempt, after, now, limit) else {
                        return Delivery::Lost(format!(
                            "gave up after {} attempts in {}: {reason}",
                            attempt + 1,
                            humantime::format_duration(Duration::from_secs(
                                (now - started).as_secs()
                            ))
                        ));
                    };
                    if self.deadline().is_some() {
                        tokio::time::sleep(delay).await;
                    } else {
                        // A stop cuts the pause short: one more attempt
                        // now is better than sleeping through the time
                        // there is to flush.
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = super::stopped(&mut self.stop) => {}
                        }
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_answers_are_retried() {
        let retried = |code: u16| {
            matches!(
                classify(StatusCode::from_u16(code).unwrap(), None, Bytes::new()),
                Attempt::Retry { .. }
            )
        };
        assert_eq!(
            classify(StatusCode::OK, None, Bytes::from_static(b"x")),
            Attempt::Accepted(Bytes::from_static(b"x"))
        );
        for code in [429, 502, 503, 504] {
            assert!(retried(code), "{code} is retried");
        }
        for code in [400, 401, 403, 404, 408, 413, 415, 500, 501, 301] {
            assert!(!retried(code), "{code} is final");
            assert!(matches!(
                classify(StatusCode::from_u16(code).unwrap(), None, Bytes::new()),
                Attempt::Refused(_)
            ));
        }
    }

    #[test]
    fn retries_back_off_honour_retry_after_and_give_up_in_time() {
        let policy = RetryPolicy {
            backoff: BACKOFF,
            give_up: Duration::from_secs(60),
        };
        let start = Instant::now();
        let limit = start + policy.give_up;
        let first = policy.next_delay(0, None, start, limit).unwrap();
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let fourth = policy.next_delay(3, None, start, limit).unwrap();
        assert!(fourth >= Duration::from_millis(6400), "{fourth:?}");
        assert_eq!(
            policy.next_delay(0, Some(Duration::from_secs(20)), start, limit),
            Some(Duration::from_secs(20)),
            "Retry-After is a floor"
        );
        assert_eq!(
            policy.next_delay(0, Some(Duration::from_secs(120)), start, limit),
            None,
            "a Retry-After past the limit gives up now"
        );
        let late = start + Duration::from_secs(50);
        assert_eq!(
            policy.next_delay(5, None, late, limit),
            None,
            "30 s more would pass the minute"
        );
        assert_eq!(
            policy.next_delay(0, None, start, start + Duration::from_millis(100)),
            None,
            "a stop deadline shortens the limit"
        );
    }
}
