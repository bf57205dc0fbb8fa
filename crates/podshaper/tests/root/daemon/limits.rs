//! Limits on live traffic through the daemon: a connection open before its
//! limit, a cgroup attached again after a detach, a rate kept while other
//! cgroups' limits change, limits changed and lifted on an open connection.

use std::thread;
use std::time::Duration;

use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::{assert_ratio, measure_with, unique_port, Flow, Limiter};

/// A cgroup limited on ingress while its connection is open, as when an
/// operator annotates a running pod: the open socket gets the short delayed
/// ACK too (the daemon's TCP iterator), not only sockets opened after the
/// limit (the sockops program). Through the policer alone (a hostNetwork
/// pod's ingress; the queue is off here) one cubic flow that kept the
/// kernel's delayed ACK got 0.57-0.73 of 1G (three runs; 0.94-0.98 with it;
/// docs/design/ingress.md, "The receiver's delayed ACK").
#[test]
fn a_connection_open_before_its_ingress_limit_gets_the_short_delayed_ack() {
    require_root!();
    let root = TestRoot::new("delack");
    let app = root.make("app");
    let path = app.path().display().to_string();
    let daemon = TestDaemon::start(&root.path, &["--ingress-queue", "false"]);
    let flow = Flow {
        seconds: 8.0,
        skip: 3.5,
        ..Flow::tcp(false)
    };
    let rate = thread::scope(|s| {
        let measured = s.spawn(|| measure_with(&Limiter::Cgroup(&app), &flow));
        // the sender connects 0.2 s after the receiver starts: by now the
        // connection runs, unlimited
        thread::sleep(Duration::from_millis(1500));
        daemon.ok(&["attach", "--cgroup", &path, "--ingress", "1G"]);
        measured.join()
    });
    let rate = rate.unwrap_or_else(|_| panic!("the measurement failed"));
    assert_ratio(
        "one cubic flow limited mid-connection, policer alone",
        rate,
        1e9,
        0.80,
        1.05,
    );
}

/// A cgroup's shaping state is the kernel's cgroup storage, which outlives
/// a detach (it lives as long as the cgroup): attached again, the cgroup
/// starts with counters from zero and takes its new limit. At 1 Gbit/s most
/// packets pass on the CPUs' slices of the bucket (`cpu_credits`), whose
/// counts the daemon adds in: the counters must hold what was sent.
#[test]
fn a_cgroup_attached_again_after_a_detach_starts_afresh() {
    require_root!();
    let root = TestRoot::new("again");
    let app = root.make("app");
    let path = app.path().display().to_string();
    let daemon = TestDaemon::start(&root.path, &[]);
    let counter = |daemon: &TestDaemon, name: &str| {
        let listed = daemon.list();
        assert_eq!(listed.len(), 1, "{listed:?}");
        listed[0]["counters"][name].as_u64()
    };
    let egress_bytes = |daemon: &TestDaemon| counter(daemon, "egress_bytes");

    daemon.ok(&["attach", "--cgroup", &path, "--egress", "1G"]);
    let flow = Flow::tcp(true);
    let rate = measure_with(&Limiter::Cgroup(&app), &flow);
    assert_ratio("first attach", rate, 1e9, 0.90, 1.05);
    // IP bytes, against the receiver's payload over the measured seconds
    // (low), and the limit over the whole run plus its burst (high)
    let counted = egress_bytes(&daemon).unwrap_or(0) as f64;
    let (low, high) = (
        0.9 * rate * flow.seconds / 8.0,
        1.05 * 1e9 * flow.seconds / 8.0 + 4e6,
    );
    assert!(
        (low..high).contains(&counted),
        "counted {counted:.0} egress bytes, expected {low:.0}..{high:.0}"
    );
    // the direction without a limit is counted too (the flow's ACKs)
    let acks = counter(&daemon, "ingress_packets").unwrap_or(0);
    assert!(acks > 1_000, "counted {acks} packets in");

    daemon.ok(&["detach", "--cgroup", &path]);
    daemon.ok(&["attach", "--cgroup", &path, "--egress", "40M"]);
    assert_eq!(
        egress_bytes(&daemon),
        Some(0),
        "counters kept across a detach"
    );
    let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(true));
    assert_ratio("attached again", rate, 40e6, 0.90, 1.05);
    let counted = egress_bytes(&daemon).unwrap_or(0);
    assert!(
        counted > 5_000_000,
        "counted {counted} bytes after attaching again"
    );
}

