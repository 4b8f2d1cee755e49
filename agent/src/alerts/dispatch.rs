//! Wiring: the producers' handle, the dispatcher that folds and fans out,
//! and the supervisor that shuts it all down in order.
//!
//! Every sink has its own bounded queue and task; the dispatcher never
//! waits on one (a full queue is that sink's loss, counted), so a slow or
//! failing sink cannot delay another, nor the producers.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::warn;

use super::{
    Alert, FILE_NAME,
    backoff::Backoff,
    file::{self, RotatingFile},
    fold::{self, Folder},
    settings::{AlertsConfig, SyslogTarget},
    spool,
    stats::{SinkCounters, Stats},
    syslog, webhook,
};

/// Alerts waiting to be folded.
const QUEUE: usize = 16_384;
/// Alerts waiting for one sink.
const SINK_QUEUE: usize = 4_096;

/// What tests (and only tests) change.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub backoff: Backoff,
    pub spool: spool::Limits,
    pub fold_cap: usize,
    /// How long webhooks may go on delivering spooled alerts at shutdown.
    pub drain_grace: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            backoff: Backoff::WEBHOOK,
            spool: spool::Limits::DEFAULT,
            fold_cap: fold::DEFAULT_CAP,
            drain_grace: Duration::from_secs(3),
        }
    }
}

#[derive(Default)]
struct Shared {
    received: AtomicU64,
    queue_full: AtomicU64,
    folded: AtomicU64,
    unfolded: AtomicU64,
    sinks: Vec<Arc<SinkCounters>>,
}

impl Shared {
    fn stats(&self) -> Stats {
        Stats {
            received: self.received.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            folded: self.folded.load(Ordering::Relaxed),
            alerts_unfolded: self.unfolded.load(Ordering::Relaxed),
            sinks: self.sinks.iter().map(|s| s.snapshot()).collect(),
        }
    }
}

/// The producers' handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Alerts {
    tx: mpsc::Sender<Alert>,
    shared: Arc<Shared>,
}

impl Alerts {
    pub fn send(&self, alert: Alert) {
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(alert).is_err() {
            let lost = self.shared.queue_full.fetch_add(1, Ordering::Relaxed) + 1;
            if lost.is_power_of_two() {
                warn!(lost, "the alert queue is full; alerts are being dropped");
            }
        }
    }

    /// Counters so far: delivered, retried and dropped per sink, spool
    /// depth, folding — for the daemon to log or serve.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The counters without a sender: a holder that lives as long as the
    /// process (the metrics server) must not keep the dispatcher from
    /// seeing that every producer is gone at shutdown.
    pub fn counters(&self) -> AlertCounters {
        AlertCounters(self.shared.clone())
    }
}

#[derive(Clone)]
pub struct AlertCounters(Arc<Shared>);

impl AlertCounters {
    pub fn stats(&self) -> Stats {
        self.0.stats()
    }
}

/// An alert sink that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("opening the alerts file {}", .0.display())]
    File(std::path::PathBuf, #[source] std::io::Error),
    #[error("alerts.webhooks[{index}] ({url}): the same URL and format are configured twice")]
    Duplicate { index: usize, url: String },
    #[error("alerts.webhooks[{index}] ({url})")]
    Webhook {
        index: usize,
        url: String,
        #[source]
        source: webhook::WebhookError,
    },
}

type Result<T, E = AlertsError> = std::result::Result<T, E>;

/// Starts the sinks configured in `config`. The handle's task ends when
/// every [`Alerts`] clone is gone and the sinks have written (webhooks:
/// spooled) everything; it returns the final counters.
pub fn open(state_dir: &Path, config: &AlertsConfig) -> Result<(Alerts, JoinHandle<Stats>)> {
    open_with(state_dir, config, Tuning::default())
}

struct Sink {
    tx: mpsc::Sender<Arc<Alert>>,
    counters: Arc<SinkCounters>,
}

