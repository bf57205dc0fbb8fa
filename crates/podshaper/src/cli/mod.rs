//! One module per subcommand.

pub mod bench;
pub mod cleanup;
pub mod client;
pub mod controller;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod kubectl;
pub mod limits;
pub mod reference;
pub mod run;
pub mod status_output;
pub mod traffic;
