//! Turns on the machine: a test that measures a rate has it to itself; tests
//! that keep it busy without measuring share it with each other.

use std::process::{Command, Output};

/// Held while a test measures a rate: measurements take turns, across test
/// threads and test processes alone. On 2 cores one 1 Gbit/s flow keeps both
/// busy (sender, receiver, softirq), so two measurements at once measure the
/// machine, not the shaper (CI failed cells at 0.79-0.89 that read 0.97-1.00
/// alone). A `flock` on one file serializes threads too: each turn opens its
/// own file description.
pub struct TrafficTurn(nix::fcntl::Flock<std::fs::File>);

pub fn traffic_turn() -> TrafficTurn {
    let turn = TrafficTurn(turn_lock(nix::fcntl::FlockArg::LockExclusive));
    // The kernel tears the last turn's namespaces down in a worker after
    // they are gone from /run/netns, which takes a core for a moment: a
    // measurement waits for it, 2 s at most, as the bench does.
    podshaper_bench::lab::settle_within(std::time::Duration::from_secs(2));
    turn
}

/// Held while a test keeps the machine busy without measuring a rate (an
/// API server and etcd starting, a soak, an attach storm): such tests share
/// the machine with each other, never with a measurement (the lock that
/// [`TrafficTurn`] takes whole, shared). In whole root-suite runs, seconds
/// of measurements read 0.854-0.924 of their limits with other tests beside
/// them, where alone they read 0.98-1.00 (docs/decisions/0047). A test
/// that holds one never asks for a traffic turn while it does (it would
/// wait for itself); it may take a second busy turn (`flock` grants a
/// shared lock beside shared ones even while an exclusive one waits).
pub struct BusyTurn(nix::fcntl::Flock<std::fs::File>);

pub fn busy_turn() -> BusyTurn {
    BusyTurn(turn_lock(nix::fcntl::FlockArg::LockShared))
}

fn turn_lock(kind: nix::fcntl::FlockArg) -> nix::fcntl::Flock<std::fs::File> {
    const LOCK: &str = "/run/podshaper-tests-traffic.lock";
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
    {
        Ok(f) => f,
        Err(e) => panic!("cannot open {LOCK}: {e}"),
    };
    match nix::fcntl::Flock::lock(file, kind) {
        Ok(lock) => lock,
        Err((_, e)) => panic!("cannot lock {LOCK}: {e}"),
    }
}

/// Runs a command that measures rates, in its turn; its output.
pub fn output_in_turn(command: &mut Command) -> Output {
    let _turn = traffic_turn();
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}