pub fn open_with(
    state_dir: &Path,
    config: &AlertsConfig,
    tuning: Tuning,
) -> Result<(Alerts, JoinHandle<Stats>)> {
    let mut sinks = Vec::new();
    let mut writers: Vec<JoinHandle<()>> = Vec::new();
    let mut deliverers: Vec<JoinHandle<()>> = Vec::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut add = |name: String, target: String| {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let counters = Arc::new(SinkCounters::to(name, target));
        sinks.push(Sink {
            tx,
            counters: counters.clone(),
        });
        (rx, counters)
    };

    let path = config
        .file
        .path
        .clone()
        .unwrap_or_else(|| state_dir.join(FILE_NAME));
    let rotating = RotatingFile::open(&path, config.file.max_bytes, config.file.keep)
        .map_err(|err| AlertsError::File(path.clone(), err))?;
    let (rx, counters) = add("file".into(), path.display().to_string());
    writers.push(file::spawn(rotating, rx, counters));

    if let Some(syslog) = &config.syslog {
        let target = match &syslog.target {
            SyslogTarget::Unix(path) => format!("unix:{}", path.display()),
            SyslogTarget::Udp(addr) => format!("udp:{addr}"),
            SyslogTarget::Tcp(addr) => format!("tcp:{addr}"),
        };
        let (rx, counters) = add("syslog".into(), target);
        writers.push(syslog::spawn(syslog.clone(), rx, counters));
    }

    let spool_root = state_dir.join("spool");
    let mut names = Vec::new();
    for (i, hook) in config.webhooks.iter().enumerate() {
        let name = webhook::sink_name(hook);
        if names.contains(&name) {
            return Err(AlertsError::Duplicate {
                index: i,
                url: hook.url.to_string(),
            });
        }
        let prepared = webhook::prepare(hook, &spool_root, tuning.spool).map_err(|source| {
            AlertsError::Webhook {
                index: i,
                url: hook.url.to_string(),
                source,
            }
        })?;
        names.push(name);
        let (rx, counters) = add(prepared.name.clone(), hook.url.to_string());
        let (spooler, deliverer) =
            webhook::spawn(prepared, rx, counters, tuning.backoff, shutdown_rx.clone());
        writers.push(spooler);
        deliverers.push(deliverer);
    }
    warn_orphan_spools(&spool_root, &names);

    let shared = Arc::new(Shared {
        sinks: sinks.iter().map(|s| s.counters.clone()).collect(),
        ..Shared::default()
    });
    let (tx, rx) = mpsc::channel(QUEUE);
    let folder = Folder::new(config.fold_window, tuning.fold_cap);
    let dispatcher = tokio::spawn(dispatch(rx, folder, sinks, shared.clone()));
    let supervisor = {
        let shared = shared.clone();
        tokio::spawn(async move {
            // In order: the producers are gone and the folds flushed; every
            // sink has written its queue; webhooks get a grace period to
            // deliver what is spooled, the rest waits for the next start.
            let _ = dispatcher.await;
            for writer in writers {
                let _ = writer.await;
            }
            let _ = shutdown_tx.send(true);
            let drain = async {
                for deliverer in &mut deliverers {
                    let _ = deliverer.await;
                }
            };
            if tokio::time::timeout(tuning.drain_grace, drain)
                .await
                .is_err()
            {
                for deliverer in &deliverers {
                    deliverer.abort();
                }
            }
            shared.stats()
        })
    };
    Ok((Alerts { tx, shared }, supervisor))
}

