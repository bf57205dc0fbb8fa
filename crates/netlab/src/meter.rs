//! Counts bytes as they arrive, for rates over any interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A shared byte counter. Clones count into the same total.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    bytes: Arc<AtomicU64>,
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

    pub fn read(&self) -> Reading {
        Reading {
            at: Instant::now(),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
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
