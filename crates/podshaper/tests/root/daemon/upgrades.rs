//! A daemon started over the pins of another build: state maps of another
//! size or layout started afresh, attachments moved to this build's
//! programs, each adopted state taking its limit again, sockets paced by the
//! older build unpaced at detach.

use std::thread;
use std::time::Duration;

use super::stderr_of;
use crate::common;
use crate::common::daemon::{put_in_place_of_the_daemons, TestDaemon, TestRoot};
use crate::common::{assert_ratio, measure_with, unique_port, Flow, Limiter};

/// An upgrade that changes the layout of the maps the programs rebuild from
/// traffic (bucket levels, per-socket state) must not keep the daemon from
/// starting: it starts those afresh and keeps every limit.
#[test]
fn a_restart_over_state_maps_of_another_layout_starts_them_afresh() {
    require_root!();
    let root = TestRoot::new("layout");
    let old = root.make("old");
    let new = root.make("new");
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let old_path = old.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &old_path, "--egress", "100M"]);
    daemon.kill9();

    // another version's `cgroup_states`, pinned where the daemon keeps its
    // own, and two maps older builds pinned whose contents this build keeps
    // in `cgroup_states`: the `states` hash and the per-CPU `counters`
    let bytes = common::compiled_bpf(
        "old_states",
        "struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16); \
         __type(key, __u64); __type(value, __u64[2]); } cgroup_states SEC(\".maps\"); \
         struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16); \
         __type(key, __u64); __type(value, __u64[39]); } states SEC(\".maps\"); \
         struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 16); \
         __type(key, __u64); __type(value, __u64[8]); } counters SEC(\".maps\");",
    );
    let maps = daemon.bpffs.join("maps");
    let pin = maps.join("cgroup_states");
    let obsolete = [maps.join("states"), maps.join("counters")];
    std::fs::remove_file(&pin).expect("unpin the daemon's cgroup_states map");
    let loaded = aya::EbpfLoader::new()
        .map_pin_path("cgroup_states", &pin)
        .map_pin_path("states", &obsolete[0])
        .map_pin_path("counters", &obsolete[1])
        .load(&bytes);
    drop(loaded.expect("pin a cgroup_states map of another layout"));
    assert!(pin.exists(), "the other layout's map is not pinned");
    assert!(
        obsolete.iter().all(|p| p.exists()),
        "the old maps are not pinned"
    );

    daemon.restart();
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    assert!(log.contains("starting them afresh"), "{log}");
    for path in &obsolete {
        assert!(!path.exists(), "{} was left pinned", path.display());
    }
    let listed = daemon.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["egress_bps"], 100_000_000);
    // the limit from before holds, and a new one takes hold
    let rate = measure_with(&Limiter::Cgroup(&old), &Flow::tcp(true));
    assert_ratio("limited before the restart", rate, 100e6, 0.90, 1.05);
    let new_path = new.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &new_path, "--egress", "50M"]);
    let rate = measure_with(&Limiter::Cgroup(&new), &Flow::tcp(true));
    assert_ratio("limited after the restart", rate, 50e6, 0.90, 1.05);
}

/// A pinned state map of another size is started afresh even where this
/// build's programs would load with it: aya reuses a pinned map as it is,
/// and a program that reads less of a value than the map holds verifies, so
/// a layout that shrank (a socket state of 72 bytes where this build's has
/// 56) would be read under the new one. Only its group starts afresh: the
/// sockets' state here, so the buckets and their counters carry on.
#[test]
fn a_restart_over_a_socket_map_of_another_size_starts_only_it_afresh() {
    require_root!();
    // values larger than this build's (so its programs would load with it)
    restart_over_another_socket_map("sockmap", "__u64[13]", 104);
}

/// The same for a pinned state map of this build's size but another
/// layout (a field moved, renamed or retyped), which the sizes cannot tell:
/// the daemon compares the BTF the kernel kept with the pinned map against
/// its own.
#[test]
fn a_restart_over_a_socket_map_of_another_layout_of_the_same_size_starts_only_it_afresh() {
    require_root!();
    restart_over_another_socket_map("socklayout", "__u64[6]", 48);
}

