//! Reading the stored alerts back: for `modelgate alerts` directly from the
//! files, or through the control API from the agent that writes them.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::Value;

/// The alerts in the log at `path` and its rotated files, oldest first,
/// that pass the filters: each as its stored line and its value. Also how
/// many lines were not alerts (a line cut by a crash, say).
pub fn recent(
    path: &Path,
    cutoff: Option<SystemTime>,
    types: &[String],
) -> (Vec<(String, Value)>, usize) {
    let (mut lines, unreadable) = read(&super::file::log_files(path));
    lines.retain(|(_, alert)| keep(alert, cutoff, types));
    (lines, unreadable)
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

/// The latest state of each alert: a folded alert is stored once when it
/// first happens and again, with the count so far, each time its window
/// closes; only the last line of each id is kept, where that line is.
/// Alerts without an id are all kept.
pub fn latest_per_id(lines: Vec<(String, Value)>) -> Vec<(String, Value)> {
    let mut last = std::collections::HashMap::new();
    for (i, (_, alert)) in lines.iter().enumerate() {
        if let Some(id) = text(alert, "id").filter(|id| !id.is_empty()) {
            last.insert(id.to_string(), i);
        }
    }
    lines
        .into_iter()
        .enumerate()
        .filter(
            |(i, (_, alert))| match text(alert, "id").filter(|id| !id.is_empty()) {
                Some(id) => last.get(id) == Some(i),
                None => true,
            },
        )
        .map(|(_, line)| line)
        .collect()
}

pub fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::alerts::file::rotated;

    fn alert(kind: &str, time: &str, count: u64) -> Value {
        json!({
            "id": "abc", "time": time, "type": kind, "severity": "high", "message": "m",
            "count": count, "first_seen": time, "last_seen": time,
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
        let (alerts, unreadable) = read(&super::super::file::log_files(&path));
        let kinds: Vec<&str> = alerts.iter().filter_map(|(_, a)| text(a, "type")).collect();
        assert_eq!(kinds, ["a", "b", "c"]);
        assert_eq!(unreadable, 1);
    }

    #[test]
    fn a_folded_alert_is_listed_once_in_its_latest_state() {
        let line = |id: &str, count: u64| {
            let mut a = alert("bypass-attempt", "2026-01-01T00:00:00.000001Z", count);
            a["id"] = json!(id);
            (a.to_string(), a)
        };
        let mut no_id = alert("agent-tamper", "2026-01-01T00:00:00.000001Z", 1);
        no_id.as_object_mut().unwrap().remove("id");
        let lines = vec![
            line("a", 1),
            line("b", 1),
            (no_id.to_string(), no_id.clone()),
            line("a", 2),
            (no_id.to_string(), no_id),
            line("a", 5),
        ];
        let latest = latest_per_id(lines);
        let seen: Vec<(Option<&str>, u64)> = latest
            .iter()
            .map(|(_, a)| (text(a, "id"), a["count"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            seen,
            [(Some("b"), 1), (None, 1), (None, 1), (Some("a"), 5)],
            "one line per id, the latest, where it is; alerts without an id all kept"
        );
    }

    #[test]
    fn filters_by_type_and_last_seen() {
        let now = SystemTime::now();
        let recent = crate::clock::rfc3339(now - Duration::from_secs(60));
        let old = crate::clock::rfc3339(now - Duration::from_secs(7200));
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
}
