//! The queue's life: installed once the pod's processes are there, changed
//! live, kept through kill -9 and adopted, removed on detach, never put on
//! the host's namespace; tried again when tc fails to build it or to take it
//! away.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::{in_ns, pod_process, queue_class, stdout, wait_for_rate};
use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::{has_ingress_queue, ChildGuard};
use podshaper_netlab::netns::NetnsPair;
use podshaper_shaper::ingress_queue::{flow_filter, IFB_NAME};

/// The id of the program the queue's flow classifier runs.
fn flow_filter_program(ns: &str) -> Option<u32> {
    let show = stdout(&in_ns(
        Some(ns),
        &[
            "tc", "-json", "filter", "show", "dev", IFB_NAME, "parent", "1:", "prio", "3",
        ],
    ));
    flow_filter(&show).map(|(program, _handle)| program)
}

#[test]
fn the_daemon_queues_a_pods_ingress_changes_it_live_and_removes_it() {
    require_root!();
    let root = TestRoot::new("queue");
    let pod = root.make("pod");
    let host_pod = root.make("hostnet");
    let lab = NetnsPair::create("q").unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let mut daemon = TestDaemon::start(&root.path, &[]);

    let _pod_process = pod_process(&pod, lab.a());
    // a hostNetwork pod's process: in the host's namespace
    let mut cmd = Command::new("sleep");
    cmd.arg("120");
    host_pod
        .spawn_inside(&mut cmd)
        .unwrap_or_else(|e| panic!("cannot start in {}: {e}", host_pod.path().display()));
    let _host_process = ChildGuard::spawn(&mut cmd);
    let host_had_ifb = has_ingress_queue(None);

    let pod_path = pod.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "100M"]);
    wait_for_rate(lab.a(), "100Mbit");
    let filters = stdout(&in_ns(
        Some(lab.a()),
        &["tc", "filter", "show", "dev", "veth0", "parent", "ffff:"],
    ));
    assert!(
        filters.contains(IFB_NAME),
        "veth0 does not redirect to the queue: {filters}"
    );
    // bulk packets go to their flow's FIFO: the shaper's classifier, pinned
    // by the daemon, on the htb root, and 16 flow classes with a FIFO each
    let flow_filter = stdout(&in_ns(
        Some(lab.a()),
        &["tc", "filter", "show", "dev", IFB_NAME],
    ));
    assert!(
        flow_filter.contains("podshaper_flow"),
        "no flow classifier on the queue: {flow_filter}"
    );
    let fifos = stdout(&in_ns(
        Some(lab.a()),
        &["tc", "qdisc", "show", "dev", IFB_NAME],
    ));
    assert_eq!(fifos.matches("bfifo").count(), 17, "{fifos}");
    // windows offered before the limit may shrink to the clamp (6.5+)
    let shrink = || {
        stdout(&in_ns(
            Some(lab.a()),
            &["cat", "/proc/sys/net/ipv4/tcp_shrink_window"],
        ))
        .trim()
        .to_string()
    };
    assert_eq!(shrink(), "1", "the pod's namespace keeps offered windows");

    // a live change is one tc class change, done before the reply
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "40M"]);
    assert!(
        queue_class(lab.a()).contains("rate 40Mbit "),
        "{}",
        queue_class(lab.a())
    );

    // kill -9: the queue lives in the pod's namespace and stays; a restarted
    // daemon adopts it and changes it, and its own classifier takes over
    // from the program the killed daemon loaded (tc holds that one: after
    // an upgrade it would be the older build's)
    let killed_daemons = flow_filter_program(lab.a());
    daemon.kill9();
    assert!(queue_class(lab.a()).contains("rate 40Mbit "));
    daemon.restart();
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "20M"]);
    wait_for_rate(lab.a(), "20Mbit");
    let pinned = daemon.pinned_program("flow_class");
    assert_ne!(
        killed_daemons,
        Some(pinned),
        "the restarted daemon reused the program"
    );
    assert_eq!(
        flow_filter_program(lab.a()),
        Some(pinned),
        "the queue still runs the killed daemon's classifier"
    );

    // a hostNetwork pod keeps the cgroup policer alone: nothing on the host
    let host_path = host_pod.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &host_path, "--ingress", "40M"]);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        has_ingress_queue(None),
        host_had_ifb,
        "a queue was put on the host"
    );

    // only the egress limit left: the queue goes, the cgroup stays limited
    daemon.ok(&["attach", "--cgroup", &pod_path, "--egress", "40M"]);
    assert!(
        !has_ingress_queue(Some(lab.a())),
        "the queue outlived the ingress limit"
    );
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "30M"]);
    wait_for_rate(lab.a(), "30Mbit");

    // detach: no ifb, no ingress qdisc left on the pod's interface
    daemon.ok(&["detach", "--cgroup", &pod_path]);
    assert!(
        !has_ingress_queue(Some(lab.a())),
        "the queue outlived the detach"
    );
    let qdiscs = stdout(&in_ns(
        Some(lab.a()),
        &["tc", "qdisc", "show", "dev", "veth0"],
    ));
    assert!(!qdiscs.contains("ingress"), "left behind: {qdiscs}");
    assert_eq!(shrink(), "0", "the queue's sysctl outlived it");
    daemon.ok(&["detach", "--cgroup", &host_path]);
}

