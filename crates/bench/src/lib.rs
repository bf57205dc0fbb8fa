//! podshaper's benchmarks and its demo, as a library: the CLI's `podshaper
//! bench` parses its flags into [`Options`], calls [`run`] and prints the
//! [`Report`] as a table or as JSON; `podshaper bench daemon` does the same
//! with [`daemon::run`], and `podshaper demo` with [`demo::run`].
//!
//! - [`matrix`]: podshaper against tc tbf (on the veth, with the CNI
//!   bandwidth plugin's latency) and against no limit, side by side, on a veth pair
//!   between two network namespaces, or through a delay line between them
//!   (`--rtt`);
//! - [`change`]: how long a halved limit takes to hold;
//! - [`open`]: a limit put on flows already running;
//! - [`daemon`]: the daemon's attach latency, scale and memory;
//! - [`pods`]: many pods sending at once, each at its own limit, against
//!   tbf on the same veths;
//! - [`demo`]: shaping shown live, a limit set and changed on a running flow;
//! - [`lab`]: the set-up they share. The traffic runs in children of this
//!   process's binary (its `traffic` subcommand) started inside the limited
//!   cgroups, and is measured with `podshaper_netlab`.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use podshaper_shaper::Shaper;

pub mod bpf_stats;
pub mod change;
pub mod daemon;
pub mod demo;
mod error;
pub mod lab;
pub mod matrix;
pub mod open;
pub mod options;
pub mod plot;
pub mod pods;
pub mod report;

pub use error::{BenchError, Result};
pub use options::{Direction, Mechanism, Options, Traffic};
pub use report::{Progress, Report};

use lab::check_stop;
use matrix::{CellOptions, ClassifierPin};
use report::When;

/// Runs the bench `options` describe; `progress` hears of each run as it
/// ends. `stop` (a signal) ends it after the run in progress with
/// [`BenchError::Interrupted`], once what it made is removed.
pub fn run(
    options: &Options,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report> {
    options.check()?;
    let traffics = options.traffics();
    let loaded_since = SystemTime::now() - Duration::from_secs(1);
    let mut shaper = Shaper::load()?;
    // The kernel keeps run-time statistics of BPF programs while this is open.
    let _stats = bpf_stats::enable()?;
    let flow_classifier = if options.pod_queue() {
        Some(ClassifierPin::flow(&mut shaper)?)
    } else {
        None
    };
    let host_classifier = if options.host_queue {
        Some(ClassifierPin::host(&mut shaper)?)
    } else {
        None
    };
    let mut cell_options = CellOptions {
        seconds: options.seconds,
        warmup: options.warmup,
        loaded_since,
        probe: options.probe,
        cc: options.cc.clone(),
        ecn: options.ecn,
        ingress_queue: flow_classifier.as_ref().map(|p| p.0.clone()),
        host_queue: host_classifier.as_ref().map(|p| p.0.clone()),
        rtt: Duration::ZERO,
    };
    let mut cells = Vec::new();
    for direction in &options.directions {
        for rtt in &options.rtts {
            cell_options.rtt = *rtt;
            for rate in &options.rates {
                for traffic in &traffics {
                    for mechanism in &options.mechanisms {
                        check_stop(stop)?;
                        let cell = matrix::run_cell(
                            &mut shaper,
                            *direction,
                            *rate,
                            *traffic,
                            *mechanism,
                            &cell_options,
                        );
                        // a signal also ends the traffic children (the
                        // terminal's process group): the cell's error is
                        // then the signal's
                        check_stop(stop)?;
                        let cell = cell.map_err(|e| {
                            e.during(format!(
                                "{direction} rtt {rtt:?} {rate} {traffic:?} {mechanism:?}"
                            ))
                        })?;
                        progress(Progress::Cell(&cell));
                        cells.push(cell);
                    }
                }
            }
        }
    }
    let limited: Vec<Mechanism> = options
        .mechanisms
        .iter()
        .copied()
        .filter(|m| *m != Mechanism::Unlimited)
        .collect();
    let mut limit_changes = Vec::new();
    if options.change || options.plot.is_some() {
        for rate in &options.rates {
            for mechanism in &limited {
                check_stop(stop)?;
                let run = change::run(&mut shaper, *rate, *mechanism, &options.cc);
                check_stop(stop)?;
                let run = run
                    .map_err(|e| e.during(format!("limit change at {rate} with {mechanism:?}")))?;
                progress(Progress::Change(&run));
                limit_changes.push(run);
            }
        }
    }
    if let Some(file) = &options.plot {
        plot::draw(&limit_changes, file)?;
    }
    let mut open_flows = Vec::new();
    let open_directions = options.directions.iter().filter(|_| options.open);
    for direction in open_directions {
        let mut runs: Vec<(Mechanism, When)> =
            limited.iter().map(|m| (*m, When::OnRunningFlows)).collect();
        if options.mechanisms.contains(&Mechanism::Podshaper) {
            runs.push((Mechanism::Podshaper, When::BeforeFlows));
        }
        for rate in &options.rates {
            for flows in options.flows.iter().map(|f| (*f).max(1)) {
                for (mechanism, when) in &runs {
                    check_stop(stop)?;
                    let cell = open::OpenCell {
                        direction: *direction,
                        rate: *rate,
                        flows,
                        mechanism: *mechanism,
                        when: *when,
                    };
                    let queue = cell_options.ingress_queue.as_deref();
                    let run = open::run(&mut shaper, &cell, queue, &options.cc);
                    check_stop(stop)?;
                    let run = run.map_err(|e| {
                        e.during(format!(
                            "a limit on open flows, {direction} at {rate} x{flows} with {mechanism:?}"
                        ))
                    })?;
                    progress(Progress::Open(&run));
                    open_flows.push(run);
                }
            }
        }
    }
    Ok(Report {
        congestion_control: options.cc.clone(),
        ecn: options.ecn,
        ingress_queue: options.pod_queue(),
        host_queue: options.host_queue,
        cells,
        limit_changes,
        open_flows,
        mechanisms: options.mechanisms.clone(),
        measured_ingress: options.directions.contains(&Direction::Ingress),
    })
}
