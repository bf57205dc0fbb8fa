//! Ctrl-C, SIGTERM and SIGHUP, turned from interruptions into events: they are
//! blocked in every thread and taken one at a time by a handler thread, so
//! that cleanup code always gets to run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use anyhow::Context;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

const HANDLED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The blocked signals. Hand it to the code that decides what they mean.
#[derive(Debug)]
pub struct Signals {
    set: SigSet,
}

impl Signals {
    /// Blocks the handled signals in the calling thread (call it first in main).
    pub fn block() -> anyhow::Result<Self> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(s);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .context("cannot block signals")?;
        Ok(Self { set })
    }

    /// Calls `on_signal` on a background thread for each signal that arrives.
    pub fn handle(self, mut on_signal: impl FnMut(Signal) + Send + 'static) {
        thread::spawn(move || loop {
            match self.set.wait() {
                Ok(signal) => on_signal(signal),
                Err(e) => {
                    tracing::warn!(error = %e, "sigwait failed; signals are no longer handled");
                    return;
                }
            }
        });
    }

    /// Gives the handled signals their default behaviour back (they end the
    /// process), for commands with nothing to clean up: blocked and never
    /// waited for, Ctrl-C would do nothing.
    pub fn unblock(self) -> anyhow::Result<()> {
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&self.set), None)
            .context("cannot unblock signals")
    }

    /// For commands whose cleanup is in their values' `Drop` (network
    /// namespaces, cgroups, pins): the first signal sets the returned flag,
    /// which the command checks between steps to stop and clean up; a second
    /// one ends the process at once, leaving what it made.
    pub fn stop_flag(self, command: &'static str) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        self.handle(move |signal| {
            if flag.swap(true, Ordering::SeqCst) {
                eprintln!("podshaper {command}: {signal} again: stopping now, without cleaning up");
                std::process::exit(130);
            }
            eprintln!(
                "podshaper {command}: {signal}: stopping after the current step and removing what it made (again to stop now)"
            );
        });
        stop
    }

    /// Unblocks the handled signals in a child between fork and exec, so that
    /// the command it runs gets the default behaviour back.
    pub fn unblock_in_child(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let set = self.set;
        // SAFETY: pthread_sigmask is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)
                    .map_err(std::io::Error::from)
            });
        }
    }
}