/// Attaches a limit, kills the daemon, pins in its `sock_states` place a
/// socket storage whose value is `value_type` (`value_size` bytes), and
/// checks that the restarted daemon starts only that map afresh.
fn restart_over_another_socket_map(name: &str, value_type: &str, value_size: u32) {
    let root = TestRoot::new(name);
    let app = root.make("app");
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let path = app.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &path, "--egress", "100M"]);
    let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(true));
    assert_ratio("before the restart", rate, 100e6, 0.90, 1.05);
    let counted_before = daemon.list()[0]["counters"]["egress_bytes"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        counted_before > 10_000_000,
        "counted {counted_before} bytes"
    );
    daemon.kill9();

    let (other_id, size) = daemon.pin_another_sk_storage("sock_states", name, value_type);
    assert_eq!(size, value_size);
    let id = |pin: &std::path::Path| {
        aya::maps::MapInfo::from_pin(pin)
            .expect("read the pinned sock_states")
            .id()
    };
    let pin = daemon.bpffs.join("maps").join("sock_states");

    daemon.restart();
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    assert!(
        log.contains("pinned state maps of another size or layout"),
        "{log}"
    );
    assert_ne!(id(&pin), other_id, "the other build's map was reused");
    let listed = daemon.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let counted_after = listed[0]["counters"]["egress_bytes"].as_u64().unwrap_or(0);
    assert!(
        counted_after >= counted_before,
        "the buckets' counters started afresh too: {counted_before} then {counted_after}"
    );
    let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(true));
    assert_ratio("after the restart", rate, 100e6, 0.90, 1.05);
}

/// After an upgrade each adopted state takes its limit again through this
/// build's programs. The daemon moves the limit's version when it loads, but
/// the older build's programs stay attached until it moves each attachment,
/// and a packet in between has the older program take the new version with
/// its own reading of the limit (here: another ingress window length, such
/// as 256 KiB at the rate where this build's is 1 MiB), which this build's
/// programs would otherwise keep until the cgroup's next limit change. An
/// older build's ingress program stands in (on every packet it takes the
/// version and writes a window of its own), while traffic runs through the
/// restart.
#[test]
fn an_upgraded_attachment_takes_its_limit_again_under_this_build() {
    require_root!();
    use std::net::SocketAddr;

    use podshaper_netlab::traffic::{self, Until};
    use podshaper_netlab::NetnsPair;

    #[expect(deprecated, reason = "the shaper's own map type (shaper/mod.rs)")]
    type States = aya::maps::CgroupStorage<aya::maps::MapData, podshaper_shaper::abi::State>;
    const BPF_F_LOCK: u64 = 4;
    const INGRESS: u32 = 0;
    const OLD_WINDOW_NS: u64 = 1_234_567;

    let root = TestRoot::new("retake");
    let app = root.make("app");
    let path = app.path().display().to_string();
    let mut daemon = TestDaemon::start(&root.path, &[]);
    daemon.ok(&["attach", "--cgroup", &path, "--ingress", "100M"]);
    let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(false));
    assert_ratio("before the restart", rate, 100e6, 0.85, 1.05);
    let pin = daemon.bpffs.join("maps").join("cgroup_states");
    let key = aya::maps::CgroupStorageKey::new(app.id(), INGRESS);
    let window = || {
        let data = aya::maps::MapData::from_pin(&pin).expect("open cgroup_states");
        States::try_from(aya::maps::Map::from_map_data(data).expect("cgroup_states"))
            .expect("cgroup_states")
            .get(key, BPF_F_LOCK)
            .expect("the ingress state")
            .bucket
            .window_ns
    };
    let ours = window();
    assert_ne!(ours, OLD_WINDOW_NS);
    daemon.kill9();

    // the older build: its ingress program on the daemon's maps, taking a
    // new limit version with a window of its own
    let header = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bpf/shaper.h");
    let bytes = common::compiled_bpf(
        "old_retake",
        &format!(
            "#include \"{header}\"\n\
             struct {{ __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); \
             __type(key, __u32); __type(value, __u64); }} limits_version SEC(\".maps\");\n\
             struct {{ __uint(type, BPF_MAP_TYPE_CGROUP_STORAGE); \
             __type(key, struct bpf_cgroup_storage_key); __type(value, struct ps_state); }} \
             cgroup_states SEC(\".maps\");\n\
             SEC(\"cgroup_skb/ingress\") int old_build_ingress(struct __sk_buff *skb) {{\n\
             __u32 zero = 0; __u64 *v = bpf_map_lookup_elem(&limits_version, &zero);\n\
             struct ps_state *st = bpf_get_local_storage(&cgroup_states, 0);\n\
             if (v) {{ bpf_spin_lock(&st->lock); \
             st->bucket.window_ns = {OLD_WINDOW_NS}; st->limit_version = *v + 1; \
             bpf_spin_unlock(&st->lock); }}\n\
             return 1; }}"
        ),
    );
    let maps = daemon.bpffs.join("maps");
    let old = aya::EbpfLoader::new()
        .map_pin_path("limits_version", maps.join("limits_version"))
        .map_pin_path("cgroup_states", maps.join("cgroup_states"))
        .load(&bytes)
        .expect("load the older build");
    let link_pin = daemon
        .bpffs
        .join("links")
        .join(app.id().to_string())
        .join("ingress");
    put_in_place_of_the_daemons(
        old,
        "old_build_ingress",
        &app,
        aya::programs::CgroupSkbAttachType::Ingress,
        &link_pin,
    );

    // traffic into the cgroup through the restart
    let _turn = common::traffic_turn();
    let lab = NetnsPair::create("retake").expect("lab");
    let port = unique_port();
    let to = SocketAddr::new(NetnsPair::addr_b(false), port);
    let mut cmd = common::podshaper();
    app.spawn_inside(&mut cmd).expect("spawn inside");
    cmd.args(["traffic", "tcp-recv", "--netns", lab.b(), "--seconds", "6"])
        .arg("--listen")
        .arg(to.to_string())
        .stdout(std::process::Stdio::null());
    let _sink = common::ChildGuard::spawn(&mut cmd);
    let until = Until::after(Duration::from_secs(5));
    let source = traffic::spawn_in(Some(lab.a().to_string()), move || {
        traffic::tcp_send(to, 4, &until)
    });
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(window(), OLD_WINDOW_NS, "the older build's program runs");
    daemon.restart();
    let sent = source.join().expect("the source thread");
    assert!(sent.expect("sending") > 1_000_000);
    assert_eq!(
        window(),
        ours,
        "the upgraded attachment kept the older build's window"
    );
}

