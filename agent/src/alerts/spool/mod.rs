//! A webhook's on-disk queue: what makes delivery survive receiver outages
//! and agent restarts.
//!
//! Layout of `<state>/spool/<sink>/`:
//! - `<first-seq>.seg`: segment files of records `<seq> <id> <body>\n`
//!   (the body is one line of JSON), appended and fsync'd before anyone
//!   is told the alert is queued; a new segment starts past
//!   `segment_bytes`;
//! - `cursor`: the last acknowledged sequence number, replaced atomically
//!   after each delivery. A crash between a delivery and its cursor write
//!   delivers that alert again: at least once, never lost.
//!
//! Fully delivered segments are deleted. Past `max_bytes` the oldest
//! segment goes, its undelivered records counted as dropped.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Seek, SeekFrom, Write},
    os::{fd::AsRawFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use tracing::warn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub segment_bytes: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_bytes: 100 * 1024 * 1024,
        segment_bytes: 1024 * 1024,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub id: String,
    pub body: String,
    /// Where the record after this one starts: (segment, offset).
    next: (u64, u64),
}

struct Segment {
    first: u64,
    /// The last sequence number written; `first - 1` while empty.
    last: u64,
    bytes: u64,
}

pub struct Spool {
    dir: PathBuf,
    limits: Limits,
    segments: VecDeque<Segment>,
    /// Append handle of the newest segment.
    writer: Option<File>,
    next_seq: u64,
    acked: u64,
    /// Where the first unacknowledged record starts, so a peek does not
    /// rescan the segment from its beginning.
    hint: Option<(u64, u64)>,
    /// Held for the spool's lifetime: one agent per spool.
    _lock: File,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, cutting a record torn by a
    /// crash off the newest segment.
    pub fn open(dir: &Path, limits: Limits) -> io::Result<Spool> {
        // Alert bodies name processes and users: for the agent's eyes.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let lock = File::create(dir.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::other(format!(
                "{} is in use by another modelgate process",
                dir.display()
            )));
        }
        let acked = match fs::read_to_string(dir.join("cursor")) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(dir = %dir.display(), "unreadable spool cursor; delivering the whole spool again");
                0
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
            Err(err) => return Err(err),
        };
        let mut firsts: Vec<u64> = fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let (last, bytes) = match firsts.get(i + 1) {
                Some(next) => (next - 1, fs::metadata(&path)?.len()),
                None => recover_tail(&path, first)?,
            };
            segments.push_back(Segment { first, last, bytes });
        }
        let newest = segments.back().map_or(0, |s| s.last);
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            limits,
            segments,
            writer: None,
            next_seq: newest.max(acked) + 1,
            acked,
            hint: None,
            _lock: lock,
        };
        spool.remove_delivered()?;
        if let Some(segment) = spool.segments.back() {
            spool.writer = Some(
                OpenOptions::new()
                    .append(true)
                    .open(segment_path(dir, segment.first))?,
            );
        }
        Ok(spool)
    }

    /// Appends `(id, body)` records and syncs them to disk. Returns how
    /// many undelivered records were pushed out to stay within `max_bytes`.
    pub fn append(&mut self, records: &[(String, String)]) -> io::Result<u64> {
        for (id, body) in records {
            let full = self
                .segments
                .back()
                .is_none_or(|s| s.bytes >= self.limits.segment_bytes);
            if full || self.writer.is_none() {
                self.start_segment()?;
            }
            // Ids are hex and bodies compact JSON; guard the framing anyway.
            let id: String = id.chars().filter(|c| !c.is_whitespace()).collect();
            let line = format!(
                "{} {} {}\n",
                self.next_seq,
                if id.is_empty() { "-" } else { &id },
                body.replace('\n', " ")
            );
            let (Some(writer), Some(segment)) = (self.writer.as_mut(), self.segments.back_mut())
            else {
                return Err(io::Error::other("spool segment missing"));
            };
            writer.write_all(line.as_bytes())?;
            segment.last = self.next_seq;
            segment.bytes += line.len() as u64;
            self.next_seq += 1;
        }
        if let Some(writer) = &self.writer {
            writer.sync_data()?;
        }
        self.enforce_bound()
    }

    /// The oldest undelivered record.
    pub fn peek(&mut self) -> io::Result<Option<Entry>> {
        let want = self.acked + 1;
        for segment in self.segments.iter().filter(|s| s.last >= want) {
            let mut offset = match self.hint {
                Some((first, offset)) if first == segment.first => offset,
                _ => 0,
            };
            let mut file = File::open(segment_path(&self.dir, segment.first))?;
            file.seek(SeekFrom::Start(offset))?;
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                offset += n as u64;
                let Some((seq, id, body)) = parse(&line) else {
                    warn!(dir = %self.dir.display(), "skipping a damaged spool record");
                    continue;
                };
                if seq >= want {
                    return Ok(Some(Entry {
                        seq,
                        id: id.to_string(),
                        body: body.to_string(),
                        next: (segment.first, offset),
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Marks `entry` (and everything before it) delivered. An entry the
    /// bound pushed out meanwhile is already behind the cursor: the cursor
    /// never moves back.
    pub fn ack(&mut self, entry: &Entry) -> io::Result<()> {
        if entry.seq <= self.acked {
            return Ok(());
        }
        self.set_acked(entry.seq)?;
        self.hint = Some(entry.next);
        self.remove_delivered()
    }

    /// False once `seq` was delivered or pushed out by the bound.
    pub fn is_pending(&self, seq: u64) -> bool {
        seq > self.acked
    }

    /// Records queued and not yet delivered.
    pub fn depth(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.acked)
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    fn start_segment(&mut self) -> io::Result<()> {
        let first = self.next_seq;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, first))?;
        // The new name must survive a crash, or its records would vanish.
        File::open(&self.dir)?.sync_all()?;
        if let Some(old) = self.writer.replace(file) {
            old.sync_data()?;
        }
        self.segments.push_back(Segment {
            first,
            last: first - 1,
            bytes: 0,
        });
        Ok(())
    }

    fn enforce_bound(&mut self) -> io::Result<u64> {
        let mut dropped = 0;
        while self.bytes() > self.limits.max_bytes && self.segments.len() > 1 {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            let (first, last) = (oldest.first, oldest.last);
            dropped += (last + 1).saturating_sub(first.max(self.acked + 1));
            if last > self.acked {
                self.set_acked(last)?;
            }
            self.segments.pop_front();
            fs::remove_file(segment_path(&self.dir, first))?;
        }
        Ok(dropped)
    }

    fn set_acked(&mut self, seq: u64) -> io::Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        let mut file = File::create(&tmp)?;
        writeln!(file, "{seq}")?;
        file.sync_data()?;
        fs::rename(&tmp, self.dir.join("cursor"))?;
        self.acked = seq;
        Ok(())
    }

    fn remove_delivered(&mut self) -> io::Result<()> {
        while let Some(segment) = self.segments.front() {
            let empty = segment.last < segment.first;
            if segment.last > self.acked || (empty && self.segments.len() == 1) {
                break;
            }
            let first = segment.first;
            if self.segments.len() == 1 {
                // The newest too: the next append starts a fresh segment.
                self.writer = None;
            }
            self.segments.pop_front();
            fs::remove_file(segment_path(&self.dir, first))?;
            if self.hint.is_some_and(|(f, _)| f == first) {
                self.hint = None;
            }
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn parse(line: &str) -> Option<(u64, &str, &str)> {
    let mut parts = line.trim_end_matches('\n').splitn(3, ' ');
    let seq = parts.next()?.parse().ok()?;
    Some((seq, parts.next()?, parts.next()?))
}

/// Scans the newest segment for its last complete record and cuts off a
/// torn one (a crash mid-append). Returns (last seq, bytes kept).
fn recover_tail(path: &Path, first: u64) -> io::Result<(u64, u64)> {
    let mut reader = BufReader::new(File::open(path)?);
    let (mut last, mut good) = (first - 1, 0u64);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        match parse(&line) {
            Some((seq, _, _)) => last = seq,
            None => break,
        }
        good += n as u64;
    }
    let file = OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() != good {
        warn!(path = %path.display(), "cutting a torn record off the spool");
        file.set_len(good)?;
        file.sync_data()?;
    }
    Ok((last, good))
}

#[cfg(test)]
mod tests;