/// A directory of the test's own `tc`, put first on the daemon's PATH: it
/// refuses every command while `refuse` exists, as a tc that fails for a
/// while would (a busy netlink, a module still loading), else runs the real
/// one. Removed when the test ends.
struct FailingTc {
    dir: std::path::PathBuf,
}

impl FailingTc {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("podshaper-test-tc-{}-{n}", std::process::id()));
        let real = ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("tc (iproute2) is installed");
        std::fs::create_dir_all(&dir).expect("a directory for the test's tc");
        let script = format!(
            "#!/bin/sh\nif [ -e {refuse} ]; then echo 'refused by the test' >&2; exit 1; fi\nexec {real} \"$@\"\n",
            refuse = dir.join("refuse").display()
        );
        let tc = dir.join("tc");
        std::fs::write(&tc, script).expect("the test's tc");
        std::fs::set_permissions(&tc, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("the test's tc made executable");
        Self { dir }
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        )
    }

    fn refuse(&self, refuse: bool) {
        let flag = self.dir.join("refuse");
        if refuse {
            std::fs::write(&flag, b"").expect("the refuse flag");
        } else {
            std::fs::remove_file(&flag).expect("the refuse flag removed");
        }
    }
}

impl Drop for FailingTc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A queue that could not be built (tc failed) is tried again by the
/// daemon's sweep, not given up on (a failed namespace recorded as done
/// would leave the pod with only the policer until its limit changed), and
/// no more often than the backoff allows (1, 2, 4, 8 s...):
/// a queue that keeps failing costs its tc runs and a warning now and then,
/// not every second.
#[test]
fn a_queue_that_failed_to_install_is_tried_again() {
    require_root!();
    let root = TestRoot::new("queue-retry");
    let pod = root.make("pod");
    let lab = NetnsPair::create("qr").unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let tc = FailingTc::new();
    let daemon = TestDaemon::start_with_path(&root.path, &[], Some(tc.path()));
    let _pod_process = pod_process(&pod, lab.a());

    tc.refuse(true);
    let pod_path = pod.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "100M"]);
    // eight seconds of sweeps (one a second) with tc refusing
    thread::sleep(Duration::from_secs(8));
    // (a try that fails leaves no ifb either, but one may be under way now)
    assert!(
        queue_class(lab.a()).is_empty(),
        "a queue was built although tc refused: {}",
        queue_class(lab.a())
    );
    let status: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["status", "--cgroup", &pod_path, "-o", "json"]))
            .expect("status -o json");
    assert_eq!(
        status[0]["ingress_bps"].as_u64(),
        Some(100_000_000),
        "the policer's limit is gone: {status}"
    );
    // tried at the attach, then after 1, 2 and 4 s more (t = 1, 3, 7 s):
    // four tries; a sweep that tried every second would have made nine
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    let tries = log.matches("tried again by a later sweep").count();
    assert!(
        (2..=5).contains(&tries),
        "{tries} failed tries in 8 s: {log}"
    );

    // tc works again: a later sweep (the next try is due 8 s after the
    // last) builds the queue, with no new request
    tc.refuse(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !queue_class(lab.a()).contains("rate 100Mbit ") {
        assert!(
            Instant::now() < deadline,
            "the queue was not built once tc worked again: {log}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    daemon.ok(&["detach", "--cgroup", &pod_path]);
}

/// A queue whose removal failed (the ingress limit lifted while tc
/// refused) is taken away by a later sweep: left, it would hold the pod at
/// the old rate with no limit asked for.
#[test]
fn a_queue_that_failed_to_go_is_taken_away_later() {
    require_root!();
    let root = TestRoot::new("queue-gone");
    let pod = root.make("pod");
    let lab = NetnsPair::create("qg").unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let tc = FailingTc::new();
    let daemon = TestDaemon::start_with_path(&root.path, &[], Some(tc.path()));
    let _pod_process = pod_process(&pod, lab.a());
    let pod_path = pod.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "100M"]);
    wait_for_rate(lab.a(), "100Mbit");

    // only an egress limit left, while tc refuses: the queue stays for now
    tc.refuse(true);
    daemon.ok(&["attach", "--cgroup", &pod_path, "--egress", "40M"]);
    thread::sleep(Duration::from_millis(1500));
    assert!(
        has_ingress_queue(Some(lab.a())),
        "the queue went although tc refused"
    );
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    assert!(log.contains("ingress queue not removed"), "{log}");

    tc.refuse(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while has_ingress_queue(Some(lab.a())) {
        assert!(
            Instant::now() < deadline,
            "the queue outlived its ingress limit once tc worked again"
        );
        thread::sleep(Duration::from_millis(100));
    }
    daemon.ok(&["detach", "--cgroup", &pod_path]);
}
