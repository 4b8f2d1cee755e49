//! An append-only JSON-lines file fed through a bounded queue: writers
//! never wait on the disk, a full queue is counted, and everything queued
//! is flushed and synced when the last sender is gone.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, warn};

/// Puts the calling thread behind the proxy in the CPU queue: on a busy
/// core, a writer must not hold up requests, only be a little late.
pub fn lower_priority() {
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

pub struct JsonlLog<T> {
    tx: mpsc::Sender<T>,
    what: &'static str,
    /// Records refused because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

impl<T> Clone for JsonlLog<T> {
    fn clone(&self) -> Self {
        JsonlLog {
            tx: self.tx.clone(),
            what: self.what,
            dropped: self.dropped.clone(),
        }
    }
}

impl<T: Serialize + Send + 'static> JsonlLog<T> {
    /// Opens `path` for append and starts its writer. `what` names the log
    /// in messages ("audit", "alert").
    pub fn open(
        path: &Path,
        what: &'static str,
        queue: usize,
    ) -> Result<(JsonlLog<T>, JoinHandle<()>)> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the {what} log {}", path.display()))?;
        let (tx, mut rx) = mpsc::channel::<T>(queue);
        let writer = tokio::task::spawn_blocking(move || {
            lower_priority();
            let mut out = BufWriter::new(file);
            let mut failed = 0u64;
            let mut write = |out: &mut BufWriter<std::fs::File>, record: &T| {
                let result = serde_json::to_writer(&mut *out, record)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"));
                if let Err(err) = result {
                    failed += 1;
                    error!(error = %err, failed, "cannot write a {what} record");
                }
            };
            while let Some(record) = rx.blocking_recv() {
                write(&mut out, &record);
                // Batch while more are queued; flush when the queue is empty.
                while let Ok(record) = rx.try_recv() {
                    write(&mut out, &record);
                }
                if let Err(err) = out.flush() {
                    error!(error = %err, "cannot flush the {what} log");
                }
            }
            if let Err(err) = out.flush().and_then(|()| out.get_ref().sync_all()) {
                error!(error = %err, "cannot sync the {what} log at shutdown");
            }
        });
        Ok((
            JsonlLog {
                tx,
                what,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            writer,
        ))
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