/// Every limit change on the node moves the version all the programs check,
/// and with it every CPU's slice of every bucket; what is left of a slice
/// taken at the same rate must go back to its bucket, or a busy node's limit
/// changes would eat the limit of every pod sending beside them.
#[test]
fn a_cgroup_keeps_its_rate_while_other_cgroups_limits_change() {
    require_root!();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let root = TestRoot::new("others");
    let app = root.make("app");
    let other = root.make("other");
    let (path, other_path) = (
        app.path().display().to_string(),
        other.path().display().to_string(),
    );
    let daemon = TestDaemon::start(&root.path, &[]);
    daemon.ok(&["attach", "--cgroup", &path, "--egress", "1G"]);
    let (done, changes) = (AtomicBool::new(false), AtomicUsize::new(0));
    let rate = std::thread::scope(|scope| {
        scope.spawn(|| {
            let rates = ["50M", "60M"];
            while !done.load(Ordering::Relaxed) {
                let n = changes.fetch_add(1, Ordering::Relaxed);
                daemon.ok(&["attach", "--cgroup", &other_path, "--egress", rates[n % 2]]);
            }
        });
        let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(true));
        done.store(true, Ordering::Relaxed);
        rate
    });
    let changes = changes.load(Ordering::Relaxed);
    assert!(
        changes > 100,
        "only {changes} limit changes beside the flow"
    );
    // 1.000 in two runs; 0.934 when every change dropped the slices
    assert_ratio(
        &format!("beside {changes} limit changes of another cgroup"),
        rate,
        1e9,
        0.96,
        1.05,
    );
}

#[test]
fn limits_change_and_lift_on_a_connection_that_stays_open() {
    require_root!();
    use std::net::{SocketAddr, TcpListener};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use podshaper_netlab::traffic::{self, Until};
    use podshaper_netlab::{Meter, NetnsPair};

    let root = TestRoot::new("live");
    let app = root.make("app");
    let path = app.path().display().to_string();
    let daemon = TestDaemon::start(&root.path, &[]);
    // an ingress limit beside, so that lifting the egress one leaves the
    // cgroup attached
    let ingress = ["--ingress", "1G"];
    daemon.ok(&[
        &["attach", "--cgroup", &path, "--egress", "40M"][..],
        &ingress,
    ]
    .concat());

    let _turn = common::traffic_turn();
    let lab = NetnsPair::create("live").expect("lab");
    lab.set_congestion_control("cubic").expect("cubic");
    let port = unique_port();
    let meter = Meter::default();
    let until = Until::after(Duration::from_secs(18));
    let sink = {
        let (meter, until) = (meter.clone(), until.clone());
        let bind = SocketAddr::new(NetnsPair::addr_b(false), port);
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            traffic::tcp_sink(TcpListener::bind(bind)?, meter, &until)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut cmd = common::podshaper();
    app.spawn_inside(&mut cmd).expect("spawn inside");
    cmd.args([
        "traffic",
        "tcp-send",
        "--netns",
        lab.a(),
        "--seconds",
        "16",
        "--to",
    ])
    .arg(SocketAddr::new(NetnsPair::addr_b(false), port).to_string())
    .stdout(std::process::Stdio::null());
    let source = common::ChildGuard::spawn(&mut cmd);

    let window = |d: Duration| {
        let a = meter.read();
        std::thread::sleep(d);
        meter.read().bits_per_sec_since(&a)
    };
    // a command to the daemon, then the rate 0.5 s after it, over 2 s
    let rate_after = |args: &[&str]| {
        daemon.ok(args);
        std::thread::sleep(Duration::from_millis(500));
        window(Duration::from_secs(2))
    };
    let egress_15m = [
        &["attach", "--cgroup", &path, "--egress", "15M"][..],
        &ingress,
    ]
    .concat();
    std::thread::sleep(Duration::from_millis(1500));
    let limited = window(Duration::from_secs(2));
    let changed = rate_after(&egress_15m);
    // the egress limit alone lifted: the socket's pacing goes with it
    let egress_lifted = rate_after(&[&["attach", "--cgroup", &path][..], &ingress].concat());
    let limited_again = rate_after(&egress_15m);
    let lifted = rate_after(&["detach", "--cgroup", &path]);
    drop(source);
    until.stop.store(true, Ordering::Relaxed);
    let _ = sink.join();

    assert_ratio("before the change", limited, 40e6, 0.85, 1.10);
    assert_ratio("changed live", changed, 15e6, 0.85, 1.10);
    assert!(
        egress_lifted > 500e6,
        "the open connection stayed paced after its egress limit was lifted: {egress_lifted:.0} bit/s"
    );
    assert_ratio("limited again", limited_again, 15e6, 0.85, 1.10);
    assert!(
        lifted > 500e6,
        "the open connection stayed limited after detach: {lifted:.0} bit/s"
    );
}
