//! The file sink: JSON lines, rotated by size (`alerts.jsonl` →
//! `alerts.jsonl.1` … `.keep`, the highest number the oldest), so alerts
//! never fill the disk and the recent history stays readable by
//! `modelgate alerts` even while the agent is stopped.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::error;

use super::{Alert, stats::SinkCounters};

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    out: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            out: BufWriter::new(file),
            size,
        })
    }

    /// Appends one line (`line` without its newline). A line that does not
    /// fit in what is left of the file starts a new one; a line larger
    /// than `max_bytes` still gets a file of its own rather than being lost.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    /// Flushed and on disk: an alert that was acknowledged as written
    /// survives a crash of the host.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            // Shift .N-1 → .N … .1 → .2, the oldest falling off the end.
            for n in (1..self.keep).rev() {
                rename_if_present(&rotated(&self.path, n), &rotated(&self.path, n + 1))?;
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        // Files past `keep` from a larger setting before.
        let mut n = self.keep + 1;
        while fs::remove_file(rotated(&self.path, n)).is_ok() {
            n += 1;
        }
        self.out = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `alerts.jsonl.N`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The log and its rotated files that exist, oldest first.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = Vec::new();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned());
    if let (Ok(entries), Some(base)) = (fs::read_dir(dir), base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix(&base)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|n| n.parse::<u32>().ok())
            {
                numbered.push((n, entry.path()));
            }
        }
    }
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// Writes on a blocking thread: the disk never holds up the dispatcher.
pub fn spawn(
    mut file: RotatingFile,
    mut rx: mpsc::Receiver<Arc<Alert>>,
    counters: Arc<SinkCounters>,
) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let mut batch = Vec::new();
        while let Some(alert) = rx.blocking_recv() {
            batch.push(alert);
            // Batch while more are queued: one sync per batch.
            while let Ok(alert) = rx.try_recv() {
                batch.push(alert);
            }
            let mut written = 0u64;
            for alert in batch.drain(..) {
                let result = serde_json::to_vec(&*alert)
                    .map_err(io::Error::from)
                    .and_then(|line| file.write_line(&line));
                match result {
                    Ok(()) => written += 1,
                    Err(err) => {
                        error!(error = %err, path = %file.path.display(), "cannot write an alert");
                        counters.dropped(1, "the alerts file cannot be written");
                    }
                }
            }
            match file.sync() {
                Ok(()) => {
                    counters
                        .delivered
                        .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
                }
                Err(err) => {
                    error!(error = %err, path = %file.path.display(), "cannot sync the alerts file");
                    counters.dropped(written, "the alerts file cannot be synced");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        // Each line is 10 bytes with its newline: 3 per 30-byte file.
        let mut file = RotatingFile::open(&path, 30, 2).unwrap();
        for i in 0..10 {
            file.write_line(format!("line-{i:04}").as_bytes()).unwrap();
        }
        file.sync().unwrap();
        assert_eq!(lines(&path), ["line-0009"]);
        assert_eq!(
            lines(&rotated(&path, 1)),
            ["line-0006", "line-0007", "line-0008"]
        );
        assert_eq!(
            lines(&rotated(&path, 2)),
            ["line-0003", "line-0004", "line-0005"]
        );
        assert!(!rotated(&path, 3).exists(), "only keep=2 rotated files");
        assert_eq!(
            log_files(&path),
            [rotated(&path, 2), rotated(&path, 1), path.clone()]
        );
    }

    #[test]
    fn reopening_continues_the_size_count_and_large_lines_fit_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        fs::write(&path, "0123456789012345678\n").unwrap();
        let mut file = RotatingFile::open(&path, 30, 1).unwrap();
        file.write_line(b"0123456789").unwrap(); // 20 + 11 > 30: rotates
        file.write_line(&[b'x'; 50]).unwrap(); // larger than max: alone
        file.write_line(b"y").unwrap();
        file.sync().unwrap();
        assert_eq!(lines(&path), ["y"]);
        assert_eq!(lines(&rotated(&path, 1)), ["x".repeat(50)]);
    }

    #[test]
    fn keep_zero_truncates_and_stale_rotations_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        fs::write(rotated(&path, 1), "old\n").unwrap();
        fs::write(rotated(&path, 2), "older\n").unwrap();
        let mut file = RotatingFile::open(&path, 5, 0).unwrap();
        file.write_line(b"abcd").unwrap();
        file.write_line(b"efgh").unwrap();
        file.sync().unwrap();
        assert_eq!(lines(&path), ["efgh"]);
        assert_eq!(log_files(&path), std::slice::from_ref(&path));
    }
}
