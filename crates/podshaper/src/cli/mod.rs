//! One module per subcommand.

pub mod demo;
pub mod limits;
pub mod run;
pub mod traffic;
