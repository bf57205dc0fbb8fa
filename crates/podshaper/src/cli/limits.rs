//! `--egress`, `--ingress` and `--burst`, parsed into [`Limits`].

use anyhow::Result;
use clap::Args;
use podshaper_rate::{ByteSize, Rate};
use podshaper_shaper::{DirectionLimit, Limits};

/// The limit flags shared by the commands that set limits.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Limit on what the cgroup sends, e.g. 100M, 1G, 500k, 10mbit (bits/s).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub egress: Option<String>,
    /// Limit on what the cgroup receives, e.g. 50M, 10mbit (bits/s).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub ingress: Option<String>,
    /// Bucket depth in bytes, e.g. 256Ki, 1Mi (default: 25 ms at the rate, at least 128Ki).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub burst: Option<String>,
}

impl LimitArgs {
    /// The limits asked for. Parsed here rather than by clap so that a bad
    /// value gives one line that names it.
    pub fn limits(&self) -> Result<Limits> {
        let burst = self
            .burst
            .as_deref()
            .map(str::parse::<ByteSize>)
            .transpose()?;
        let direction = |rate: &Option<String>| -> Result<Option<DirectionLimit>> {
            Ok(match rate {
                Some(r) => Some(DirectionLimit::new(r.parse::<Rate>()?, burst)),
                None => None,
            })
        };
        Ok(Limits {
            egress: direction(&self.egress)?,
            ingress: direction(&self.ingress)?,
        })
    }
}
