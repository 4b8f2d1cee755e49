//! `modelgate top`: live per-process model traffic from the running
//! agent, refreshed every second; keys to sort, group and filter. Plain
//! text cells and no mouse, so it works over SSH in 80x24.

mod model;
mod view;

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use self::model::{Group, Sort};
use crate::{
    control::{client::Client, status::Status},
    live::Snapshot,
};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// What one row stands for (key `g` cycles).
    #[arg(long, value_enum, default_value = "process")]
    group: Group,
    /// The column rows are ordered by (key `s` cycles).
    #[arg(long, value_enum, default_value = "tokens")]
    sort: Sort,
    /// Only rows whose key or model contains this (key `/`).
    #[arg(long, default_value = "")]
    filter: String,
    /// Time between refreshes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    interval: Duration,
}

/// What the keys change, and what the header says.
pub struct State {
    group: Group,
    sort: Sort,
    filter: String,
    editing: bool,
    paused: bool,
    agent: String,
    problem: Option<String>,
}

pub fn run(args: TopArgs, state_dir: &Path) -> Result<ExitCode> {
    let client = Client::new(state_dir);
    // Before taking over the screen: a stopped agent is a plain error.
    let status: Status = client.get("/v1/status")?.ok()?.json()?;
    let mut prev: Snapshot = client.get("/v1/top")?.ok()?.json()?;
    let mut cur = prev.clone();
    let mut state = State {
        group: args.group,
        sort: args.sort,
        filter: args.filter,
        editing: false,
        paused: false,
        agent: format!("v{}  policy {}", status.version, status.policy.version),
        problem: None,
    };
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                next = Instant::now() + args.interval;
                if !state.paused {
                    match client
                        .get("/v1/top")
                        .and_then(|r| r.ok()?.json::<Snapshot>())
                    {
                        Ok(snapshot) => {
                            prev = std::mem::replace(&mut cur, snapshot);
                            state.problem = None;
                        }
                        Err(err) => state.problem = Some(crate::errors::chain(&err)),
                    }
                }
            }
            let rows = model::rows(
                &prev,
                &cur,
                state.group,
                state.sort,
                &state.filter,
                &running,
            );
            terminal
                .draw(|frame| view::draw(frame, &state, &rows))
                .context("drawing the screen")?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait).context("reading the keyboard")?
                && let Event::Key(key) = event::read().context("reading the keyboard")?
                && key.kind == KeyEventKind::Press
                && !handle(&mut state, key.code, key.modifiers)
            {
                return Ok(());
            }
        }
    })();
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// Whether process `pid` still runs on this host (top runs where the agent
/// does, so the pids are the same).
fn running(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Applies a key; `false` to quit.
fn handle(state: &mut State, code: KeyCode, modifiers: KeyModifiers) -> bool {
    if code == KeyCode::Char('c') && modifiers.contains(KeyModifiers::CONTROL) {
        return false;
    }
    if state.editing {
        match code {
            KeyCode::Enter => state.editing = false,
            KeyCode::Esc => {
                state.editing = false;
                state.filter.clear();
            }
            KeyCode::Backspace => {
                state.filter.pop();
            }
            KeyCode::Char(c) => state.filter.push(c),
            _ => {}
        }
        return true;
    }
    match code {
        KeyCode::Char('q') | KeyCode::Esc => return false,
        KeyCode::Char('s') => state.sort = state.sort.next(),
        KeyCode::Char('g') => state.group = state.group.next(),
        KeyCode::Char('p') => state.paused = !state.paused,
        KeyCode::Char('/') => state.editing = true,
        _ => {}
    }
    true
}
