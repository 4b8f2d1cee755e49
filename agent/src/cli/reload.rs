//! `modelgate policy reload`: the running agent loads the policy files
//! again now, and says whether it took them.

use std::{path::Path, process::ExitCode};

use anyhow::Result;

use crate::control::{client::Client, status::Reloaded};

pub fn run(state_dir: &Path) -> Result<ExitCode> {
    let reply = Client::new(state_dir).post("/v1/reload")?;
    if reply.status == hyper::StatusCode::UNPROCESSABLE_ENTITY {
        eprintln!(
            "modelgate: the agent refused the policy; the previous one stays in force:\n{}",
            reply.text().trim_end()
        );
        return Ok(ExitCode::FAILURE);
    }
    let done: Reloaded = reply.ok()?.json()?;
    println!(
        "policy {} loaded: {} providers, {} rules (generation {})",
        done.version, done.providers, done.rules, done.generation
    );
    Ok(ExitCode::SUCCESS)
}
