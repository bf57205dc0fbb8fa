//! `kubectl podshaper status|top`: the limits, rates, drops and marks of
//! pods by name, read from the daemon on each pod's node through the API
//! server (pods/proxy to the daemon's `/status`), with kubectl's
//! kubeconfig. The same binary serves as the kubectl plugin when it is
//! invoked as `kubectl-podshaper` (a link on PATH, as krew installs
//! plugins), and as `podshaper kubectl ...`.

mod cluster;
mod output;
mod sample;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The name kubectl looks for on PATH to run `kubectl podshaper`.
pub const PLUGIN_NAME: &str = "kubectl-podshaper";

/// True when this process was started as the kubectl plugin.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == PLUGIN_NAME))
        .unwrap_or(false)
}

/// The command line when invoked as `kubectl-podshaper`.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-podshaper",
    bin_name = "kubectl podshaper",
    version,
    about = "podshaper's limits, rates, drops and marks of pods, from each pod's node"
)]
pub struct PluginArgs {
    #[command(subcommand)]
    pub command: KubectlCommand,
}

#[derive(Debug, Subcommand)]
pub enum KubectlCommand {
    /// One pod's limits, current rates, drops, marks and ingress mode (or
    /// those of every limited pod of the namespace).
    Status(StatusArgs),
    /// Every limited pod ranked by its current rate, drops and marks per second.
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pod (default: every limited pod of the namespace).
    pub pod: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags as kubectl spells them, and where the daemons are.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// The namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Pods of every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// The rate is the counters' change between two reads this many seconds apart.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Where podshaper's DaemonSet runs (deploy/namespace.yaml).
    #[arg(long, value_name = "NAMESPACE", default_value = cluster::SYSTEM_NAMESPACE)]
    pub podshaper_namespace: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Between 0.1 and 60 seconds: shorter reads the counters' steps, longer
/// is no longer "current".
fn parse_interval(s: &str) -> Result<f64, String> {
    let seconds: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if (0.1..=60.0).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!("{s} s is out of bounds (0.1 to 60 s)"))
    }
}

pub fn run(command: KubectlCommand) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async move {
            match command {
                KubectlCommand::Status(a) => status(a).await,
                KubectlCommand::Top(a) => top(a).await,
            }
        })
}

async fn status(args: StatusArgs) -> Result<ExitCode> {
    let c = &args.common;
    let cluster = cluster::Cluster::connect(c).await?;
    let interval = Duration::from_secs_f64(c.interval);
    match args.pod {
        Some(name) => {
            let namespace = cluster.namespace(c);
            let pod = cluster.pod(&namespace, &name).await?;
            let rows = sample::one(&cluster, pod, interval).await?;
            output::print(&rows, c.output, output::Columns::Totals)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let pods = cluster.pods(c).await?;
            let sampled = sample::all(&cluster, pods, interval, true).await;
            finish(sampled, c, &cluster, output::Columns::Totals)
        }
    }
}

async fn top(args: TopArgs) -> Result<ExitCode> {
    let c = &args.common;
    let cluster = cluster::Cluster::connect(c).await?;
    let pods = cluster.pods(c).await?;
    let mut sampled = sample::all(&cluster, pods, Duration::from_secs_f64(c.interval), false).await;
    sampled.rows.sort_by(|a, b| {
        b.total_rate()
            .total_cmp(&a.total_rate())
            .then_with(|| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)))
    });
    finish(sampled, c, &cluster, output::Columns::PerSecond)
}

/// Prints what was read, then one line for each node that could not be
/// read; exits non-zero if any could not, as kubectl get does.
fn finish(
    sampled: sample::Sampled,
    c: &CommonArgs,
    cluster: &cluster::Cluster,
    columns: output::Columns,
) -> Result<ExitCode> {
    if sampled.rows.is_empty() && c.output == Output::Table {
        let scope = match c.all_namespaces {
            true => "any namespace".to_string(),
            false => format!("namespace {}", cluster.namespace(c)),
        };
        eprintln!("No limited pods found in {scope}.");
    } else {
        output::print(&sampled.rows, c.output, columns)?;
    }
    for e in &sampled.errors {
        eprintln!("error: {e:#}");
    }
    Ok(match sampled.errors.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_plugin_command_line_is_consistent() {
        PluginArgs::command().debug_assert();
    }

    #[test]
    fn kubectl_flags_parse_as_kubectl_spells_them() {
        let args = PluginArgs::try_parse_from([
            "kubectl-podshaper",
            "status",
            "web-0",
            "-n",
            "shop",
            "-o",
            "json",
            "--interval",
            "0.5s",
        ])
        .expect("parses");
        let KubectlCommand::Status(s) = args.command else {
            panic!("not status: {args:?}");
        };
        assert_eq!(s.pod.as_deref(), Some("web-0"));
        assert_eq!(s.common.namespace.as_deref(), Some("shop"));
        assert_eq!(s.common.output, Output::Json);
        assert!((s.common.interval - 0.5).abs() < 1e-9);
        assert!(PluginArgs::try_parse_from(["kubectl-podshaper", "top", "-A"]).is_ok());
        assert!(PluginArgs::try_parse_from(["kubectl-podshaper", "top", "-A", "-n", "x"]).is_err());
        assert!(
            PluginArgs::try_parse_from(["kubectl-podshaper", "top", "--interval", "0"]).is_err()
        );
    }
}
