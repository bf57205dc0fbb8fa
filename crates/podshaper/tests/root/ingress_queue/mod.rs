//! The ingress queue the daemon puts in front of a pod that has a network
//! namespace of its own (crates/shaper/src/ingress_queue.rs): installed once
//! the pod's processes are there, changed live, kept through kill -9 and
//! adopted, removed on detach, never put on the host's namespace (a
//! hostNetwork pod); and what it buys TCP senders (cubic), whose single flows
//! reach 0.95-0.98 of the limit through the cgroup policer alone with the
//! receiver's delayed ACK shortened, and reached only 0.66-0.78 with the
//! kernel's own delayed ACK.

mod fifos;
mod lifecycle;
mod rates;
mod windows;

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::ChildGuard;
use podshaper_netlab::netns::netns_path;
use podshaper_shaper::ingress_queue::IFB_NAME;
use podshaper_shaper::Cgroup;

/// `ip netns exec <ns> <args>` (or in the host's namespace), its output.
fn in_ns(ns: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]);
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The queue's htb class in `ns`, as tc shows it ("" if there is none).
fn queue_class(ns: &str) -> String {
    stdout(&in_ns(Some(ns), &["tc", "class", "show", "dev", IFB_NAME]))
}

/// Waits (a few seconds at most) for the queue's class to show `rate`.
fn wait_for_rate(ns: &str, rate: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let class = queue_class(ns);
        if class.contains(&format!("rate {rate} ")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue in {ns} does not show rate {rate}: {class:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A pod's process: in its cgroup, and in its own network namespace `ns`.
fn pod_process(pod: &Cgroup, ns: &str) -> ChildGuard {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .args(["sleep", "120"]);
    pod.spawn_inside(&mut cmd)
        .unwrap_or_else(|e| panic!("cannot start in {}: {e}", pod.path().display()));
    ChildGuard::spawn(&mut cmd)
}
