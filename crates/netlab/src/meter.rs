//! Counts bytes as they arrive, for rates over any interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A shared byte counter. Clones count into the same total.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    bytes: Arc<AtomicU64>,
    /// each flow's own count, in the order the flows were made
    flows: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
    /// each flow's receive window clamp when it ended (0: not read)
    window_clamps: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

/// One flow's share of a [`Meter`]: counts into the total and its own.
#[derive(Debug, Clone)]
pub struct FlowMeter {
    total: Meter,
    own: Arc<AtomicU64>,
    window_clamp: Arc<AtomicU64>,
}

impl FlowMeter {
    pub fn add(&self, n: u64) {
        self.total.add(n);
        self.own.fetch_add(n, Ordering::Relaxed);
    }

    /// The receiving socket's window clamp (`TCP_WINDOW_CLAMP`), read as
    /// the flow ended: what podshaper's ingress limit left on it.
    pub fn set_window_clamp(&self, bytes: u64) {
        self.window_clamp.store(bytes, Ordering::Relaxed);
    }
}

/// The total at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub at: Instant,
    pub bytes: u64,
}

impl Meter {
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// A meter for one more flow, counted in this total too.
    pub fn flow(&self) -> FlowMeter {
        let own = Arc::new(AtomicU64::new(0));
        let window_clamp = Arc::new(AtomicU64::new(0));
        if let (Ok(mut flows), Ok(mut clamps)) = (self.flows.lock(), self.window_clamps.lock()) {
            flows.push(own.clone());
            clamps.push(window_clamp.clone());
        }
        FlowMeter {
            total: self.clone(),
            own,
            window_clamp,
        }
    }

    /// Each flow's receive window clamp as it ended (0: not read), in the
    /// order the flows were made.
    pub fn window_clamps(&self) -> Vec<u64> {
        self.window_clamps
            .lock()
            .map(|f| f.iter().map(|b| b.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
    }

    /// Each flow's bytes so far, in the order the flows were made.
    pub fn flow_bytes(&self) -> Vec<u64> {
        self.flows
            .lock()
            .map(|f| f.iter().map(|b| b.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
    }

    pub fn read(&self) -> Reading {
        Reading {
            at: Instant::now(),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Each flow's bytes between two [`Meter::flow_bytes`] snapshots (a flow
/// made after the first counts from zero).
pub fn flow_bytes_since(earlier: &[u64], later: &[u64]) -> Vec<u64> {
    later
        .iter()
        .enumerate()
        .map(|(i, b)| b.saturating_sub(earlier.get(i).copied().unwrap_or(0)))
        .collect()
}

impl Reading {
    /// Bits per second from `earlier` to this reading.
    pub fn bits_per_sec_since(&self, earlier: &Reading) -> f64 {
        let secs = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.bytes.saturating_sub(earlier.bytes) as f64 * 8.0 / secs
    }
}

/// A meter's rate in each whole second since a start: what a receiver saw
/// second by second, as iperf3's intervals show it.
#[derive(Debug, Clone)]
pub struct Seconds {
    start: Instant,
    readings: Vec<Reading>,
}

impl Seconds {
    /// Starts counting seconds now, from `meter`'s total now.
    pub fn start(meter: &Meter) -> Self {
        let first = meter.read();
        Self {
            start: first.at,
            readings: vec![first],
        }
    }

    /// Takes a reading if a whole second (since the start) has passed
    /// since the last one. Call it more often than once a second.
    pub fn poll(&mut self, meter: &Meter) {
        let due = self.start + std::time::Duration::from_secs(self.readings.len() as u64);
        if Instant::now() >= due {
            self.readings.push(meter.read());
        }
    }

    /// Bits per second in each second that ended so far.
    pub fn bits_per_second(&self) -> Vec<f64> {
        self.readings
            .windows(2)
            .map(|w| w[1].bits_per_sec_since(&w[0]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_count_into_the_total_and_their_own() {
        let meter = Meter::default();
        let (a, b) = (meter.flow(), meter.flow());
        a.add(10);
        let before = meter.flow_bytes();
        a.add(5);
        b.add(7);
        let c = meter.flow();
        c.add(1);
        assert_eq!(meter.read().bytes, 23);
        assert_eq!(meter.flow_bytes(), [15, 7, 1]);
        assert_eq!(flow_bytes_since(&before, &meter.flow_bytes()), [5, 7, 1]);
        b.set_window_clamp(14_336);
        assert_eq!(meter.window_clamps(), [0, 14_336, 0]);
    }

    #[test]
    fn seconds_are_read_at_each_whole_second_from_the_start() {
        let meter = Meter::default();
        let mut seconds = Seconds::start(&meter);
        seconds.poll(&meter);
        assert!(seconds.bits_per_second().is_empty());
        meter.add(1000);
        std::thread::sleep(std::time::Duration::from_millis(1010));
        seconds.poll(&meter);
        seconds.poll(&meter);
        let rates = seconds.bits_per_second();
        assert_eq!(rates.len(), 1);
        assert!((7000.0..=8000.0).contains(&rates[0]), "{rates:?}");
    }
}
