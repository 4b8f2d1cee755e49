//! The webhook sink: at least once, in order, across receiver outages and
//! agent restarts.
//!
//! Each alert is rendered and appended to the sink's spool (fsync'd) by
//! the spooler; the deliverer POSTs the oldest spooled alert until the
//! receiver acknowledges it (2xx), then advances the spool's cursor and
//! takes the next. Failures are retried with backoff (1 s doubling to 60 s,
//! jittered); a 4xx other than 408/429 is logged, counted and skipped,
//! since sending it again cannot succeed. On start the spool is replayed.
//!
//! Requests carry `X-Modelgate-Alert-Id`, `X-Modelgate-Timestamp` (unix
//! seconds, fresh for each attempt) and, with a secret,
//! `X-Modelgate-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//! Receivers verify the signature, reject stale timestamps, and
//! de-duplicate on the alert id together with the body's `count` and
//! `last_seen`: a retry after a lost answer repeats the same triple, while
//! a later fold update of the same id carries a new one.

mod client;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use self::client::Client;
pub use self::client::Outcome;
use super::{
    Alert,
    backoff::Backoff,
    hex,
    settings::{WebhookFormat, WebhookSink},
    spool::{self, Spool},
    stats::SinkCounters,
};

/// The spool directory's name: the URL and format identify the sink, so a
/// changed URL starts a fresh spool rather than replaying to the new one
/// what was meant for the old.
pub fn sink_name(config: &WebhookSink) -> String {
    let mut hasher = Sha256::new();
    hasher.update(config.url.0.to_string().as_bytes());
    hasher.update([config.format as u8]);
    format!("webhook-{}", hex(&hasher.finalize()[..6]))
}

/// The request body for `alert`.
pub fn render(alert: &Alert, format: WebhookFormat) -> String {
    match format {
        WebhookFormat::Json => serde_json::to_string(alert).unwrap_or_default(),
        WebhookFormat::Slack => {
            let mut text = format!(
                "{} {}: {}",
                alert.severity.as_str(),
                alert.kind,
                alert.message
            );
            if let Some(exe) = alert.exe() {
                text.push_str(&format!(" — {exe}"));
                if let Some(pid) = alert.pid() {
                    text.push_str(&format!(" pid {pid}"));
                }
                if let Some(unit) = alert.unit().or(alert.container()) {
                    text.push_str(&format!(" ({unit})"));
                }
            }
            if alert.count > 1 {
                text.push_str(&format!(" [×{} since {}]", alert.count, alert.first_seen));
            }
            json!({ "text": text }).to_string()
        }
    }
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// A webhook sink that cannot start; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("set secret_env or secret_file, not both")]
    TwoSecrets,
    #[error("secret_env: the environment variable {0} is not set")]
    SecretUnset(String),
    #[error("secret_env: the environment variable {0} is empty")]
    SecretEmpty(String),
    #[error("secret_file: reading {}", .0.display())]
    SecretFile(PathBuf, #[source] std::io::Error),
    #[error("secret_file: {} is empty", .0.display())]
    SecretFileEmpty(PathBuf),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("opening the spool {}", .0.display())]
    Spool(PathBuf, #[source] std::io::Error),
}

fn read_secret(config: &WebhookSink) -> Result<Option<Vec<u8>>, WebhookError> {
    match (&config.secret_env, &config.secret_file) {
        (Some(_), Some(_)) => Err(WebhookError::TwoSecrets),
        (Some(var), None) => {
            let value = std::env::var(var).map_err(|_| WebhookError::SecretUnset(var.clone()))?;
            if value.is_empty() {
                return Err(WebhookError::SecretEmpty(var.clone()));
            }
            Ok(Some(value.into_bytes()))
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| WebhookError::SecretFile(path.clone(), err))?;
            let secret = text.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(WebhookError::SecretFileEmpty(path.clone()));
            }
            Ok(Some(secret.as_bytes().to_vec()))
        }
        (None, None) => Ok(None),
    }
}

/// A sink ready to run: secret read, trust roots loaded, spool opened.
pub struct Prepared {
    pub name: String,
    client: Client,
    secret: Option<Vec<u8>>,
    format: WebhookFormat,
    spool: Spool,
}

/// Everything that can be wrong with a sink is found here, at start.
pub fn prepare(
    config: &WebhookSink,
    spool_root: &Path,
    limits: spool::Limits,
) -> Result<Prepared, WebhookError> {
    let name = sink_name(config);
    let secret = read_secret(config)?;
    let client = Client::new(config.url.clone(), config.timeout, config.ca.as_deref())?;
    let dir: PathBuf = spool_root.join(&name);
    let spool = Spool::open(&dir, limits).map_err(|err| WebhookError::Spool(dir.clone(), err))?;
    Ok(Prepared {
        name,
        client,
        secret,
        format: config.format,
        spool,
    })
}

