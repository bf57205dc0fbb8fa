//! One module per subcommand.

pub mod bench;
pub mod bench_change;
pub mod bench_daemon;
pub mod bench_open;
pub mod bpf_stats;
pub mod cleanup;
pub mod client;
pub mod controller;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod limits;
pub mod run;
pub mod traffic;
