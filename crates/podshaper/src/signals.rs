//! Ctrl-C, SIGTERM and SIGHUP, turned from interruptions into events: they are
//! blocked in every thread and taken one at a time by a handler thread, so
//! that cleanup code always gets to run.

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
