//! The `modelgate` binary: everything lives in the library; see `lib.rs`.

use std::process::ExitCode;

use clap::Parser;
use modelgate::cli;

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
