//! An append-only JSON-lines file fed through a bounded queue: writers
//! never wait on the disk, a full queue is counted, and everything queued
//! is flushed and synced when the last sender is gone.
//!
//! A disk that fills up or turns read-only does not lose records: they wait
//! in a bounded backlog and are written, in order and never torn, once the
//! disk takes writes again; past the bound they are counted as lost. The
//! [`Health`] it shares says whether writes are failing now, so the proxy
//! can refuse requests it could not audit (`audit_failure: block`).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    sync::mpsc::{self, error::TryRecvError},
    task::JoinHandle,
};
use tracing::{error, info, warn};

/// Bytes of records kept while the disk refuses them.
const MAX_BACKLOG: usize = 64 << 20;
/// Bytes serialized per write while records are queued.
const BATCH_BYTES: usize = 1 << 20;
/// How often a failing disk is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Puts the calling thread behind the proxy in the CPU queue: on a busy
/// core, a writer must not hold up requests, only be a little late.
pub fn lower_priority() {
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// What the writer says about the disk.
#[derive(Debug, Default)]
pub struct Health {
    /// Writes are failing now.
    pub failing: AtomicBool,
    /// Records waiting for the disk.
    pub backlog: AtomicU64,
    /// Records given up on: the backlog was full, or the agent stopped
    /// before the disk came back.
    pub lost: AtomicU64,
    /// Records on disk since start.
    pub written: AtomicU64,
}

/// A change of the disk's state, for the owner to alert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Failing(String),
    Recovered { written_late: u64 },
}

pub struct JsonlLog<T> {
    tx: mpsc::Sender<T>,
    what: &'static str,
    /// Records refused because the queue was full.
    pub dropped: Arc<AtomicU64>,
    pub health: Arc<Health>,
}

impl<T> Clone for JsonlLog<T> {
    fn clone(&self) -> Self {
        JsonlLog {
            tx: self.tx.clone(),
            what: self.what,
            dropped: self.dropped.clone(),
            health: self.health.clone(),
        }
    }
}

/// A log could not be opened for writing.
#[derive(Debug, thiserror::Error)]
#[error("opening the {what} log {target}")]
pub struct OpenError {
    what: &'static str,
    /// The file, or standard output.
    target: String,
    #[source]
    source: std::io::Error,
}

type Opened<T> = Result<(JsonlLog<T>, JoinHandle<()>), OpenError>;

impl<T: Serialize + Send + 'static> JsonlLog<T> {
    /// Opens `path` for append and starts its writer. `what` names the log
    /// in messages ("audit"); `on_change` hears when writes start failing
    /// and when they work again.
    pub fn open(
        path: &Path,
        what: &'static str,
        queue: usize,
        on_change: impl Fn(Change) + Send + 'static,
    ) -> Opened<T> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| OpenError {
                what,
                target: path.display().to_string(),
                source,
            })?;
        Ok(Self::start(file, what, queue, on_change))
    }

    /// The same writer on standard output (a pipe or the journal's socket
    /// as often as a terminal).
    pub fn stdout(
        what: &'static str,
        queue: usize,
        on_change: impl Fn(Change) + Send + 'static,
    ) -> Opened<T> {
        use std::os::fd::AsFd;
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| OpenError {
                what,
                target: "on standard output (duplicating its descriptor)".into(),
                source,
            })?;
        Ok(Self::start(File::from(fd), what, queue, on_change))
    }

    fn start(
        file: File,
        what: &'static str,
        queue: usize,
        on_change: impl Fn(Change) + Send + 'static,
    ) -> (JsonlLog<T>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<T>(queue);
        let health = Arc::new(Health::default());
        let writer = Writer {
            file,
            what,
            pending: Vec::new(),
            lines: 0,
            health: health.clone(),
            on_change: Box::new(on_change),
            late: 0,
        };
        let task = tokio::task::spawn_blocking(move || writer.run(rx));
        (
            JsonlLog {
                tx,
                what,
                dropped: Arc::new(AtomicU64::new(0)),
                health,
            },
            task,
        )
    }

    /// Records lost on the way: refused by a full queue, or given up on by
    /// the writer.
    pub fn lost(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.health.lost.load(Ordering::Relaxed)
    }

    /// Records on disk since start.
    pub fn written(&self) -> u64 {
        self.health.written.load(Ordering::Relaxed)
    }

    pub fn send(&self, record: T) {
        if self.tx.try_send(record).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "the {} queue is full; records are being dropped", self.what
                );
            }
        }
    }
}

struct Writer {
    file: File,
    what: &'static str,
    /// Serialized lines not on disk yet; a failed write leaves exactly the
    /// bytes the kernel did not take, so a line is never torn.
    pending: Vec<u8>,
    lines: u64,
    health: Arc<Health>,
    on_change: Box<dyn Fn(Change) + Send>,
    /// Records written after waiting out a failure.
    late: u64,
}

