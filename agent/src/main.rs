//! modelgate: finds, attributes and governs every connection to a model API
//! on this host.

mod audit;
mod catalog;
mod cli;
mod config;
mod daemon;
mod ebpf;
mod identity;
mod policy;
mod proxy;
mod record;
mod sink;
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
