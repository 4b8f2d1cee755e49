//! `cargo xtask`: developer tasks for modelgate.
//!
//! One module per command; `util` holds the few helpers they share (paths,
//! running a command with an error that says what to do).

mod bench;
mod bootstrap;
mod build_cmd;
mod cgroup;
mod fuzz;
#[path = "../../packaging/layout.rs"]
#[allow(
    dead_code,
    reason = "shared with the agent, which alone prints the descriptions"
)]
mod layout;
mod lint;
mod package;
mod run;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for modelgate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building the kernel programs needs (nightly rust-src,
    /// bpf-linker); does nothing for pieces already present.
    Bootstrap,
    /// Bootstrap, then build the agent and print the binary's path.
    Build(build_cmd::BuildArgs),
    /// Build, then run the agent (`modelgate run ARGS...`) as root.
    Run(run::RunArgs),
    /// Check prerequisites, build, then run the whole workspace's tests as
    /// root with MODELGATE_BIN set.
    Test(test::TestArgs),
    /// rustfmt check and clippy with warnings denied.
    Lint,
    /// Build a release agent and package it: target/package/modelgate_<version>_<arch>.deb
    /// and modelgate-<version>-<arch>.tar.gz (with install.sh).
    Package(package::PackageArgs),
    /// Build the libFuzzer targets in fuzz/ and run each for `--time`
    /// seconds, one after another; fails on a crash with its reproducer.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks that print figures against a baseline from the same run.
    Bench(bench::BenchArgs),
    /// Mixed traffic through the redirect for N minutes; RSS, file
    /// descriptors, map fill and losses at the start and the end (needs root).
    Soak(bench::SoakArgs),
    /// The bench's connect() loop, run in a child process placed in a cgroup.
    #[command(hide = true)]
    BenchClient(bench::ClientArgs),
    /// `bench proxy`'s HTTP client, run in a child process placed in a cgroup.
    #[command(hide = true)]
    BenchProxyClient(bench::ProxyClientArgs),
    /// `bench dns`'s load generator, run in a child process placed in a cgroup.
    #[command(hide = true)]
    BenchDnsClient(bench::DnsClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bootstrap => bootstrap::run(),
        Command::Build(args) => build_cmd::run(&args),
        Command::Run(args) => run::run(args),
        Command::Test(args) => test::run(&args),
        Command::Lint => lint::run(),
        Command::Package(args) => package::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Soak(args) => bench::soak(&args),
        Command::BenchClient(args) => bench::client(&args),
        Command::BenchProxyClient(args) => bench::proxy_client(&args),
        Command::BenchDnsClient(args) => bench::dns_client(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
