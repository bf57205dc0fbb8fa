//! Limit change to effect: one TCP flow sends under a limit; halfway the
//! limit is halved (podshaper: one map update; tbf: `tc qdisc change`), and
//! the receiver's byte count, sampled every 10 ms, tells when the new rate
//! took hold. `--plot` draws these runs: rate over time per mechanism.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use podshaper_netlab::NetnsPair;
use podshaper_rate::Rate;
use podshaper_shaper::{Shaper, TransientCgroup};

use crate::error::Result;
use crate::lab::{self, egress_limit, tbf_args, tc, Sink};
use crate::options::{Mechanism, Traffic};
use crate::report::LimitChange;

pub(crate) const TOTAL: Duration = Duration::from_secs(6);
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

pub fn run(shaper: &mut Shaper, rate: Rate, mechanism: Mechanism, cc: &str) -> Result<LimitChange> {
    lab::settle();
    let lab = NetnsPair::create("chg")?;
    lab.set_congestion_control(cc)?;
    let cgroup = TransientCgroup::create(&format!("podshaper-change-{}", std::process::id()))?;
    let half = Rate::from_bits_per_sec(rate.bits_per_sec() / 2)?;
    let mut attachment = None;
    match mechanism {
        Mechanism::Podshaper => {
            attachment = Some(lab::limit_egress(shaper, cgroup.cgroup(), rate)?);
        }
        Mechanism::Tbf => tc(lab.a(), &tbf_args("add", rate))?,
        Mechanism::Unlimited => {}
    }
    let to = SocketAddr::new(NetnsPair::addr_b(false), 5303);
    let one_flow = Traffic::Tcp(1);
    let sink = Sink::start(&lab, one_flow, to, TOTAL + Duration::from_secs(1));
    let seconds = TOTAL.as_secs_f64().to_string();
    let mut child = lab::start_senders(&lab, cgroup.cgroup(), one_flow, 0, &seconds, 0.0, to)?;
    let start = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut changed = None;
    while start.elapsed() < TOTAL {
        let now = start.elapsed();
        samples.push((now, sink.meter.read().bytes));
        if changed.is_none() && now >= CHANGE_AT {
            match mechanism {
                Mechanism::Podshaper => {
                    shaper.set_limits(cgroup.cgroup().id(), &egress_limit(half))?
                }
                Mechanism::Tbf => tc(lab.a(), &tbf_args("change", half))?,
                Mechanism::Unlimited => {}
            }
            changed = Some(start.elapsed());
        }
        thread::sleep(SAMPLE);
    }
    let _ = child.wait();
    sink.stop();
    if let Some(a) = attachment {
        lab::unlimit(shaper, cgroup.cgroup().id(), a)?;
    }
    let changed_at = changed.unwrap_or(CHANGE_AT);
    Ok(LimitChange::new(
        rate,
        mechanism,
        effect(&samples, changed_at, half.bits_per_sec() as f64),
        bins(&samples, rate.bits_per_sec() as f64),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 ms samples of a flow at `before` bytes per 10 ms until `at`, then
    /// at `after`.
    fn samples(before: u64, at: Duration, after: u64) -> Vec<(Duration, u64)> {
        let mut bytes = 0;
        (0..600)
            .map(|i| {
                let t = SAMPLE * i;
                let s = (t, bytes);
                bytes += if t < at { before } else { after };
                s
            })
            .collect()
    }

    #[test]
    fn the_effect_is_when_the_new_rate_holds() {
        // 8 Mbit/s (10,000 bytes per 10 ms), halved from 3.5 s on
        let s = samples(10_000, Duration::from_millis(3500), 5_000);
        let halved = effect(&s, CHANGE_AT, 4_000_000.0).map(|d| d.as_millis());
        assert!(
            halved.is_some_and(|ms| (400..=520).contains(&ms)),
            "{halved:?}"
        );
        assert_eq!(
            effect(&samples(10_000, TOTAL, 0), CHANGE_AT, 4_000_000.0),
            None
        );
        let bins = bins(&s, 8_000_000.0);
        assert!((bins[0].1 - 1.0).abs() < 1e-9, "{bins:?}");
        assert!((bins[bins.len() - 1].1 - 0.5).abs() < 1e-9, "{bins:?}");
    }
}