/// Starts the spooler (fed by `rx`) and the deliverer. The spooler ends
/// when `rx` closes; the deliverer when `shutdown` turns true and either
/// the spool is empty or the receiver fails — what is left stays spooled
/// for the next start.
pub fn spawn(
    sink: Prepared,
    mut rx: mpsc::Receiver<Arc<Alert>>,
    counters: Arc<SinkCounters>,
    backoff: Backoff,
    shutdown: watch::Receiver<bool>,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let Prepared {
        name,
        client,
        secret,
        format,
        spool,
    } = sink;
    if spool.depth() > 0 {
        info!(sink = %name, queued = spool.depth(), "replaying spooled alerts");
    }
    counters.spool_depth.store(spool.depth(), Ordering::Relaxed);
    let spool = Arc::new(Mutex::new(spool));
    let notify = Arc::new(Notify::new());

    let spooler = {
        let (spool, notify, counters) = (spool.clone(), notify.clone(), counters.clone());
        tokio::task::spawn_blocking(move || {
            while let Some(alert) = rx.blocking_recv() {
                let mut records = vec![(alert.id.clone(), render(&alert, format))];
                while let Ok(alert) = rx.try_recv() {
                    records.push((alert.id.clone(), render(&alert, format)));
                }
                let mut spool = spool.lock().expect("spool lock poisoned");
                match spool.append(&records) {
                    Ok(pushed_out) => counters.dropped(
                        pushed_out,
                        "the webhook spool is full; the oldest alerts were removed",
                    ),
                    Err(err) => {
                        error!(sink = %counters.name, error = %err, "cannot spool alerts");
                        counters
                            .dropped(records.len() as u64, "the webhook spool cannot be written");
                    }
                }
                counters.spool_depth.store(spool.depth(), Ordering::Relaxed);
                notify.notify_one();
            }
        })
    };
    let deliverer = tokio::spawn(deliver(Deliverer {
        spool,
        notify,
        client,
        secret,
        counters,
        backoff,
        shutdown,
    }));
    (spooler, deliverer)
}

struct Deliverer {
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    client: Client,
    secret: Option<Vec<u8>>,
    counters: Arc<SinkCounters>,
    backoff: Backoff,
    shutdown: watch::Receiver<bool>,
}

impl Deliverer {
    /// Runs a spool operation off the async threads: it reads and fsyncs.
    async fn with_spool<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Spool) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let spool = self.spool.clone();
        let counters = self.counters.clone();
        tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().expect("spool lock poisoned");
            let result = op(&mut spool);
            counters.spool_depth.store(spool.depth(), Ordering::Relaxed);
            result
        })
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err)))
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps, or returns false at once if the agent is stopping.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.shutdown.wait_for(|stop| *stop) => false,
        }
    }
}

async fn deliver(mut d: Deliverer) {
    let name = d.counters.name.clone();
    let mut disk_errors = 0u32;
    loop {
        let entry = match d.with_spool(Spool::peek).await {
            Ok(entry) => entry,
            Err(err) => {
                error!(sink = %name, error = %err, "cannot read the webhook spool");
                let delay = d.backoff.delay(disk_errors);
                disk_errors = disk_errors.saturating_add(1);
                if !d.pause(delay).await {
                    return;
                }
                continue;
            }
        };
        let Some(entry) = entry else {
            if d.stopping() {
                return;
            }
            tokio::select! {
                _ = d.notify.notified() => {}
                _ = d.shutdown.wait_for(|stop| *stop) => {}
            }
            continue;
        };
        let body = Bytes::from(entry.body.clone());
        let mut attempt = 0u32;
        loop {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let mut headers = vec![
                ("x-modelgate-alert-id", entry.id.clone()),
                ("x-modelgate-timestamp", timestamp.to_string()),
            ];
            if let Some(secret) = &d.secret {
                headers.push((
                    "x-modelgate-signature",
                    sign(secret, timestamp, &entry.body),
                ));
            }
            let outcome = d.client.post(&headers, body.clone()).await;
            let delivered = match outcome {
                Outcome::Delivered => {
                    if attempt > 0 {
                        info!(sink = %name, attempts = attempt + 1, "webhook reachable again");
                    }
                    true
                }
                Outcome::Rejected(status) => {
                    error!(sink = %name, %status, alert = %entry.id,
                        "the webhook refused an alert; it is dropped (fix the receiver or its URL)");
                    false
                }
                Outcome::Retry { reason, after } => {
                    d.counters.retried.fetch_add(1, Ordering::Relaxed);
                    // Once per outage, then now and then while it lasts.
                    if attempt.is_multiple_of(10) {
                        warn!(sink = %name, error = %reason, attempts = attempt + 1,
                            "webhook delivery failed; retrying with backoff, alerts stay spooled");
                    }
                    if d.stopping() {
                        // The next start replays it.
                        return;
                    }
                    let delay = d
                        .backoff
                        .delay(attempt)
                        .max(after.unwrap_or_default())
                        .min(d.backoff.cap);
                    if !d.pause(delay).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                    // A long outage may have pushed it out of a full spool
                    // (counted there): move on to what is still queued.
                    let seq = entry.seq;
                    if !d
                        .with_spool(move |spool| Ok(spool.is_pending(seq)))
                        .await
                        .unwrap_or(true)
                    {
                        break;
                    }
                    continue;
                }
            };
            let acked = entry.clone();
            if let Err(err) = d.with_spool(move |spool| spool.ack(&acked)).await {
                // Delivered but not recorded: it may be sent again, which
                // at-least-once allows.
                error!(sink = %name, error = %err, "cannot advance the webhook spool cursor");
                if !d.pause(d.backoff.delay(0)).await {
                    return;
                }
            }
            if delivered {
                d.counters.delivered();
            } else {
                d.counters.dropped(1, "the webhook refused them (4xx)");
            }
            break;
        }
    }
}
