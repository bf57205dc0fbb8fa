//! The measured window of a run: a receiver's [`Meter`] read once the
//! warm-up is over and again at the end, and in each whole second from the
//! start. The `traffic` receivers, the bench and the tests measure with it,
//! so that they agree on what a run's rate and its flows' shares are.

use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::meter::{flow_bytes_since, Meter, Reading, Seconds};
use crate::traffic::Until;

/// How often the meter is looked at while a run goes on.
const POLL: Duration = Duration::from_millis(10);

/// What a meter saw after the warm-up.
#[derive(Debug, Clone)]
pub struct Window {
    /// the meter when the warm-up ended, and at the end
    pub first: Reading,
    pub last: Reading,
    /// each flow's bytes between the two: the warm-up's are left out
    pub flow_bytes: Vec<u64>,
    /// the rate in each whole second from the start, warm-up included
    pub per_second: Vec<f64>,
    /// from the start to the end
    pub elapsed: Duration,
}

impl Window {
    /// Bits per second after the warm-up.
    pub fn bits_per_sec(&self) -> f64 {
        self.last.bits_per_sec_since(&self.first)
    }
}

/// Watches `meter` from now: reads it once `warmup` has passed, and again
/// once `until` is reached.
pub fn measure(meter: &Meter, warmup: Duration, until: &Until) -> Window {
    let start = Instant::now();
    let mut per_second = Seconds::start(meter);
    while start.elapsed() < warmup {
        per_second.poll(meter);
        thread::sleep(POLL);
    }
    let (first, first_flows) = (meter.read(), meter.flow_bytes());
    while !until.reached() {
        per_second.poll(meter);
        thread::sleep(POLL);
    }
    let (last, last_flows) = (meter.read(), meter.flow_bytes());
    Window {
        first,
        last,
        flow_bytes: flow_bytes_since(&first_flows, &last_flows),
        per_second: per_second.bits_per_second(),
        elapsed: start.elapsed(),
    }
}

/// What `podshaper traffic tcp-recv` and `udp-recv` print (one JSON
/// document): the received rate after the skipped start, and more.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReceiverReport {
    /// bytes after the skipped start, over `seconds`
    pub bytes: u64,
    pub seconds: f64,
    /// after the skipped start, rounded to a whole bit per second
    pub bits_per_second: f64,
    /// bytes from the start
    pub total_bytes: u64,
    /// seconds from the start to the end
    pub elapsed: f64,
    /// each TCP flow's bytes after the skipped start
    pub flow_bytes_measured: Vec<u64>,
    /// the rate in each whole second from the start
    pub per_second_bits: Vec<f64>,
    /// each TCP flow's bytes from the start
    pub flow_bytes: Vec<u64>,
    /// TCP: each connection's receive window clamp as it ended
    pub window_clamps: Vec<u64>,
}

impl ReceiverReport {
    /// The report of `window` on `meter` (read now, after the sink ended).
    pub fn new(window: &Window, meter: &Meter) -> Self {
        Self {
            bytes: window.last.bytes - window.first.bytes,
            seconds: window.last.at.duration_since(window.first.at).as_secs_f64(),
            bits_per_second: window.bits_per_sec().round(),
            total_bytes: window.last.bytes,
            elapsed: window.elapsed.as_secs_f64(),
            flow_bytes_measured: window.flow_bytes.clone(),
            per_second_bits: window.per_second.clone(),
            flow_bytes: meter.flow_bytes(),
            window_clamps: meter.window_clamps(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_ups_bytes_are_left_out() {
        let meter = Meter::default();
        let flow = meter.flow();
        let until = Until::after(Duration::from_millis(400));
        let window = thread::scope(|s| {
            let measuring = s.spawn(|| measure(&meter, Duration::from_millis(100), &until));
            flow.add(1000);
            thread::sleep(Duration::from_millis(200));
            flow.add(10);
            measuring
                .join()
                .unwrap_or_else(|_| panic!("the measurement panicked"))
        });
        assert_eq!(window.flow_bytes, [10]);
        assert_eq!(window.last.bytes - window.first.bytes, 10);
        let report = ReceiverReport::new(&window, &meter);
        assert_eq!(report.flow_bytes, [1010]);
        assert_eq!(report.total_bytes, 1010);
    }
}
