//! `podshaper run`: start a command under a limit, with no daemon.
//!
//! Makes a transient cgroup, attaches the shaper to it, starts the command
//! inside, passes signals on, and on exit removes everything it made.

use std::process::{Command, ExitCode, ExitStatus};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use podshaper_shaper::{Shaper, TransientCgroup};

use super::limits::LimitArgs;
use crate::signals::Signals;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    limits: LimitArgs,
    /// The command to run, and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run(args: RunArgs, signals: Signals) -> Result<ExitCode> {
    let limits = args.limits.limits()?;
    if limits.is_unlimited() {
        bail!("nothing to limit: give --egress RATE and/or --ingress RATE");
    }
    let Some((program, program_args)) = args.command.split_first() else {
        bail!("no command given after --");
    };

    let cgroup = TransientCgroup::create(&format!("podshaper-run-{}", std::process::id()))
        .context("cannot create a cgroup for the command")?;
    let mut shaper = Shaper::load()?;
    shaper.set_limits(cgroup.cgroup().id(), &limits)?;
    let attachment = shaper.attach(cgroup.cgroup())?;
    tracing::info!(cgroup = %cgroup.cgroup().path().display(), ?limits, "limits attached");

    let mut command = Command::new(program);
    command.args(program_args);
    cgroup.cgroup().spawn_inside(&mut command)?;
    signals.unblock_in_child(&mut command);

    // Signals that reach us go to the command; we clean up once it exits.
    let forward = Arc::new(Mutex::new(Forward::default()));
    let handler_forward = Arc::clone(&forward);
    signals.handle(move |signal| {
        if let Ok(mut f) = handler_forward.lock() {
            f.signal(signal);
        }
    });

    let status = match command.spawn() {
        Ok(mut child) => {
            if let Ok(mut f) = forward.lock() {
                f.started(Pid::from_raw(child.id() as i32));
            }
            child.wait().context("cannot wait for the command")
        }
        Err(e) => Err(e).with_context(|| format!("cannot start {program:?}")),
    };
    if let Ok(mut f) = forward.lock() {
        f.child = None;
    }

    // Cleanup runs whatever happened to the command.
    match shaper.counters(cgroup.cgroup().id()) {
        Ok(c) => tracing::info!(?c, "final counters"),
        Err(e) => tracing::warn!(error = %e, "cannot read counters"),
    }
    let detached = shaper.detach(attachment);
    drop(shaper);
    let removed = cgroup.remove();
    let status = status?;
    detached?;
    removed?;
    Ok(exit_code(status))
}

/// Where signals go: to the command once it runs. One that arrives while it
/// is still starting is held and delivered as soon as its pid is known.
#[derive(Debug, Default)]
struct Forward {
    child: Option<Pid>,
    pending: Option<Signal>,
}

impl Forward {
    fn signal(&mut self, signal: Signal) {
        match self.child {
            Some(pid) => {
                let _ = kill(pid, signal);
            }
            None => self.pending = Some(signal),
        }
    }

    fn started(&mut self, pid: Pid) {
        self.child = Some(pid);
        if let Some(signal) = self.pending.take() {
            let _ = kill(pid, signal);
        }
    }
}

/// The command's exit status, or 128 + the signal that killed it (as a shell reports it).
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
