//! Where decision records go: a JSON-lines file or stdout.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result};
use serde::Serialize;
use tracing::warn;

pub struct Sink {
    out: BufWriter<Box<dyn Write + Send>>,
    /// Records that could not be written; reported, never silent.
    pub failed: u64,
    pub written: u64,
}

impl Sink {
    /// `-` is stdout; anything else a file opened for append.
    pub fn open(target: &str) -> Result<Sink> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(io::stdout())
        } else {
            let path = Path::new(target);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the events file {}", path.display()))?,
            )
        };
        Ok(Sink {
            out: BufWriter::new(out),
            failed: 0,
            written: 0,
        })
    }

    pub fn write<T: Serialize>(&mut self, record: &T) {
        let result = serde_json::to_writer(&mut self.out, record)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match result {
            Ok(()) => self.written += 1,
            Err(err) => {
                self.failed += 1;
                if self.failed == 1 || self.failed.is_power_of_two() {
                    warn!(error = %err, failed = self.failed, "cannot write a decision record");
                }
            }
        }
    }

    /// Called after each batch of events, so records reach the file promptly
    /// without a syscall per record.
    pub fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            self.failed += 1;
            warn!(error = %err, "cannot flush decision records");
        }
    }
}