impl Writer {
    fn run<T: Serialize>(mut self, mut rx: mpsc::Receiver<T>) {
        lower_priority();
        loop {
            let failing = self.health.failing.load(Ordering::Relaxed);
            // Healthy: sleep until a record comes. Failing: wake to retry.
            let first = if failing {
                match rx.try_recv() {
                    Ok(record) => Some(record),
                    Err(TryRecvError::Empty) => {
                        std::thread::sleep(RETRY);
                        None
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.blocking_recv() {
                    Some(record) => Some(record),
                    None => break,
                }
            };
            if let Some(record) = first {
                let start = self.pending.len();
                self.add(&record);
                // Batch while more are queued, a bounded batch at a time:
                // draining a whole backed-up queue at once would grow the
                // buffer by tens of MiB.
                while self.pending.len() - start < BATCH_BYTES
                    && let Ok(record) = rx.try_recv()
                {
                    self.add(&record);
                }
            }
            self.write();
        }
        self.write();
        if self.lines > 0 {
            self.health.lost.fetch_add(self.lines, Ordering::Relaxed);
            error!(
                lost = self.lines,
                "the {} log could not be written before the agent stopped; records lost", self.what
            );
        } else if self.file.metadata().is_ok_and(|m| m.is_file())
            && let Err(err) = self.file.sync_all()
        {
            error!(error = %err, "cannot sync the {} log at shutdown", self.what);
        }
    }

    fn add<T: Serialize>(&mut self, record: &T) {
        if self.pending.len() > MAX_BACKLOG {
            let lost = self.health.lost.fetch_add(1, Ordering::Relaxed) + 1;
            if lost.is_power_of_two() {
                error!(
                    lost,
                    "the {} log's backlog is full while the disk refuses writes; records are lost",
                    self.what
                );
            }
            return;
        }
        match serde_json::to_writer(&mut self.pending, record) {
            Ok(()) => {
                self.pending.push(b'\n');
                self.lines += 1;
            }
            Err(err) => error!(error = %err, "cannot encode a {} record", self.what),
        }
        self.health.backlog.store(self.lines, Ordering::Relaxed);
    }

    /// Writes what is pending; on failure keeps the unwritten bytes.
    fn write(&mut self) {
        let mut written = 0;
        let mut failure = None;
        while written < self.pending.len() {
            match self.file.write(&self.pending[written..]) {
                Ok(0) => {
                    failure = Some("the disk took no bytes".to_string());
                    break;
                }
                Ok(n) => written += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    failure = Some(err.to_string());
                    break;
                }
            }
        }
        // Whole lines written: the newlines in the written part.
        let done = self.pending[..written]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
        self.pending.drain(..written);
        // A backlog from a failure or a stalled disk is written: give its
        // memory back.
        if self.pending.is_empty() && self.pending.capacity() > 2 * BATCH_BYTES {
            self.pending.shrink_to(BATCH_BYTES);
        }
        self.lines -= done;
        self.health.written.fetch_add(done, Ordering::Relaxed);
        self.health.backlog.store(self.lines, Ordering::Relaxed);
        let was_failing = self.health.failing.load(Ordering::Relaxed);
        if was_failing && failure.is_some() {
            self.late += done;
        }
        match failure {
            Some(err) => {
                if !was_failing {
                    self.health.failing.store(true, Ordering::Relaxed);
                    error!(error = %err, "cannot write the {} log; keeping records until it can be written", self.what);
                    (self.on_change)(Change::Failing(err));
                }
            }
            None => {
                if was_failing {
                    self.late += done;
                    self.health.failing.store(false, Ordering::Relaxed);
                    info!(
                        written_late = self.late,
                        "the {} log is written again", self.what
                    );
                    (self.on_change)(Change::Recovered {
                        written_late: self.late,
                    });
                    self.late = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A writer on /dev/full: every write fails with ENOSPC.
    fn on_a_full_disk(on_change: Box<dyn Fn(Change) + Send>) -> Writer {
        Writer {
            file: OpenOptions::new().write(true).open("/dev/full").unwrap(),
            what: "test",
            pending: Vec::new(),
            lines: 0,
            health: Arc::new(Health::default()),
            on_change,
            late: 0,
        }
    }

    /// The disk comes back: another file stands in for it.
    fn disk_back(path: &Path) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_failed_write_keeps_exactly_the_bytes_the_disk_did_not_take() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = changes.clone();
        let mut writer = on_a_full_disk(Box::new(move |c| seen.lock().unwrap().push(c)));
        writer.add(&serde_json::json!({"n": 1}));
        writer.add(&serde_json::json!({"n": 2}));
        writer.write();
        assert!(writer.health.failing.load(Ordering::Relaxed));
        assert_eq!(writer.lines, 2);
        assert_eq!(writer.health.backlog.load(Ordering::Relaxed), 2);
        writer.file = disk_back(&path);
        writer.write();
        assert!(!writer.health.failing.load(Ordering::Relaxed));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        let changes = changes.lock().unwrap();
        assert!(matches!(changes[0], Change::Failing(_)), "{changes:?}");
        assert_eq!(changes[1], Change::Recovered { written_late: 2 });
    }

    #[test]
    fn a_written_backlog_gives_its_memory_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut writer = on_a_full_disk(Box::new(|_| {}));
        let record = serde_json::json!({"pad": "x".repeat(1000)});
        for _ in 0..4096 {
            writer.add(&record);
        }
        writer.write();
        assert!(
            writer.pending.capacity() > 4 * BATCH_BYTES,
            "a 4 MiB backlog"
        );
        writer.file = disk_back(&path);
        writer.write();
        assert!(writer.pending.is_empty());
        assert!(
            writer.pending.capacity() <= BATCH_BYTES,
            "capacity {} kept after the backlog was written",
            writer.pending.capacity()
        );
    }
}
