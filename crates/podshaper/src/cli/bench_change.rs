//! Limit change to effect: one TCP flow sends under a limit; halfway the
//! limit is halved (podshaper: one map update; tbf: `tc qdisc change`), and
//! the receiver's byte count, sampled every 10 ms, tells when the new rate
//! took hold. `--plot` draws these runs: rate over time per mechanism.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{Meter, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::{DirectionLimit, Limits, Shaper, TransientCgroup};

use super::bench::{tbf_args, tc, Mechanism};

const TOTAL: Duration = Duration::from_secs(6);
const CHANGE_AT: Duration = Duration::from_secs(3);
const SAMPLE: Duration = Duration::from_millis(10);
/// The new rate holds once every 200 ms window of the next 600 ms carries
/// between 75% and 115% of it (the burst left in the bucket drains first:
/// that counts; a flow that stalls has not taken the new rate).
const WINDOW: Duration = Duration::from_millis(200);
const HOLD: Duration = Duration::from_millis(600);
const BAND: (f64, f64) = (0.75, 1.15);
/// Plotted bins.
const BIN: Duration = Duration::from_millis(100);

pub(super) struct ChangeRun {
    pub mechanism: Mechanism,
    pub rate: Rate,
    /// from the change to the new rate holding; None if it never did
    pub effect: Option<Duration>,
    /// (seconds, rate / the first target) in 100 ms bins
    pub series: Vec<(f64, f64)>,
}

pub(super) fn run(
    shaper: &mut Shaper,
    rate: Rate,
    mechanism: Mechanism,
    cc: &str,
) -> Result<ChangeRun> {
    super::bench::settle();
    let lab = NetnsPair::create("chg")?;
    lab.set_congestion_control(cc)?;
    let cgroup = TransientCgroup::create(&format!("podshaper-change-{}", std::process::id()))?;
    let half = Rate::from_bits_per_sec(rate.bits_per_sec() / 2)?;
    let limits = |r: Rate| Limits {
        egress: Some(DirectionLimit::new(r, None)),
        ingress: None,
    };
    let mut attachment = None;
    match mechanism {
        Mechanism::Podshaper => {
            shaper.set_limits(cgroup.cgroup().id(), &limits(rate))?;
            attachment = Some(shaper.attach(cgroup.cgroup())?);
        }
        Mechanism::Tbf => tc(lab.a(), &tbf_args("add", rate))?,
        Mechanism::Unlimited => {}
    }
    let to = SocketAddr::new(NetnsPair::addr_b(false), 5303);
    let meter = Meter::default();
    let until = Until::after(TOTAL + Duration::from_secs(1));
    let sink = {
        let (meter, until) = (meter.clone(), until.clone());
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            traffic::tcp_sink(TcpListener::bind(to)?, meter, &until)
        })
    };
    thread::sleep(Duration::from_millis(200));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["traffic", "tcp-send", "--netns", lab.a()])
        .args([
            "--seconds",
            &TOTAL.as_secs_f64().to_string(),
            "--to",
            &to.to_string(),
        ])
        .stdout(Stdio::null());
    cgroup.cgroup().spawn_inside(&mut cmd)?;
    let mut child = cmd.spawn().context("cannot start the sender")?;
    let start = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut changed = None;
    while start.elapsed() < TOTAL {
        let now = start.elapsed();
        samples.push((now, meter.read().bytes));
        if changed.is_none() && now >= CHANGE_AT {
            match mechanism {
                Mechanism::Podshaper => shaper.set_limits(cgroup.cgroup().id(), &limits(half))?,
                Mechanism::Tbf => tc(lab.a(), &tbf_args("change", half))?,
                Mechanism::Unlimited => {}
            }
            changed = Some(start.elapsed());
        }
        thread::sleep(SAMPLE);
    }
    let _ = child.wait();
    until.stop.store(true, Ordering::Relaxed);
    let _ = sink.join();
    if let Some(a) = attachment {
        shaper.detach(a)?;
        shaper.remove_limits(cgroup.cgroup().id())?;
    }
    let changed_at = changed.unwrap_or(CHANGE_AT);
    Ok(ChangeRun {
        mechanism,
        rate,
        effect: effect(&samples, changed_at, half.bits_per_sec() as f64),
        series: bins(&samples, rate.bits_per_sec() as f64),
    })
}

/// Bits per second between the samples nearest to `from` and `from + len`.
fn rate_over(samples: &[(Duration, u64)], from: Duration, len: Duration) -> Option<f64> {
    let a = samples.iter().find(|(t, _)| *t >= from)?;
    let b = samples.iter().find(|(t, _)| *t >= from + len)?;
    let secs = (b.0 - a.0).as_secs_f64();
    (secs > 0.0).then(|| (b.1 - a.1) as f64 * 8.0 / secs)
}

fn effect(samples: &[(Duration, u64)], changed_at: Duration, target: f64) -> Option<Duration> {
    samples
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t >= changed_at)
        .find(|t| {
            let mut w = *t;
            while w + WINDOW <= *t + HOLD {
                match rate_over(samples, w, WINDOW) {
                    Some(r) if (target * BAND.0..=target * BAND.1).contains(&r) => w += SAMPLE,
                    _ => return false,
                }
            }
            true
        })
        .map(|t| t - changed_at)
}

fn bins(samples: &[(Duration, u64)], target: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    while let Some(r) = rate_over(samples, t, BIN) {
        out.push(((t + BIN / 2).as_secs_f64(), r / target));
        t += BIN;
    }
    out
}

/// One panel per rate: each mechanism's rate over time, as a fraction of
/// the first limit, with the change marked.
pub(super) fn plot(runs: &[ChangeRun], file: &Path) -> Result<()> {
    use plotters::prelude::*;

    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("the plot's font (Debian package fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("cannot use DejaVuSans.ttf as the plot's font"))?;

    let mut rates: Vec<Rate> = runs.iter().map(|r| r.rate).collect();
    rates.dedup();
    let height = 320 * rates.len().max(1) as u32;
    let root = BitMapBackend::new(file, (960, height)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw the plot: {e}");
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let panels = root.split_evenly((rates.len().max(1), 1));
    for (panel, rate) in panels.iter().zip(&rates) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{rate} limit, halved at t = 3 s (one TCP flow, egress)"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..TOTAL.as_secs_f64(), 0f64..1.6f64)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("rate / first limit")
            .draw()
            .map_err(|e| draw(&e))?;
        for (run, color) in runs
            .iter()
            .filter(|r| r.rate == *rate)
            .zip([RED, BLUE, BLACK])
        {
            let label = format!(
                "{} ({})",
                super::bench::name(run.mechanism),
                run.effect.map_or("no effect".into(), |d| format!(
                    "effect after {:.0} ms",
                    d.as_secs_f64() * 1e3
                ))
            );
            chart
                .draw_series(LineSeries::new(
                    run.series.iter().map(|(t, r)| (*t, r.min(1.6))),
                    color.stroke_width(2),
                ))
                .map_err(|e| draw(&e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        for level in [1.0, 0.5] {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, level), (TOTAL.as_secs_f64(), level)],
                    BLACK.mix(0.3),
                ))
                .map_err(|e| draw(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
    }
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}
