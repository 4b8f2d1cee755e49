//! When was the agent last enforcing? A heartbeat file in the state
//! directory, rewritten every tick and at a clean stop, lets the next start
//! report the gap (`enforcement-gap`) with both ends.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "heartbeat.json";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// Unix seconds of the last moment the agent was known to enforce.
    pub at: f64,
    /// True when written by a clean stop (SIGTERM), false by a tick.
    pub clean: bool,
}

pub struct Heartbeat {
    path: PathBuf,
}

/// The gap since the last run, if there was one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gap {
    pub stopped: SystemTime,
    pub started: SystemTime,
    pub clean: bool,
}

impl Heartbeat {
    /// Reads the previous run's last beat (None on a first start).
    pub fn open(state_dir: &Path) -> (Heartbeat, Option<Gap>) {
        let path = state_dir.join(FILE_NAME);
        let previous: Option<Beat> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let gap = previous.map(|beat| Gap {
            stopped: UNIX_EPOCH + Duration::from_secs_f64(beat.at.max(0.0)),
            started: SystemTime::now(),
            clean: beat.clean,
        });
        (Heartbeat { path }, gap)
    }

    pub fn beat(&self, clean: bool) -> std::io::Result<()> {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let temp = self.path.with_extension("tmp");
        std::fs::write(&temp, serde_json::to_vec(&Beat { at, clean })?)?;
        std::fs::rename(&temp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_sees_the_gap_since_the_last_beat() {
        let dir = tempfile::tempdir().unwrap();
        let (first, gap) = Heartbeat::open(dir.path());
        assert_eq!(gap, None, "first start: no gap");
        first.beat(true).unwrap();
        let (_, gap) = Heartbeat::open(dir.path());
        let gap = gap.expect("a gap after a stop");
        assert!(gap.clean);
        assert!(gap.started >= gap.stopped);
    }
}
