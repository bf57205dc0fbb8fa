//! `podshaper`: one binary for the operator's CLI (and, later, the daemon and
//! the controller). Each subcommand is a thin layer in `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
mod signals;

#[derive(Debug, Parser)]
#[command(
    name = "podshaper",
    version,
    about = "Bandwidth limits for pods and cgroups, enforced with eBPF"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command under a bandwidth limit (no daemon needed).
    Run(cli::run::RunArgs),
    /// Show shaping live between two network namespaces (no cluster, no network).
    Demo(cli::demo::DemoArgs),
    /// Traffic source and sink used by the demo, the benchmark and the tests.
    #[command(hide = true, subcommand)]
    Traffic(cli::traffic::TrafficCommand),
}

fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the mask.
    let signals = match signals::Signals::block() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    init_tracing();
    let args = Args::parse();
    let result = match args.command {
        Command::Run(a) => cli::run::run(a, signals),
        Command::Demo(a) => cli::demo::run(a, signals),
        Command::Traffic(c) => cli::traffic::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// One clear line on stderr: the error and its causes, joined.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("podshaper: {e:#}");
    ExitCode::FAILURE
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PODSHAPER_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
