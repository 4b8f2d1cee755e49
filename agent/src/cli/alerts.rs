//! `modelgate alerts`: the recent alerts from `<state>/alerts.jsonl` and its
//! rotated files. Reads the files only, so it works while the agent is
//! stopped (and on a copy of another host's state directory).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;

use super::table::table;
use crate::{alerts, config};

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Only alerts seen within this long, e.g. 30m, 1h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only alerts of this type (repeat for several), e.g. unmanaged-key.
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Print the alerts as JSON lines, as stored, instead of a table.
    #[arg(long)]
    json: bool,
    /// The agent's state directory.
    #[arg(long, value_name = "DIR", default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The alerts file, when agent.yaml puts it elsewhere (alerts.file.path).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

pub fn run(args: AlertsArgs) -> Result<ExitCode> {
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| args.state_dir.join(alerts::FILE_NAME));
    let files = alerts::file::log_files(&path);
    if files.is_empty() {
        if !path.parent().is_some_and(Path::exists) {
            bail!(
                "{} does not exist; pass the agent's --state-dir",
                path.parent().unwrap_or(Path::new("")).display()
            );
        }
        eprintln!("no alerts yet ({} does not exist)", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let (lines, unreadable) = read(&files);
    let cutoff = args.since.map(|since| SystemTime::now() - since);
    let selected: Vec<&(String, Value)> = lines
        .iter()
        .filter(|(_, alert)| keep(alert, cutoff, &args.types))
        .collect();
    let out = if args.json {
        // The lines as stored: same keys, same order.
        selected
            .iter()
            .map(|(line, _)| format!("{line}\n"))
            .collect::<String>()
    } else if selected.is_empty() {
        String::new()
    } else {
        table(
            HEADER,
            &selected.iter().map(|(_, a)| row(a)).collect::<Vec<_>>(),
        )
    };
    super::table::print(&out)?;
    if unreadable > 0 {
        eprintln!("{unreadable} line(s) could not be read as alerts and were skipped");
    }
    if selected.is_empty() && !args.json {
        eprintln!("no alerts match");
    }
    Ok(ExitCode::SUCCESS)
}

/// Every alert in `files` (oldest first) as its line and its value, and
/// how many lines were not alerts (a line cut by a crash, say).
fn read(files: &[PathBuf]) -> (Vec<(String, Value)>, usize) {
    let mut alerts = Vec::new();
    let mut unreadable = 0;
    for file in files {
        // A file rotated away between listing and reading is simply gone.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Value>(line) {
                Ok(value) if value.is_object() => alerts.push((line.to_string(), value)),
                _ => unreadable += 1,
            }
        }
    }
    (alerts, unreadable)
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A folded alert counts as recent when its last occurrence is.
fn keep(alert: &Value, cutoff: Option<SystemTime>, types: &[String]) -> bool {
    if !types.is_empty()
        && !types
            .iter()
            .any(|t| text(alert, "type") == Some(t.as_str()))
    {
        return false;
    }
    let Some(cutoff) = cutoff else {
        return true;
    };
    text(alert, "last_seen")
        .or_else(|| text(alert, "time"))
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .is_some_and(|seen| seen >= cutoff)
}

const HEADER: [&str; 7] = [
    "TIME",
    "SEVERITY",
    "TYPE",
    "COUNT",
    "WHO",
    "DESTINATION",
    "MESSAGE",
];

fn row(alert: &Value) -> [String; 7] {
    let identity = alert.get("identity");
    let field = |key: &str| identity.and_then(|i| text(i, key));
    let mut who = field("exe")
        .or_else(|| field("comm"))
        .unwrap_or("-")
        .to_string();
    let place = field("unit")
        .map(str::to_string)
        .or_else(|| field("container_id").map(|c| format!("container {}", &c[..c.len().min(12)])));
    if let Some(place) = place {
        who.push_str(&format!(" ({place})"));
    }
    let destination = text(alert, "host")
        .or_else(|| text(alert, "gen_ai.provider.name"))
        .unwrap_or("-");
    let time = text(alert, "time").unwrap_or("-");
    // To the second: the stored value keeps the microseconds.
    let time = match time.get(..19) {
        Some(seconds) if time.len() > 19 => format!("{seconds}Z"),
        _ => time.to_string(),
    };
    [
        time,
        text(alert, "severity").unwrap_or("-").to_string(),
        text(alert, "type").unwrap_or("-").to_string(),
        alert
            .get("count")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .to_string(),
        who,
        destination.to_string(),
        text(alert, "message").unwrap_or("").replace('\n', " "),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::alerts::file::rotated;

    fn alert(kind: &str, time: &str, count: u64) -> Value {
        json!({
            "id": "abc", "time": time, "type": kind, "severity": "high", "message": "m",
            "count": count, "first_seen": time, "last_seen": time,
            "gen_ai.provider.name": "openai", "host": "api.openai.com",
            "identity": {"pid": 1, "tgid": 1, "uid": 0, "gid": 0, "comm": "python3",
                         "exe": "/usr/bin/python3", "unit": "batch.service"}
        })
    }

    #[test]
    fn reads_rotated_files_oldest_first_and_skips_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let line = |k| format!("{}\n", alert(k, "2026-01-01T00:00:00.000001Z", 1));
        std::fs::write(rotated(&path, 2), line("a")).unwrap();
        std::fs::write(rotated(&path, 1), line("b") + "{\"torn\n").unwrap();
        std::fs::write(&path, line("c")).unwrap();
        let (alerts, unreadable) = read(&alerts::file::log_files(&path));
        let kinds: Vec<&str> = alerts.iter().filter_map(|(_, a)| text(a, "type")).collect();
        assert_eq!(kinds, ["a", "b", "c"]);
        assert_eq!(unreadable, 1);
    }

    #[test]
    fn filters_by_type_and_last_seen() {
        let now = SystemTime::now();
        let recent = crate::record::rfc3339(now - Duration::from_secs(60));
        let old = crate::record::rfc3339(now - Duration::from_secs(7200));
        let hour = Some(now - Duration::from_secs(3600));
        assert!(keep(&alert("quarantine", &recent, 1), hour, &[]));
        assert!(!keep(&alert("quarantine", &old, 1), hour, &[]));
        let mut folded = alert("quarantine", &old, 5);
        folded["last_seen"] = json!(recent);
        assert!(keep(&folded, hour, &[]), "its last occurrence is recent");
        let types = ["unmanaged-key".to_string()];
        assert!(!keep(&alert("quarantine", &recent, 1), None, &types));
        assert!(keep(&alert("unmanaged-key", &old, 1), None, &types));
    }

    #[test]
    fn the_table_says_who_where_and_how_often() {
        let rows = [row(&alert(
            "unmanaged-key",
            "2026-11-26T02:19:54.776405Z",
            3,
        ))];
        let table = table(HEADER, &rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TIME "), "{table}");
        assert!(lines[0].ends_with("MESSAGE"), "{table}");
        let cells: Vec<&str> = lines[1]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                "2026-11-26T02:19:54Z",
                "high",
                "unmanaged-key",
                "3",
                "/usr/bin/python3 (batch.service)",
                "api.openai.com",
                "m"
            ]
        );
    }
}
