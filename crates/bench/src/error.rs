//! What can end a bench run.

use std::io;

use podshaper_netlab::NetnsError;
use podshaper_shaper::ingress_queue::QueueError;
use podshaper_shaper::{CgroupError, ShaperError};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A signal set the stop flag: what the bench made is removed as its
    /// values drop.
    #[error("interrupted: stopped, and removed what the bench made")]
    Interrupted,
    /// A signal ended the demo.
    #[error("interrupted")]
    DemoInterrupted,
    #[error("unknown mechanism {0:?}: expected podshaper, tbf or none")]
    UnknownMechanism(String),
    #[error("unknown direction {0:?}: expected egress or ingress")]
    UnknownDirection(String),
    #[error("invalid round-trip time {value:?}: {reason}")]
    Rtt { value: String, reason: String },
    #[error("invalid short connections {value:?}: {reason}")]
    Short { value: String, reason: String },
    #[error(
        "--seconds ({seconds}) must be at least one more than --warmup ({warmup}), which may not be negative"
    )]
    Window { seconds: f64, warmup: f64 },
    #[error(transparent)]
    Rate(#[from] podshaper_rate::ParseError),
    #[error(transparent)]
    Shaper(#[from] ShaperError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Lab(#[from] NetnsError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Io(#[from] io::Error),
    /// An I/O error, with what was being done.
    #[error("{what}")]
    IoDoing {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("tc {args} failed: {stderr}")]
    Tc { args: String, stderr: String },
    #[error("the receiver's report")]
    ReceiverReport(#[source] serde_json::Error),
    #[error("the short connections' report")]
    SenderReport(#[source] serde_json::Error),
    #[error("cannot enable BPF run-time statistics: {0}")]
    Stats(String),
    #[error("cannot tell the limited cgroup's level in the hierarchy")]
    CgroupLevel,
    #[error("the daemon exited with {0}")]
    DaemonExited(std::process::ExitStatus),
    #[error("the daemon did not come up")]
    DaemonNotUp,
    #[error(transparent)]
    Connect(#[from] podshaper_api::ConnectError),
    /// A request the daemon under test refused.
    #[error("{what}")]
    Request {
        what: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("{0}")]
    Proc(&'static str),
    #[error("bench pods: {0}")]
    Pods(String),
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    #[error(
        "--plot needs podshaper built with the cargo feature `plot` (cargo build --features plot)"
    )]
    PlotNotBuilt,
    /// What was being measured when `source` happened.
    #[error("{what}")]
    During {
        what: String,
        #[source]
        source: Box<BenchError>,
    },
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::IoDoing { what, source }
    }

    pub(crate) fn during(self, what: impl Into<String>) -> Self {
        Self::During {
            what: what.into(),
            source: Box::new(self),
        }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
