//! Where decision records go: a JSON-lines file or stdout, written by the
//! same non-blocking writer as the audit trail, so a slow or full disk
//! never stalls the event loop: records wait in a bounded backlog, and what
//! is lost is counted (`modelgate status`, the final counters).

use std::path::Path;

use tokio::task::JoinHandle;

use crate::{
    jsonl::{Change, JsonlLog, OpenError},
    record::Decision,
};

/// Decision records queued for the writer; past this they are dropped and
/// counted.
const QUEUE: usize = 65_536;

pub type Sink = JsonlLog<Decision>;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("creating {}, the directory of the events file", .0.display())]
    Directory(std::path::PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// `-` is stdout; anything else a file opened for append.
pub fn open(target: &str) -> Result<(Sink, JoinHandle<()>), SinkError> {
    // The writer logs the failure and the recovery itself; the count of
    // what could not wait is in the log's health.
    let on_change = |_: Change| {};
    if target == "-" {
        return Ok(JsonlLog::stdout("decision", QUEUE, on_change)?);
    }
    let path = Path::new(target);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|err| SinkError::Directory(parent.to_path_buf(), err))?;
    }
    Ok(JsonlLog::open(path, "decision", QUEUE, on_change)?)
}
