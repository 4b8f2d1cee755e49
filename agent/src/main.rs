//! modelgate: finds, attributes and governs every connection to a model API
//! on this host.

mod alerts;
mod audit;
mod budget;
mod catalog;
mod classify;
mod cli;
mod config;
mod control;
mod daemon;
mod ebpf;
mod heartbeat;
mod identity;
mod jsonl;
#[path = "../../packaging/layout.rs"]
#[allow(
    dead_code,
    reason = "shared with the xtask, which alone uses the Debian control fields"
)]
mod layout;
mod metrics;
mod notify;
mod otlp;
mod policy;
mod proxy;
mod record;
mod sink;
mod trust;
mod usage;
mod watchdog;
mod yaml;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("modelgate: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
