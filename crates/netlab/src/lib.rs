//! A small network lab: network namespaces joined by veth pairs or a delay
//! line (`delay`: a round-trip time made in user space), and a
//! traffic source and sink that measure what got through.
//!
//! Used by `podshaper demo`, `podshaper bench` and the integration tests.
//! Only addresses from the benchmarking ranges are used (198.18.0.0/15 and
//! 2001:2::/48), and only inside namespaces this crate made.

pub mod delay;
pub mod latency;
pub mod meter;
pub mod netns;
pub mod short;
pub mod traffic;
mod tun;
pub mod window;

pub use delay::{DelayConfig, DelayLine};
pub use meter::Meter;
pub use netns::{NetnsError, NetnsPair};
