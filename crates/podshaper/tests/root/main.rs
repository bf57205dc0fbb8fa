//! The tests that drive the real `podshaper` binary on the real kernel: they
//! load BPF programs, make network namespaces and cgroups, and measure
//! traffic, so they need root. One binary, one module per area:
//! `cargo test -p podshaper --test root daemon::` runs the daemon's.
//!
//! Every test starts with [`require_root!`]. Not run as root, a test says it
//! is skipped and passes. As root, it waits for its module's turn: the tests
//! of one module run beside each other (the harness's threads), never beside
//! another module's, so each module has the machine as a binary of its own
//! would. Some count every BPF program, map and link on the machine
//! (daemon_cycles, fault_storm, soak), others saturate the CPUs (demo) or
//! measure rates that a neighbour would disturb (bench). The harness runs
//! the tests in the order of their names, so a module's tests run together.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Starts a test that needs root: returns from it, after a line on stderr
/// that says so, when the process is not root; else holds its module's turn
/// until the test ends.
macro_rules! require_root {
    () => {
        let Some(_module_turn) = $crate::root_test(module_path!()) else {
            return;
        };
    };
}

#[path = "../common/mod.rs"]
mod common;

mod accuracy;
mod bench;
mod controller;
mod daemon;
mod daemon_cycles;
mod dashboard;
mod delay_line;
mod demo;
mod fault_storm;
mod faults;
mod host_queue;
mod ingress_queue;
mod open_connections;
mod run_command;
mod shaping;
mod short_connections;
mod soak;

/// The module whose tests run now, and how many of them run.
struct Room {
    module: Option<&'static str>,
    inside: usize,
}

static ROOM: Mutex<Room> = Mutex::new(Room {
    module: None,
    inside: 0,
});
static ROOM_EMPTIED: Condvar = Condvar::new();

fn room() -> MutexGuard<'static, Room> {
    // a test that panics holds no lock on it: the room stays consistent
    ROOM.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running test's place in its module's turn.
pub struct ModuleTurn;

impl Drop for ModuleTurn {
    fn drop(&mut self) {
        let mut room = room();
        room.inside -= 1;
        if room.inside == 0 {
            room.module = None;
            ROOM_EMPTIED.notify_all();
        }
    }
}

/// What [`require_root!`] runs: `None` (the test is skipped, and says so)
/// when the process is not root, else the test's place in the turn of its
/// module (the first name under the crate in `module_path`), once the tests
/// of any other module have ended.
pub fn root_test(module_path: &'static str) -> Option<ModuleTurn> {
    if !nix::unistd::Uid::effective().is_root() {
        // the harness names each test's thread after the test
        let current = std::thread::current();
        let test = current.name().unwrap_or(module_path);
        // straight to stderr, past the harness's capture of `eprintln!`:
        // a skipped test passes, and its line is the only sign of it
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {test} needs root (BPF programs, network namespaces)"
        );
        return None;
    }
    let module = module_path.split("::").nth(1).unwrap_or(module_path);
    let mut room = room();
    while room.module.is_some_and(|m| m != module) {
        room = ROOM_EMPTIED
            .wait(room)
            .unwrap_or_else(PoisonError::into_inner);
    }
    room.module = Some(module);
    room.inside += 1;
    Some(ModuleTurn)
}
