//! `modelgate usage`: what each process, service, container, user, model
//! or provider used, from `<state>/usage.db`: through the running agent's
//! control socket (so members of the `modelgate` group may ask), else
//! straight from the store, so it also works while the agent is stopped.

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::table::table;
use crate::{
    control::client::Client,
    usage::{self, By, Summary},
};

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only what was seen within this long, e.g. 30m, 24h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "24h")]
    since: Duration,
    /// What one row stands for.
    #[arg(long, value_enum, default_value = "exe")]
    by: By,
    /// One JSON document (an array of rows) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV with a header line instead of a table.
    #[arg(long)]
    csv: bool,
}

const HEADER: [&str; 11] = [
    "KEY",
    "REQUESTS",
    "ERRORS",
    "IN TOKENS",
    "OUT TOKENS",
    "COST $",
    "P50 MS",
    "P95 MS",
    "LAST SEEN",
    "GOVERNED",
    "COVERAGE g/p/b/d",
];

pub fn run(args: UsageArgs, state_dir: &Path) -> Result<ExitCode> {
    let since = crate::clock::ms_ago(args.since);
    let by = args.by.to_possible_value().expect("no skipped variants");
    let client = Client::new(state_dir);
    let query = format!("/v1/usage?since_ms={since}&by={}", by.get_name());
    let rows: Vec<Summary> = match client.get_if_running(&query)? {
        Some(reply) => reply.ok()?.json()?,
        None => usage::query_file(&usage::path(state_dir), since, args.by)?,
    };
    let out = if args.json {
        let mut text = serde_json::to_string_pretty(&rows)?;
        text.push('\n');
        text
    } else if args.csv {
        csv(&rows)
    } else if rows.is_empty() {
        format!(
            "no model traffic in the last {}\n",
            humantime::format_duration(args.since)
        )
    } else {
        table(HEADER, &rows.iter().map(cells).collect::<Vec<_>>())
    };
    super::table::print(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1}"))
}

fn cells(s: &Summary) -> [String; 11] {
    let last = UNIX_EPOCH + Duration::from_millis(s.last_seen_ms.max(0) as u64);
    let last = crate::clock::rfc3339(last);
    [
        s.key.clone(),
        s.requests.to_string(),
        s.errors.to_string(),
        s.input_tokens.to_string(),
        s.output_tokens.to_string(),
        s.cost_usd.map_or("-".into(), |c| format!("{c:.4}")),
        ms(s.p50_ms),
        ms(s.p95_ms),
        last.get(..19).map_or(last.clone(), |t| format!("{t}Z")),
        format!("{:.0}%", s.coverage_pct()),
        format!(
            "{}/{}/{}/{}",
            s.governed, s.passthrough, s.blocked, s.direct
        ),
    ]
}

fn csv(rows: &[Summary]) -> String {
    let mut out = String::from(
        "key,requests,errors,input_tokens,output_tokens,cost_usd,p50_ms,p95_ms,\
         first_seen_ms,last_seen_ms,governed,passthrough,blocked,direct\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    for s in rows {
        // Keys are paths, unit and model names: quote, and double any quote.
        out.push_str(&format!(
            "\"{}\",{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            s.key.replace('"', "\"\""),
            s.requests,
            s.errors,
            s.input_tokens,
            s.output_tokens,
            opt(s.cost_usd),
            opt(s.p50_ms),
            opt(s.p95_ms),
            s.first_seen_ms,
            s.last_seen_ms,
            s.governed,
            s.passthrough,
            s.blocked,
            s.direct
        ));
    }
    out
}
