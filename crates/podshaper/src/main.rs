//! `podshaper`: one binary for the operator's CLI, the daemon and the
//! controller. Each subcommand is a thin layer in `cli/`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod cli;
mod signals;

#[derive(Debug, Parser)]
#[command(
    name = "podshaper",
    version,
    about = "Bandwidth limits for pods and cgroups, enforced with eBPF"
)]
struct Args {
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object a line) for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        env = "PODSHAPER_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The node daemon: loads and pins the shaper, serves the API (root).
    Daemon(cli::daemon::DaemonArgs),
    /// Watches Pods and turns their bandwidth annotations into limits.
    Controller(cli::controller::ControllerArgs),
    /// Limit a cgroup or pod through the daemon (attach, or change live).
    Attach(cli::client::AttachArgs),
    /// Remove a cgroup's or pod's limits through the daemon.
    Detach(cli::client::DetachArgs),
    /// Show one limited cgroup (or all) with its counters.
    Status(cli::client::StatusArgs),
    /// List every limited cgroup on the node.
    List(cli::client::ListArgs),
    /// Check this node's prerequisites: kernel, BPF, cgroup2, bpffs, qdiscs, other shapers.
    Doctor(cli::doctor::DoctorArgs),
    /// Remove everything podshaper put on this node (programs, links, pins, queues).
    Cleanup(cli::cleanup::CleanupArgs),
    /// Run a command under a bandwidth limit (no daemon needed).
    Run(cli::run::RunArgs),
    /// Show shaping live between two network namespaces (no cluster, no network).
    Demo(cli::demo::DemoArgs),
    /// Shaping accuracy against tc tbf and no limit, side by side
    /// (`bench daemon`: the daemon's attach latency, scale and memory;
    /// `bench pods`: many pods at once, each at its own limit).
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        command: Option<BenchCommand>,
        #[command(flatten)]
        args: cli::bench::BenchArgs,
    },
    /// Pods' limits, rates, drops and marks by name, from each pod's node
    /// (what `kubectl podshaper` runs: link this binary as kubectl-podshaper).
    Kubectl {
        #[command(subcommand)]
        command: cli::kubectl::KubectlCommand,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(cli::reference::CompletionsArgs),
    /// Print the manual page (or write one per command with --dir).
    Man(cli::reference::ManArgs),
    /// Traffic source and sink used by the demo, the benchmark and the tests.
    #[command(hide = true, subcommand)]
    Traffic(cli::traffic::TrafficCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Attach latency, time to limit many cgroups, RSS, concurrent clients.
    Daemon(cli::bench::BenchDaemonArgs),
    /// Many pods sending at once, each at its own limit, against tbf on the
    /// same veths: each pod's rate and the node's CPU per delivered Gbit.
    Pods(cli::bench::BenchPodsArgs),
}

fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the mask.
    let signals = match signals::Signals::block() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // A link named kubectl-podshaper on PATH: kubectl runs it for `kubectl podshaper`.
    if cli::kubectl::invoked_as_plugin() {
        let args = cli::kubectl::PluginArgs::parse();
        init_tracing("warn", LogFormat::Text);
        return match signals
            .unblock()
            .and_then(|()| cli::kubectl::run(args.command))
        {
            Ok(code) => code,
            Err(e) => {
                // as kubectl words its own failures
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    // The daemon reports what it does; commands speak only when something is wrong.
    init_tracing(
        if matches!(args.command, Command::Daemon(_) | Command::Controller(_)) {
            "info"
        } else {
            "warn"
        },
        args.log_format,
    );
    // Commands that leave nothing behind end on a signal as any program
    // does; the others decide what a signal means.
    let plain = |signals: signals::Signals| signals.unblock();
    let result = match args.command {
        Command::Daemon(a) => cli::daemon::run(a, signals),
        Command::Controller(a) => cli::controller::run(a, signals),
        Command::Attach(a) => plain(signals).and_then(|()| cli::client::attach(a)),
        Command::Detach(a) => plain(signals).and_then(|()| cli::client::detach(a)),
        Command::Status(a) => plain(signals).and_then(|()| cli::client::status(a)),
        Command::List(a) => plain(signals).and_then(|()| cli::client::list(a)),
        Command::Doctor(a) => plain(signals).and_then(|()| cli::doctor::run(a)),
        Command::Cleanup(a) => plain(signals).and_then(|()| cli::cleanup::run(a)),
        Command::Run(a) => cli::run::run(a, signals),
        Command::Demo(a) => cli::demo::run(a, signals),
        Command::Bench {
            command: Some(BenchCommand::Daemon(a)),
            ..
        } => cli::bench::run_daemon(a, signals.stop_flag("bench daemon")),
        Command::Bench {
            command: Some(BenchCommand::Pods(a)),
            ..
        } => cli::bench::run_pods(a, signals.stop_flag("bench pods")),
        Command::Bench {
            command: None,
            args,
        } => cli::bench::run(args, signals.stop_flag("bench")),
        Command::Kubectl { command } => plain(signals).and_then(|()| cli::kubectl::run(command)),
        Command::Completions(a) => {
            plain(signals).and_then(|()| cli::reference::completions(a, Args::command()))
        }
        Command::Man(a) => plain(signals).and_then(|()| cli::reference::man(a, Args::command())),
        Command::Traffic(c) => plain(signals).and_then(|()| cli::traffic::run(c)),
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

fn init_tracing(default: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PODSHAPER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // one JSON object a line: time, level, target, the event's fields
        LogFormat::Json => fmt.json().with_current_span(false).init(),
        // colours only for a terminal: a log file or journald gets plain text
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn completions_and_the_manual_name_every_command() {
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Args::command(),
            "podshaper",
            &mut bash,
        );
        let bash = String::from_utf8_lossy(&bash);
        let mut man = Vec::new();
        clap_mangen::Man::new(Args::command())
            .render(&mut man)
            .expect("the manual renders");
        let man = String::from_utf8_lossy(&man);
        for command in [
            "attach",
            "detach",
            "status",
            "list",
            "run",
            "daemon",
            "controller",
        ] {
            assert!(bash.contains(command), "bash completions lack {command}");
            assert!(man.contains(command), "the manual lacks {command}");
        }
        assert!(bash.contains("--log-format"));
    }
}
