//! `--egress`, `--ingress` and `--burst`, parsed into [`Limits`].

use anyhow::Result;
use clap::Args;
use podshaper_rate::{ByteSize, Rate};
use podshaper_shaper::{DirectionLimit, Limits};

/// The limit flags shared by the commands that set limits.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Limit on what the cgroup sends, e.g. 100M, 1G, 500k, 10mbit (bits/s).
    ///
    /// RATE is in bits per second, 1k to 1P: a Kubernetes quantity as
    /// resource.ParseQuantity reads it for the kubernetes.io/*-bandwidth
    /// annotations (10M, 1.5G, 500k, 2Mi, 1e6; m is milli; a fraction of a bit
    /// rounds up), or a tc rate (10mbit, 1gbit, 500kbit, 1mibit; 10mbps is 10
    /// megabytes/s, as in tc). Beyond what the annotations accept, RATE may
    /// carry surrounding whitespace and tc units; and it is valued exactly, so
    /// a quantity the kubelet takes only because its Value() wraps around the
    /// int64 range (-4Pi reads as 6917529028 there) is refused.
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub egress: Option<String>,
    /// Limit on what the cgroup receives, e.g. 50M, 10mbit (bits/s).
    ///
    /// RATE as for --egress.
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub ingress: Option<String>,
    /// Bucket depth in bytes, e.g. 256Ki, 1Mi (default: 25 ms at the rate, at least 128Ki).
    ///
    /// SIZE is in bytes, 4Ki to 1Gi: a Kubernetes quantity (256Ki, 1Mi, 100k)
    /// or a tc size (64kb and 64K are 64 KiB, 1mb, 1500b; 64k is the
    /// quantity, 64000 bytes), surrounding whitespace allowed; the
    /// podshaper.io/*-burst annotations take only the quantity.
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
