//! Open connections through a daemon's restart, an upgrade over its pins,
//! a detach and the limit added again: each time they are held to the
//! limit from the second second on.

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::{held_but_one_stall, receiver_seconds, EACH_SECOND, ONE_STALLED_SECOND};
use crate::common;
use crate::common::daemon::{
    another_sk_storage, put_in_place_of_the_daemons, TestDaemon, TestRoot,
};
use crate::common::{traffic_turn, unique_port, ChildGuard};
use podshaper_netlab::meter::Seconds;
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{Meter, NetnsPair};
use podshaper_shaper::Cgroup;

/// When the restart tests act, in seconds from the start of their count:
/// the limit at 2 s, the daemon killed and started again over its pins
/// (which adopts the limit) at 5 s, a detach at 9 s, the limit again at 11 s.
const RESTART_STEPS: [(u64, &str); 4] =
    [(2, "attach"), (5, "restart"), (9, "detach"), (11, "attach")];

/// Runs RESTART_STEPS on `daemon` for the cgroup at `path` (`limit`: the
/// attach's direction flag and rate), from `start` for 16 s, calling `poll`
/// every 5 ms (the second that ends as a step starts is read before it).
/// `restart` is the restart step: `TestDaemon::restart`, or an upgrade.
fn run_restart_steps(
    daemon: &mut TestDaemon,
    path: &str,
    limit: [&str; 2],
    start: Instant,
    restart: &mut dyn FnMut(&mut TestDaemon),
    mut poll: impl FnMut(),
) {
    let mut steps = RESTART_STEPS.to_vec();
    while start.elapsed() < Duration::from_secs(16) + Duration::from_millis(50) {
        poll();
        if let Some(&(at, what)) = steps.first() {
            if start.elapsed() >= Duration::from_secs(at) {
                match what {
                    "attach" => {
                        daemon.ok(&["attach", "--cgroup", path, limit[0], limit[1]]);
                    }
                    "restart" => restart(daemon),
                    _ => {
                        daemon.ok(&["detach", "--cgroup", path]);
                    }
                }
                steps.remove(0);
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The seconds of a restart test, as fractions of 100M: limited from the
/// second second after the attach, through the restart; lifted by the
/// detach; limited again from the second second after the second attach.
fn check_restart_seconds(seconds: &[f64]) {
    let ratios: Vec<f64> = seconds.iter().map(|b| b / 100e6).collect();
    eprintln!(
        "attach at 2 s, restart at 5 s, detach at 9 s, attach at 11 s; seconds of 100M: {:?}",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
    );
    assert!(ratios.len() >= 16, "too few seconds: {ratios:?}");
    // the limited seconds of both attaches: one of them may stall
    let limited = ratios[3..9].iter().chain(&ratios[12..16]);
    assert!(
        held_but_one_stall(limited.map(|r| (*r, EACH_SECOND))),
        "seconds 3-8 and 12-15 outside {EACH_SECOND:?} (one may stall {ONE_STALLED_SECOND} lower): {ratios:?}"
    );
    assert!(ratios[10] > 5.0, "not lifted by the detach: {ratios:?}");
}

/// Four open flows going out through RESTART_STEPS: each time they are
/// held to the limit.
#[test]
fn open_connections_stay_limited_through_a_restart_and_a_limit_added_again() {
    require_root!();
    open_flows_going_out_through_the_steps("open-again", None);
}

/// The same through an upgrade that changed the sockets' state: no open
/// socket has state in the new build's maps.
#[test]
fn open_connections_stay_limited_through_an_upgrade_of_the_sockets_state() {
    require_root!();
    open_flows_going_out_through_the_steps("open-upgrade", Some(OlderBuild::compile(true)));
}

/// Four open flows going out through RESTART_STEPS, with `upgrade` (or a
/// restart) as the restart step.
fn open_flows_going_out_through_the_steps(tag: &str, upgrade: Option<OlderBuild>) {
    let root = TestRoot::new(tag);
    let _turn = traffic_turn();
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let cgroup = root.make("pod/app");
    let path = cgroup.path().to_str().expect("path").to_string();
    let lab = NetnsPair::create("again").expect("lab");
    lab.set_congestion_control("cubic").expect("cubic");
    let port = unique_port();
    let meter = Meter::default();
    let until = Until::after(Duration::from_secs(18));
    let peer = SocketAddr::new(NetnsPair::addr_b(false), port);
    let sink = {
        let (meter, until) = (meter.clone(), until.clone());
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            traffic::tcp_sink(TcpListener::bind(peer)?, meter, &until)
        })
    };
    thread::sleep(Duration::from_millis(200));
    let mut cmd = common::podshaper();
    cgroup.spawn_inside(&mut cmd).expect("spawn inside");
    cmd.args(["traffic", "tcp-send", "--netns", lab.a(), "--seconds", "17"])
        .args(["--flows", "4", "--to"])
        .arg(peer.to_string())
        .stdout(Stdio::null());
    let source = ChildGuard::spawn(&mut cmd);
    thread::sleep(Duration::from_millis(300));
    let mut seconds = Seconds::start(&meter);
    let start = Instant::now();
    let mut restart = restart_step(&upgrade, &cgroup);
    run_restart_steps(
        &mut daemon,
        &path,
        ["--egress", "100M"],
        start,
        &mut restart,
        || seconds.poll(&meter),
    );
    drop(source);
    until.stop.store(true, Ordering::Relaxed);
    let _ = sink.join();
    check_restart_seconds(&seconds.bits_per_second());
    if upgrade.is_some() {
        OlderBuild::check_upgraded(&daemon);
    }
}

/// Four open flows coming in through RESTART_STEPS: the restarted daemon
/// adopts the pod's queue, the detach takes it away, and the second attach
/// builds it again in front of the running flows.
#[test]
fn open_connections_coming_in_stay_limited_through_a_restart_and_a_limit_added_again() {
    require_root!();
    open_flows_coming_in_through_the_steps("open-again-in", None);
}

/// The same through an upgrade that changed the sockets' state: no open
/// receiving socket has a window clamp in the new build's maps.
#[test]
fn open_connections_coming_in_stay_limited_through_an_upgrade_of_the_sockets_state() {
    require_root!();
    open_flows_coming_in_through_the_steps("open-upgrade-in", Some(OlderBuild::compile(false)));
}

/// Four open flows coming in through RESTART_STEPS, with `upgrade` (or a
/// restart) as the restart step.
fn open_flows_coming_in_through_the_steps(tag: &str, upgrade: Option<OlderBuild>) {
    let root = TestRoot::new(tag);
    let _turn = traffic_turn();
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let cgroup = root.make("pod/app");
    let path = cgroup.path().to_str().expect("path").to_string();
    let lab = NetnsPair::create("againin").expect("lab");
    lab.set_congestion_control("cubic").expect("cubic");
    let to = SocketAddr::new(NetnsPair::addr_a(false), unique_port());
    let mut cmd = common::podshaper();
    cgroup.spawn_inside(&mut cmd).expect("spawn inside");
    cmd.args(["traffic", "tcp-recv", "--netns", lab.a(), "--seconds", "17"])
        .args(["--skip", "0", "--listen"])
        .arg(to.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let receiver = ChildGuard::spawn(&mut cmd);
    let start = Instant::now();
    let until = Until::after(Duration::from_secs(18));
    let source = {
        let until = until.clone();
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            thread::sleep(Duration::from_millis(100));
            traffic::tcp_send(to, 4, &until).map(|_| ())
        })
    };
    let mut restart = restart_step(&upgrade, &cgroup);
    run_restart_steps(
        &mut daemon,
        &path,
        ["--ingress", "100M"],
        start,
        &mut restart,
        || {},
    );
    check_restart_seconds(&receiver_seconds(receiver, &until, source));
    if upgrade.is_some() {
        OlderBuild::check_upgraded(&daemon);
    }
}

/// The restart step of the restart tests: the daemon killed and started
/// again over its pins, or `upgrade` in between.
fn restart_step<'a>(
    upgrade: &'a Option<OlderBuild>,
    cgroup: &'a Cgroup,
) -> impl FnMut(&mut TestDaemon) + 'a {
    move |daemon: &mut TestDaemon| match upgrade {
        Some(older) => older.upgrade(daemon, cgroup),
        None => daemon.restart(),
    }
}

