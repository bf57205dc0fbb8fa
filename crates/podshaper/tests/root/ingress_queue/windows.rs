//! The receive window a queued pod's sockets offer: clamped to fit their
//! flow's FIFO while the ingress limit and the queue are there, given back
//! when they go.

use std::thread;
use std::time::Duration;

use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::{measure_flows, Flow, Limiter};
use podshaper_rate::Rate;
use podshaper_shaper::ingress_queue::flow_queue_bytes;
use podshaper_shaper::{Cgroup, DirectionLimit};

/// The window clamp of one cubic flow into `app`'s queued namespace, read
/// by the receiver as the flow ended; `change` (a daemon command) runs 1.5 s
/// into the flow (the sender connects 0.2 s after the receiver starts).
fn window_clamp_after(daemon: &TestDaemon, app: &Cgroup, change: Option<&[&str]>) -> u64 {
    let flow = Flow {
        seconds: 6.0,
        ..Flow::tcp(false)
    };
    let received = thread::scope(|s| {
        let measured = s.spawn(|| measure_flows(&Limiter::Cgroup(app), &flow));
        if let Some(args) = change {
            thread::sleep(Duration::from_millis(1500));
            daemon.ok(args);
        }
        measured.join()
    });
    let received = received.unwrap_or_else(|_| panic!("the measurement failed"));
    eprintln!(
        "window clamps after {change:?}: {:?}",
        received.window_clamps
    );
    match received.window_clamps[..] {
        [clamp] => clamp,
        ref clamps => panic!("expected one flow's window clamp, got {clamps:?}"),
    }
}

/// The most window a receiving socket may offer under an ingress limit of
/// 10M behind the queue: 7/8 of its flow's FIFO plus twice the
/// bandwidth-delay product over a round trip of at most 10 ms (what the
/// daemon's iterator sets on an open socket; the sockops program's ramp
/// stays within one product).
fn clamp_at_most_10m() -> u64 {
    let rate: Rate = "10M"
        .parse()
        .unwrap_or_else(|e| panic!("10M is a rate: {e}"));
    let fifo = flow_queue_bytes(&DirectionLimit::new(rate, None));
    fifo * 7 / 8 + 2 * rate.bytes_per_sec() / 100
}

/// The least window clamp of a socket left to the kernel: its own clamp for
/// the buffer a socket starts with (128 KiB here) is above this.
const UNCLAMPED_AT_LEAST: u64 = 64 * 1024;

/// A receiving socket's window clamp, set from the sockops program while
/// its cgroup has an ingress limit: within 7/8 of its flow's FIFO plus at
/// most twice the bandwidth-delay product over the handshake's round trip (bounded
/// here by 10 ms, for a loaded machine). Set on connections open before the
/// limit came too (the daemon's TCP iterator), and given back, the window
/// the socket's buffer makes, when the limit goes, by a change of limits
/// (the sockops program) or a detach (the iterator): a clamp left behind
/// would hold the connection to a FIFO's worth per round trip for its life.
#[test]
fn a_receive_window_follows_the_ingress_limit_and_is_given_back() {
    require_root!();
    let root = TestRoot::new("rwnd");
    let app = root.make("app");
    let path = app.path().display().to_string();
    let daemon = TestDaemon::start(&root.path, &[]);
    let clamped_at_most = clamp_at_most_10m();
    let unclamped_at_least = UNCLAMPED_AT_LEAST;

    daemon.ok(&["attach", "--cgroup", &path, "--ingress", "10M"]);
    let limited = window_clamp_after(&daemon, &app, None);
    assert!(
        (1..=clamped_at_most).contains(&limited),
        "under an ingress limit of 10M the window clamp was {limited} bytes, not at most {clamped_at_most}"
    );

    let lifted = window_clamp_after(
        &daemon,
        &app,
        Some(&["attach", "--cgroup", &path, "--egress", "1G"]),
    );
    assert!(
        lifted >= unclamped_at_least,
        "the ingress limit lifted mid-connection (egress kept) left a window clamp of {lifted} bytes"
    );

    daemon.ok(&["attach", "--cgroup", &path, "--ingress", "10M"]);
    let detached = window_clamp_after(&daemon, &app, Some(&["detach", "--cgroup", &path]));
    assert!(
        detached >= unclamped_at_least,
        "a detach mid-connection left a window clamp of {detached} bytes"
    );

    let limited_late = window_clamp_after(
        &daemon,
        &app,
        Some(&["attach", "--cgroup", &path, "--ingress", "10M"]),
    );
    assert!(
        (1..=clamped_at_most).contains(&limited_late),
        "a connection open before its ingress limit of 10M ended with a window clamp of {limited_late} bytes, not at most {clamped_at_most}"
    );
}

/// Through the policer alone (`--ingress-queue false`: no queue in front of
/// the pod) a receiving socket's window is left to the kernel: there is no
/// FIFO for it to fit, and the policer delays nothing, so no window would
/// hold the sender to the rate (docs/design/ingress.md).
#[test]
fn a_receive_window_is_not_clamped_without_a_queue_in_front() {
    require_root!();
    let root = TestRoot::new("rwnd-policer");
    let app = root.make("app");
    let path = app.path().display().to_string();
    let daemon = TestDaemon::start(&root.path, &["--ingress-queue", "false"]);
    daemon.ok(&["attach", "--cgroup", &path, "--ingress", "10M"]);
    let window = window_clamp_after(&daemon, &app, None);
    assert!(
        window >= UNCLAMPED_AT_LEAST,
        "with no queue in front, an ingress limit of 10M left a window clamp of {window} bytes"
    );
}

/// A daemon restarted with `--ingress-queue false` over one that built a
/// pod's queue does not keep that queue up, so it takes back the word that
/// a queue is in front of the pod (the map is pinned): the pod's new
/// connections keep the windows the kernel gives them.
#[test]
fn a_daemon_restarted_without_queues_leaves_windows_unclamped() {
    require_root!();
    let root = TestRoot::new("rwnd-restart");
    let app = root.make("app");
    let path = app.path().display().to_string();
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let clamped_at_most = clamp_at_most_10m();

    daemon.ok(&["attach", "--cgroup", &path, "--ingress", "10M"]);
    let queued = window_clamp_after(&daemon, &app, None);
    assert!(
        (1..=clamped_at_most).contains(&queued),
        "behind the queue the window clamp was {queued} bytes, not at most {clamped_at_most}"
    );

    daemon.restart_with(&["--ingress-queue", "false"]);
    let policed = window_clamp_after(&daemon, &app, None);
    assert!(
        policed >= UNCLAMPED_AT_LEAST,
        "after a restart with the queue off the window clamp was {policed} bytes"
    );
}
