//! `podshaper demo`: the flags, and the demo's lines as it goes
//! (`podshaper_bench::demo`).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use podshaper_bench::demo::{self, DemoOptions};

use crate::signals::Signals;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The first limit.
    #[arg(long, default_value = "100mbit")]
    first: String,
    /// The limit it is changed to, live.
    #[arg(long, default_value = "30mbit")]
    second: String,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

pub fn run(args: DemoArgs, signals: Signals) -> Result<ExitCode> {
    let options = DemoOptions {
        first: args.first.parse()?,
        second: args.second.parse()?,
        seconds: args.seconds,
    };
    println!(
        "podshaper demo: one TCP flow from a cgroup in network namespace A to B, over a veth pair"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    signals.handle(move |_| flag.store(true, Ordering::Relaxed));
    let phases = demo::run(&options, stop, &mut |event| println!("{event}"))?;
    print!("{}", demo::summary(&phases));
    Ok(ExitCode::SUCCESS)
}