/// What an upgrade that changed the layout of the sockets' state finds
/// under a limited cgroup: an older build's program in the daemon's place
/// on one of its hooks (it passes everything, so the new build moves every
/// attachment to its own programs), and the socket maps (`sock_states`,
/// `rcv_windows`) of another layout, which the new build starts afresh.
struct OlderBuild {
    egress: bool,
    /// the older build's objects, compiled before the flows start: its
    /// program, and its `sock_states` and `rcv_windows`
    object: Vec<u8>,
    socket_maps: [(&'static str, Vec<u8>); 2],
}

impl OlderBuild {
    const EGRESS: &'static str = "old_open_egress";
    const INGRESS: &'static str = "old_open_ingress";

    /// An older build whose program on the `egress` (or ingress) hook
    /// differs from this build's.
    fn compile(egress: bool) -> Self {
        let (section, name) = if egress {
            ("cgroup_skb/egress", Self::EGRESS)
        } else {
            ("cgroup_skb/ingress", Self::INGRESS)
        };
        let object = common::compiled_bpf(
            name,
            &format!("SEC(\"{section}\") int {name}(struct __sk_buff *skb) {{ return 1; }}"),
        );
        let socket_maps = [("sock_states", "__u64[13]"), ("rcv_windows", "__u64[3]")]
            .map(|(map, value)| (map, another_sk_storage(map, "open", value)));
        Self {
            egress,
            object,
            socket_maps,
        }
    }

    /// kill -9; the older build's program and socket maps in place; this
    /// build's daemon started over the pins.
    fn upgrade(&self, daemon: &mut TestDaemon, cgroup: &Cgroup) {
        use aya::programs::CgroupSkbAttachType;

        daemon.kill9();
        let (name, hook, attach_type) = if self.egress {
            (Self::EGRESS, "egress", CgroupSkbAttachType::Egress)
        } else {
            (Self::INGRESS, "ingress", CgroupSkbAttachType::Ingress)
        };
        let old = aya::Ebpf::load(&self.object).expect("load the older build");
        let link_pin = daemon
            .bpffs
            .join("links")
            .join(cgroup.id().to_string())
            .join(hook);
        put_in_place_of_the_daemons(old, name, cgroup, attach_type, &link_pin);
        for (map, object) in &self.socket_maps {
            daemon.pin_sk_storage(map, object);
        }
        daemon.restart();
    }

    /// The daemon's log says it moved the attachment and started the socket
    /// maps afresh.
    fn check_upgraded(daemon: &TestDaemon) {
        let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
        assert!(log.contains("upgraded=1"), "no attachment moved: {log}");
        assert!(
            log.contains("pinned state maps of another size or layout"),
            "the socket maps were not started afresh: {log}"
        );
    }
}