async fn dispatch(
    mut rx: mpsc::Receiver<Alert>,
    mut folder: Folder,
    sinks: Vec<Sink>,
    shared: Arc<Shared>,
) {
    let fan_out = |alert: Alert| {
        let alert = Arc::new(alert);
        for sink in &sinks {
            if sink.tx.try_send(alert.clone()).is_err() {
                sink.counters
                    .dropped(1, "the sink's queue is full (it is too slow or stuck)");
            }
        }
    };
    loop {
        let deadline = folder.next_deadline();
        tokio::select! {
            alert = rx.recv() => {
                let Some(alert) = alert else { break };
                if let Some(alert) = folder.offer(alert, Instant::now()) {
                    fan_out(alert);
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                folder.expire(Instant::now()).into_iter().for_each(&fan_out);
            }
        }
        shared.folded.store(folder.folded, Ordering::Relaxed);
        shared.unfolded.store(folder.unfolded, Ordering::Relaxed);
    }
    folder.flush().into_iter().for_each(&fan_out);
    shared.folded.store(folder.folded, Ordering::Relaxed);
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// A spool left by a webhook that is no longer configured still holds
/// alerts nobody will deliver: say so rather than forget them silently.
fn warn_orphan_spools(root: &Path, configured: &[String]) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if configured.contains(&name) {
            continue;
        }
        let holds_alerts = std::fs::read_dir(entry.path()).is_ok_and(|files| {
            files
                .flatten()
                .any(|f| f.path().extension().is_some_and(|x| x == "seg"))
        });
        if holds_alerts {
            warn!(spool = %entry.path().display(),
                "undelivered alerts of a webhook that is no longer configured; \
                 configure its URL again to deliver them, or delete the directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{
        settings::{WebhookFormat, WebhookSink, WebhookUrl},
        tests::sample,
    };

    fn file_lines(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(FILE_NAME))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..250 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn repeats_reach_the_file_folded() {
        let dir = tempfile::tempdir().unwrap();
        let config = AlertsConfig {
            fold_window: Duration::from_millis(300),
            ..AlertsConfig::default()
        };
        let (alerts, done) = open_with(dir.path(), &config, Tuning::default()).unwrap();
        let alert = sample("unmanaged-key", "/usr/bin/python3");
        for _ in 0..3 {
            alerts.send(alert.clone());
        }
        alerts.send(sample("quarantine", "/bin/sh"));
        wait_for("the first two", || file_lines(dir.path()).len() == 2).await;
        wait_for("the fold update", || file_lines(dir.path()).len() == 3).await;
        let lines = file_lines(dir.path());
        assert_eq!(lines[0]["count"], 1);
        assert_eq!(lines[2]["id"], alert.id.as_str());
        assert_eq!(lines[2]["count"], 3);
        let stats = alerts.stats();
        assert_eq!((stats.received, stats.folded), (4, 2));
        drop(alerts);
        let stats = done.await.unwrap();
        assert_eq!(stats.sinks[0].sink, "file");
        assert_eq!(stats.sinks[0].delivered, 3);
    }

    #[tokio::test]
    async fn shutdown_flushes_open_folds() {
        let dir = tempfile::tempdir().unwrap();
        let (alerts, done) =
            open_with(dir.path(), &AlertsConfig::default(), Tuning::default()).unwrap();
        let alert = sample("unmanaged-key", "/usr/bin/python3");
        alerts.send(alert.clone());
        alerts.send(alert);
        drop(alerts);
        done.await.unwrap();
        let lines = file_lines(dir.path());
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["count"], 2);
    }

    #[tokio::test]
    async fn a_stuck_webhook_does_not_delay_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let config = AlertsConfig {
            webhooks: vec![WebhookSink {
                url: WebhookUrl::try_from(url).unwrap(),
                secret_env: None,
                secret_file: None,
                format: WebhookFormat::Json,
                timeout: Duration::from_secs(30),
                ca: None,
            }],
            ..AlertsConfig::default()
        };
        let tuning = Tuning {
            drain_grace: Duration::from_millis(100),
            ..Tuning::default()
        };
        let (alerts, done) = open_with(dir.path(), &config, tuning).unwrap();
        for i in 0..3 {
            alerts.send(sample("unmanaged-key", &format!("/bin/app{i}")));
        }
        wait_for("the file", || file_lines(dir.path()).len() == 3).await;
        drop(alerts);
        let stats = tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("shutdown is bounded")
            .unwrap();
        assert_eq!(stats.sinks[1].spool_depth, 3, "kept for the next start");
        held.abort();
    }

    #[tokio::test]
    async fn a_full_queue_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (alerts, _done) =
            open_with(dir.path(), &AlertsConfig::default(), Tuning::default()).unwrap();
        // The dispatcher runs on this (current-thread) runtime only when we
        // yield, so the queue fills.
        for i in 0..QUEUE + 5 {
            let mut alert = sample("unmanaged-key", "/bin/x");
            alert.id = format!("{i}");
            alerts.send(alert);
        }
        assert_eq!(alerts.stats().queue_full, 5);
    }

    #[test]
    fn a_webhook_configured_twice_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let hook = WebhookSink {
            url: WebhookUrl::try_from("http://127.0.0.1:9/x".to_string()).unwrap(),
            secret_env: None,
            secret_file: None,
            format: WebhookFormat::Json,
            timeout: Duration::from_secs(1),
            ca: None,
        };
        let config = AlertsConfig {
            webhooks: vec![hook.clone(), hook],
            ..AlertsConfig::default()
        };
        let err = open_with(dir.path(), &config, Tuning::default())
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("configured twice"), "{err:#}");
    }
}
