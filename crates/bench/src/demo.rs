//! `podshaper demo`: shaping shown live on this machine, with no cluster and
//! no network. Two network namespaces joined by a veth pair; a TCP source in
//! a transient cgroup in one, a sink in the other; the rate read every
//! second while the limit goes from none, to one rate, to another (live,
//! without touching the connection).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use podshaper_netlab::traffic::Until;
use podshaper_netlab::{Meter, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::{DirectionLimit, Limits, Shaper, TransientCgroup};

use crate::error::{BenchError, Result};
use crate::lab::{self, Sink};
use crate::options::Traffic;

const PORT: u16 = 5201;

/// The two limits and how long each phase lasts.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub first: Rate,
    /// the limit it is changed to, live
    pub second: Rate,
    /// seconds per phase (2 at least)
    pub seconds: u64,
}

/// One phase: no limit, the first, the second.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub limit: Option<Rate>,
    /// measured rate each second
    pub samples: Vec<f64>,
}

/// What the demo shows as it goes, a line each.
pub enum DemoEvent<'a> {
    /// the lab is up
    Ready {
        a: &'a str,
        b: &'a str,
        cgroup: &'a Path,
    },
    /// a phase begins
    Phase(&'a Phase),
    /// a second of a phase ended
    Second {
        at: Duration,
        rate: f64,
        target: Option<Rate>,
    },
}

impl fmt::Display for DemoEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready { a, b, cgroup } => {
                write!(f, "  namespaces {a} and {b}, cgroup {}", cgroup.display())
            }
            Self::Phase(p) => write!(f, "\n== {} ==", p.name),
            Self::Second { at, rate, target } => {
                let measured = format!("{}bit/s", podshaper_rate::human_decimal(*rate as u64));
                match target {
                    None => write!(
                        f,
                        "[{:>3}s]  measured {measured:>12}   target      none",
                        at.as_secs()
                    ),
                    Some(t) => write!(
                        f,
                        "[{:>3}s]  measured {measured:>12}   target {:>12}   {:5.1}% of target  {}",
                        at.as_secs(),
                        t.to_string(),
                        rate / t.bits_per_sec() as f64 * 100.0,
                        bar(rate / t.bits_per_sec() as f64)
                    ),
                }
            }
        }
    }
}

/// A 20-character bar: full at the target.
fn bar(fraction: f64) -> String {
    let filled = (fraction * 20.0).round().clamp(0.0, 30.0) as usize;
    "#".repeat(filled)
}

/// Runs the demo; `show` hears of each step. Setting `stop` (a signal)
/// ends it with [`BenchError::DemoInterrupted`], once what it made is
/// removed.
pub fn run(
    options: &DemoOptions,
    stop: Arc<AtomicBool>,
    show: &mut dyn FnMut(DemoEvent<'_>),
) -> Result<Vec<Phase>> {
    let (first, second) = (options.first, options.second);
    let seconds = options.seconds.max(2);
    let mut phases = vec![
        Phase {
            name: "no limit".into(),
            limit: None,
            samples: vec![],
        },
        Phase {
            name: format!("limit {first}"),
            limit: Some(first),
            samples: vec![],
        },
        Phase {
            name: format!("changed live to {second}"),
            limit: Some(second),
            samples: vec![],
        },
    ];
    let total = Duration::from_secs(seconds * phases.len() as u64 + 2);
    let lab = NetnsPair::create("demo").map_err(|e| {
        BenchError::from(e).during("cannot build the network namespaces (are you root?)")
    })?;
    let cgroup = TransientCgroup::create(&format!("podshaper-demo-{}", std::process::id()))?;
    let mut shaper = Shaper::load()?;
    let attachment = shaper.attach(cgroup.cgroup())?;
    show(DemoEvent::Ready {
        a: lab.a(),
        b: lab.b(),
        cgroup: cgroup.cgroup().path(),
    });

    let until = Until {
        deadline: Instant::now() + total,
        stop,
    };
    // The sink, in B; the source, in A and in the cgroup.
    let sink_addr = SocketAddr::new(NetnsPair::addr_b(false), PORT);
    let one_flow = Traffic::Tcp(1);
    let sink = Sink::start_until(&lab, one_flow, sink_addr, until.clone());
    let source = lab::start_senders(
        &lab,
        cgroup.cgroup(),
        one_flow,
        0,
        &total.as_secs_f64().to_string(),
        0.0,
        sink_addr,
    );
    let result = source.and_then(|mut source| {
        let shown = show_phases(
            &mut phases,
            &mut shaper,
            cgroup.cgroup().id(),
            &sink.meter,
            &until,
            seconds,
            show,
        );
        let _ = source.kill();
        let _ = source.wait();
        shown
    });

    // Cleanup, whatever happened above.
    sink.stop();
    let _ = shaper.detach(attachment);
    drop(shaper);
    drop(cgroup);
    drop(lab);
    result?;
    Ok(phases)
}

fn show_phases(
    phases: &mut [Phase],
    shaper: &mut Shaper,
    cgroup_id: u64,
    meter: &Meter,
    until: &Until,
    seconds: u64,
    show: &mut dyn FnMut(DemoEvent<'_>),
) -> Result<()> {
    let started = Instant::now();
    let mut last = meter.read();
    for phase in phases.iter_mut() {
        let limits = Limits {
            egress: phase.limit.map(|r| DirectionLimit::new(r, None)),
            ingress: None,
        };
        if limits.is_unlimited() {
            shaper.remove_limits(cgroup_id)?;
        } else {
            shaper.set_limits(cgroup_id, &limits)?;
        }
        show(DemoEvent::Phase(phase));
        for _ in 0..seconds {
            thread::sleep(Duration::from_secs(1));
            if until.reached() {
                return Err(BenchError::DemoInterrupted);
            }
            let now = meter.read();
            let rate = now.bits_per_sec_since(&last);
            last = now;
            phase.samples.push(rate);
            show(DemoEvent::Second {
                at: started.elapsed(),
                rate,
                target: phase.limit,
            });
        }
    }
    Ok(())
}

/// The summary printed at the end: each phase's mean rate.
pub fn summary(phases: &[Phase]) -> String {
    let mut out = String::from("\nsummary (the first second of each phase left out):\n");
    for p in phases {
        let steady: Vec<f64> = p.samples.iter().skip(1).copied().collect();
        let mean = steady.iter().sum::<f64>() / steady.len().max(1) as f64;
        let measured = format!("{}bit/s", podshaper_rate::human_decimal(mean as u64));
        match p.limit {
            None => out.push_str(&format!("  {:<32} {measured:>12}\n", p.name)),
            Some(t) => out.push_str(&format!(
                "  {:<32} {measured:>12}   {:.3} of target\n",
                p.name,
                mean / t.bits_per_sec() as f64
            )),
        }
    }
    out.push_str(
        "goodput is TCP payload; limits count IP packets (about 3.5% more at a 1500-byte MTU)\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_shows_its_rate_against_the_target() {
        let target = Rate::from_bits_per_sec(100_000_000).ok();
        let line = DemoEvent::Second {
            at: Duration::from_secs(7),
            rate: 50_000_000.0,
            target,
        }
        .to_string();
        assert!(line.starts_with("[  7s]  measured "), "{line}");
        assert!(line.contains(" 50.0% of target  ##########"), "{line}");
        let phases = [Phase {
            name: "no limit".into(),
            limit: None,
            samples: vec![1.0, 2_000_000.0, 4_000_000.0],
        }];
        assert!(
            summary(&phases).contains("  no limit "),
            "{}",
            summary(&phases)
        );
    }
}
