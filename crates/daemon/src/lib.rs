//! podshaper's node daemon: the only privileged part. Owns the pinned shaper
//! state (see `podshaper_shaper::Node`) and serves the gRPC API on a Unix
//! socket and, optionally, on TCP with mutual TLS; serves metrics and a
//! read-only JSON status page.

pub mod custom;
pub mod metrics;
pub mod server;
pub mod service;
mod status_page;
pub mod waiting;

pub use server::{run, DaemonConfig};
