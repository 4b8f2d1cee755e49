//! `modelgate alerts`: the recent alerts, from the running agent (which
//! knows where its configuration puts them), else from
//! `<state>/alerts.jsonl` and its rotated files, so it also works while the
//! agent is stopped (and on a copy of another host's state directory).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;

use super::table::table;
use crate::{
    alerts::{self, query::text},
    control::client::Client,
};

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
    /// Every stored line: a folded alert once per window with its count
    /// so far (default: the latest state of each alert id).
    #[arg(long)]
    all: bool,
    /// Read this alerts file instead of asking the agent (e.g. a copy of
    /// another host's).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

pub fn run(args: AlertsArgs, state_dir: &Path) -> Result<ExitCode> {
    let (selected, unreadable) = match &args.file {
        Some(file) => from_file(file, &args)?,
        None => match from_agent(state_dir, &args)? {
            Some(found) => found,
            None => from_file(&state_dir.join(alerts::FILE_NAME), &args)?,
        },
    };
    let selected = if args.all {
        selected
    } else {
        alerts::query::latest_per_id(selected)
    };
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

/// The running agent's alerts, wherever its configuration puts the file;
/// `None` when no agent runs.
fn from_agent(state_dir: &Path, args: &AlertsArgs) -> Result<Option<Selected>> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(since) = args.since {
        query.append_pair("since_ms", &crate::clock::ms_ago(since).to_string());
    }
    for kind in &args.types {
        query.append_pair("type", kind);
    }
    let path = format!("/v1/alerts?{}", query.finish());
    let Some(reply) = Client::new(state_dir).get_if_running(&path)? else {
        return Ok(None);
    };
    let reply = reply.ok()?;
    let unreadable = reply
        .headers
        .get("x-unreadable")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let lines = reply
        .text()
        .lines()
        .filter_map(|line| Some((line.to_string(), serde_json::from_str(line).ok()?)))
        .collect();
    Ok(Some((lines, unreadable)))
}

fn from_file(path: &Path, args: &AlertsArgs) -> Result<Selected> {
    if alerts::file::log_files(path).is_empty() {
        if !path.parent().is_some_and(Path::exists) {
            bail!(
                "{} does not exist; pass the agent's --state-dir",
                path.parent().unwrap_or(Path::new("")).display()
            );
        }
        eprintln!("no alerts yet ({} does not exist)", path.display());
        return Ok((Vec::new(), 0));
    }
    let cutoff = args.since.map(|since| SystemTime::now() - since);
    Ok(alerts::query::recent(path, cutoff, &args.types))
}

/// Alerts as stored lines and values, and how many lines were not alerts.
type Selected = (Vec<(String, Value)>, usize);

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