/// A TCP socket paced under a limit, idle while an upgrade started the
/// sockets' map afresh (so this build has no state for it), loses its
/// pacing cap when its cgroup is detached: the un-pacing iterator lifts the
/// cap of a socket of the cgroup that has none in the map. Before, it kept
/// the old share for the rest of its life, in a pod no longer limited. A
/// socket of another limited cgroup, in the same state, keeps its cap.
#[test]
fn a_socket_paced_by_an_older_build_and_idle_since_is_unpaced_at_detach() {
    require_root!();
    use std::net::{SocketAddr, TcpListener};

    use podshaper_netlab::traffic::{self, Until};
    use podshaper_netlab::{Meter, NetnsPair};

    let root = TestRoot::new("oldpaced");
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let _turn = common::traffic_turn();
    let lab = NetnsPair::create("oldpaced").expect("lab");
    let until = Until::after(Duration::from_secs(20));
    // in each of two cgroups limited to 20M, one light connection: a 16 KiB
    // write at the start, then idle
    let mut idle = Vec::new();
    for name in ["app", "other"] {
        let cgroup = root.make(name);
        let path = cgroup.path().display().to_string();
        daemon.ok(&["attach", "--cgroup", &path, "--egress", "20M"]);
        let port = unique_port();
        let to = SocketAddr::new(NetnsPair::addr_b(false), port);
        let sink = {
            let until = until.clone();
            traffic::spawn_in(Some(lab.b().to_string()), move || {
                traffic::tcp_sink(TcpListener::bind(to)?, Meter::default(), &until)
            })
        };
        thread::sleep(Duration::from_millis(200));
        let mut cmd = common::podshaper();
        cgroup.spawn_inside(&mut cmd).expect("spawn inside");
        cmd.args(["traffic", "tcp-send", "--netns", lab.a(), "--seconds", "20"])
            .args(["--flows", "0", "--light", "1", "--light-rate", "1k"])
            .arg("--to")
            .arg(to.to_string())
            .stdout(std::process::Stdio::null());
        let source = common::ChildGuard::spawn(&mut cmd);
        idle.push((path, port, cgroup, sink, source));
    }
    let cap = |port: u16| max_pacing_rate(lab.a(), port);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while idle.iter().any(|(_, port, ..)| cap(*port).is_none())
        && std::time::Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(100));
    }
    let before: Vec<Option<String>> = idle.iter().map(|(_, port, ..)| cap(*port)).collect();
    assert!(
        before.iter().all(Option::is_some),
        "a connection was never paced: {before:?}"
    );

    daemon.kill9();
    daemon.pin_another_sk_storage("sock_states", "oldpaced", "__u64[6]");
    daemon.restart();
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    assert!(
        log.contains("pinned state maps of another size or layout"),
        "{log}"
    );
    let (app_path, app_port, ..) = &idle[0];
    let (_, other_port, ..) = &idle[1];
    assert_eq!(
        cap(*app_port),
        before[0],
        "the restart touched the idle connection"
    );
    daemon.ok(&["detach", "--cgroup", app_path]);
    assert_eq!(
        cap(*app_port),
        None,
        "the older build's pacing cap stayed on after the detach"
    );
    assert_eq!(
        cap(*other_port),
        before[1],
        "the detach lifted the cap of another limited cgroup's connection"
    );
}

