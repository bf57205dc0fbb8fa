//! `podshaper demo`: shaping shown live on this machine, with no cluster and
//! no network. Two network namespaces joined by a veth pair; a TCP source in
//! a transient cgroup in one, a sink in the other; the rate printed every
//! second while the limit goes from none, to one rate, to another (live,
//! without touching the connection).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{Meter, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::{DirectionLimit, Limits, Shaper, TransientCgroup};

use crate::signals::Signals;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The first limit.
    #[arg(long, default_value = "100mbit")]
    first: String,
    /// The limit it is changed to, live.
    #[arg(long, default_value = "30mbit")]
    second: String,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

const PORT: u16 = 5201;

struct Phase {
    name: String,
    limit: Option<Rate>,
    /// measured rate each second
    samples: Vec<f64>,
}

pub fn run(args: DemoArgs, signals: Signals) -> Result<ExitCode> {
    let first: Rate = args.first.parse()?;
    let second: Rate = args.second.parse()?;
    let seconds = args.seconds.max(2);
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

    println!(
        "podshaper demo: one TCP flow from a cgroup in network namespace A to B, over a veth pair"
    );
    let lab =
        NetnsPair::create("demo").context("cannot build the network namespaces (are you root?)")?;
    let cgroup = TransientCgroup::create(&format!("podshaper-demo-{}", std::process::id()))?;
    let mut shaper = Shaper::load()?;
    let attachment = shaper.attach(cgroup.cgroup())?;
    println!(
        "  namespaces {} and {}, cgroup {}",
        lab.a(),
        lab.b(),
        cgroup.cgroup().path().display()
    );

    let until = Until::after(total);
    let stop = until.stop.clone();
    signals.handle(move |_| stop.store(true, Ordering::Relaxed));

    // The sink, in B.
    let meter = Meter::default();
    let sink_addr = SocketAddr::new(NetnsPair::addr_b(false), PORT);
    let sink = {
        let (meter, until) = (meter.clone(), until.clone());
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            let listener = TcpListener::bind(sink_addr)?;
            traffic::tcp_sink(listener, meter, &until)
        })
    };
    // The source, in A and in the cgroup.
    let mut source = spawn_source(&lab, &cgroup, sink_addr, total)?;

    let result = show_phases(
        &mut phases,
        &mut shaper,
        cgroup.cgroup().id(),
        &meter,
        &until,
        seconds,
    );

    // Cleanup, whatever happened above.
    until.stop.store(true, Ordering::Relaxed);
    let _ = source.kill();
    let _ = source.wait();
    let _ = sink.join();
    let _ = shaper.detach(attachment);
    drop(shaper);
    drop(cgroup);
    drop(lab);
    result?;

    print_summary(&phases);
    Ok(ExitCode::SUCCESS)
}

fn spawn_source(
    lab: &NetnsPair,
    cgroup: &TransientCgroup,
    to: SocketAddr,
    total: Duration,
) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the podshaper binary")?;
    let mut command = Command::new(exe);
    command
        .args(["traffic", "tcp-send", "--netns", lab.a(), "--to"])
        .arg(to.to_string())
        .arg("--seconds")
        .arg(total.as_secs_f64().to_string())
        .stdout(Stdio::null());
    cgroup.cgroup().spawn_inside(&mut command)?;
    command.spawn().context("cannot start the traffic source")
}

fn show_phases(
    phases: &mut [Phase],
    shaper: &mut Shaper,
    cgroup_id: u64,
    meter: &Meter,
    until: &Until,
    seconds: u64,
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
        println!("\n== {} ==", phase.name);
        for _ in 0..seconds {
            thread::sleep(Duration::from_secs(1));
            if until.reached() {
                anyhow::bail!("interrupted");
            }
            let now = meter.read();
            let rate = now.bits_per_sec_since(&last);
            last = now;
            phase.samples.push(rate);
            println!("{}", progress_line(started.elapsed(), rate, phase.limit));
        }
    }
    Ok(())
}

fn progress_line(at: Duration, rate: f64, target: Option<Rate>) -> String {
    let measured = format!("{}bit/s", podshaper_rate::human_decimal(rate as u64));
    match target {
        None => format!(
            "[{:>3}s]  measured {measured:>12}   target      none",
            at.as_secs()
        ),
        Some(t) => format!(
            "[{:>3}s]  measured {measured:>12}   target {:>12}   {:5.1}% of target  {}",
            at.as_secs(),
            t.to_string(),
            rate / t.bits_per_sec() as f64 * 100.0,
            bar(rate / t.bits_per_sec() as f64)
        ),
    }
}

/// A 20-character bar: full at the target.
fn bar(fraction: f64) -> String {
    let filled = (fraction * 20.0).round().clamp(0.0, 30.0) as usize;
    "#".repeat(filled)
}

fn print_summary(phases: &[Phase]) {
    println!("\nsummary (the first second of each phase left out):");
    for p in phases {
        let steady: Vec<f64> = p.samples.iter().skip(1).copied().collect();
        let mean = steady.iter().sum::<f64>() / steady.len().max(1) as f64;
        let measured = format!("{}bit/s", podshaper_rate::human_decimal(mean as u64));
        match p.limit {
            None => println!("  {:<32} {measured:>12}", p.name),
            Some(t) => println!(
                "  {:<32} {measured:>12}   {:.3} of target",
                p.name,
                mean / t.bits_per_sec() as f64
            ),
        }
    }
    println!(
        "goodput is TCP payload; limits count IP packets (about 3.5% more at a 1500-byte MTU)"
    );
}
