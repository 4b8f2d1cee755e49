//! `modelgate policy check [DIR]`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::{budget::Prices, catalog::Catalog, config, policy::Policy};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory with endpoints.yaml and policy.yaml (default: the agent's).
    dir: Option<PathBuf>,
}

pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(config::default_policies_dir);
    let catalog = match Catalog::load(&dir) {
        Ok(catalog) => catalog,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Err(err) = Prices::load_dir(&dir) {
        eprintln!("{err}");
        return Ok(ExitCode::FAILURE);
    }
    match Policy::load(&dir, &catalog) {
        Ok(policy) => {
            println!(
                "{}: ok: {} providers, {} rules, default action {}",
                dir.display(),
                catalog.providers.len(),
                policy.rules.len(),
                policy.default_action
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}