/// The pacing cap (`ss`'s "pacing_rate RATE/CAP") of the TCP connection to
/// `port` in network namespace `netns`, if it has one.
fn max_pacing_rate(netns: &str, port: u16) -> Option<String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!(
            "--net={}",
            podshaper_netlab::netns::netns_path(netns).display()
        ))
        .args(["ss", "-tin", "state", "established"])
        .arg(format!("dport = :{port}"))
        .output()
        .expect("run ss");
    assert!(out.status.success(), "ss: {}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "pacing_rate")?;
    let rate = words.next()?;
    rate.split_once('/').map(|(_, cap)| cap.to_string())
}

/// The name of the program a pinned link runs.
fn program_of_link(pin: &std::path::Path) -> String {
    let link: aya::programs::links::FdLink = aya::programs::links::PinnedLink::from_pin(pin)
        .expect("open the pinned link")
        .into();
    let id = link.info().expect("link info").program_id();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn an_attachment_made_by_another_build_moves_to_this_builds_programs() {
    require_root!();
    let root = TestRoot::new("upgrade");
    let pod = root.make("pod");
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let pod_path = pod.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &pod_path, "--egress", "100M"]);
    daemon.kill9();

    // an older build's egress program (it passes everything) in the place
    // of the daemon's, as an upgrade finds it
    let bytes = common::compiled_bpf(
        "old_build",
        "SEC(\"cgroup_skb/egress\") int old_build_egress(struct __sk_buff *skb) { return 1; }",
    );
    let old = aya::Ebpf::load(&bytes).expect("load the older build");
    let dir = daemon.bpffs.join("links").join(pod.id().to_string());
    let pin = dir.join("egress");
    put_in_place_of_the_daemons(
        old,
        "old_build_egress",
        &pod,
        aya::programs::CgroupSkbAttachType::Egress,
        &pin,
    );
    assert_eq!(program_of_link(&pin), "old_build_egres");

    // the daemon log (appended to at each start): its last "shaper loaded"
    let last_start = |daemon: &TestDaemon| {
        let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| l.contains("shaper loaded"))
            .unwrap_or_default()
            .to_string()
    };
    daemon.restart();
    let started = last_start(&daemon);
    assert!(started.contains("upgraded=1"), "{started}");
    assert_eq!(program_of_link(&pin), "podshaper_egres");
    assert!(
        !dir.join("next").exists(),
        "the new links' staging directory was left"
    );
    let rate = measure_with(&Limiter::Cgroup(&pod), &Flow::tcp(true));
    assert_ratio("limited after the move", rate, 100e6, 0.90, 1.05);
    // and a restart of the same build moves nothing
    daemon.restart();
    let started = last_start(&daemon);
    assert!(started.contains("upgraded=0"), "{started}");
}
