//! `budgets.json`: the counters on disk, so a restart keeps the day's counts.
//!
//! Loading never fails the agent: a file it cannot use is set aside as
//! `budgets.json.corrupt` (for a human to look at, and so the next save
//! does not destroy it) and the budgets start empty with a warning.

use std::{
    collections::hash_map::Entry as Slot,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Map, window::Counters};

/// Bumped when the format changes incompatibly; a file of another version
/// is set aside like a corrupt one (an older agent must not misread it).
const VERSION: u32 = 1;

/// Far above any real file (a key is ~100 bytes); refusing larger ones
/// keeps a runaway file from costing the agent its memory at start.
const MAX_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    entries: Vec<Entry>,
}

/// One (rule, key); flat so the file reads well. Days and minutes are
/// counted from the Unix epoch, in UTC.
#[derive(Serialize, Deserialize)]
struct Entry {
    rule: String,
    key: String,
    day: u64,
    requests_day: u64,
    tokens_day: u64,
    usd_day: f64,
    minute: u64,
    requests_minute: u64,
}

/// Fills `map` from the file at `path`; returns a warning for the caller to
/// log when the file was there but could not be used.
pub(super) fn load(path: &Path, map: &mut Map) -> Option<String> {
    let bytes = match read_capped(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
        Err(err) => {
            return Some(format!(
                "cannot read {}: {err}; budgets start empty",
                path.display()
            ));
        }
    };
    let file = match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(file) if file.version == VERSION => file,
        Ok(file) => {
            let why = format!("version {} (this agent reads {VERSION})", file.version);
            return Some(set_aside(path, &why));
        }
        Err(err) => return Some(set_aside(path, &err.to_string())),
    };
    let mut duplicates = 0;
    for entry in file.entries {
        let counters = Counters {
            day: entry.day,
            requests_day: entry.requests_day,
            tokens_day: entry.tokens_day,
            // JSON has no NaN or infinity; a negative sum can only be a hand
            // edit, and would hand out extra budget.
            usd_day: entry.usd_day.max(0.0),
            minute: entry.minute,
            requests_minute: entry.requests_minute,
        };
        match map.entry(entry.rule).or_default().entry(entry.key) {
            Slot::Vacant(slot) => {
                slot.insert(counters);
            }
            Slot::Occupied(_) => duplicates += 1,
        }
    }
    (duplicates > 0).then(|| {
        format!(
            "{}: {duplicates} duplicate entries ignored (the first of each kept)",
            path.display()
        )
    })
}

fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn set_aside(path: &Path, why: &str) -> String {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    let kept = match fs::rename(path, &aside) {
        Ok(()) => format!("moved to {}", aside.display()),
        Err(err) => format!("could not move it aside: {err}"),
    };
    format!(
        "cannot use {}: {why}; budgets start empty ({kept})",
        path.display()
    )
}

/// The serialized budgets and where they go, written by [`SaveJob::write`]
/// so the caller can do the I/O without holding the budgets' lock.
#[derive(Debug, Clone)]
pub struct SaveJob {
    path: PathBuf,
    bytes: Vec<u8>,
}

pub(super) fn job(path: &Path, map: &Map) -> SaveJob {
    let mut entries: Vec<Entry> = map
        .iter()
        .flat_map(|(rule, keys)| keys.iter().map(move |(key, c)| entry(rule, key, c)))
        .collect();
    // Sorted so the file diffs well and is the same for the same state.
    entries.sort_by(|a, b| (&a.rule, &a.key).cmp(&(&b.rule, &b.key)));
    let file = StateFile {
        version: VERSION,
        entries,
    };
    // Every field is an integer, a string or a finite float (record_usage
    // and load keep it so), so this cannot fail; an empty job would only
    // make the write fail below, never write garbage.
    let bytes = serde_json::to_vec(&file).unwrap_or_default();
    SaveJob {
        path: path.to_path_buf(),
        bytes,
    }
}

fn entry(rule: &str, key: &str, c: &Counters) -> Entry {
    Entry {
        rule: rule.to_string(),
        key: key.to_string(),
        day: c.day,
        requests_day: c.requests_day,
        tokens_day: c.tokens_day,
        usd_day: c.usd_day,
        minute: c.minute,
        requests_minute: c.requests_minute,
    }
}

impl SaveJob {
    /// Replaces the file atomically: a temporary file beside it, fsync,
    /// rename, fsync of the directory. A crash leaves the old file or the
    /// new one, never half of one.
    pub fn write(&self) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Err(io::Error::other("budgets could not be serialized"));
        }
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = write_synced(&tmp, &self.bytes).and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(err) = written {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        // Makes the rename itself durable. Best effort: some filesystems
        // refuse to fsync a directory, and the data is already in place.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // 0600: the keys name executables, users and containers of this host.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
