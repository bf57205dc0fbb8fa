//! A daemon of the test's own: private socket, bpffs directory and cgroup
//! root, all removed when the test ends (whether it passed or not).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use podshaper_shaper::cgroup::{cgroup2_mount, remove_cgroup_tree};
use podshaper_shaper::Cgroup;

use super::{podshaper, ChildGuard};

fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "podshaper-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cgroup subtree for one test, playing a node's cgroup root.
pub struct TestRoot {
    pub path: PathBuf,
}

impl TestRoot {
    pub fn new(tag: &str) -> Self {
        let mount = cgroup2_mount().expect("a cgroup2 mount");
        let path = mount.join(unique(tag));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self { path }
    }

    /// Creates a (nested) cgroup below the root, as the kubelet would.
    pub fn make(&self, relative: &str) -> Cgroup {
        let path = self.path.join(relative);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Cgroup::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroup_tree(&self.path) {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}

pub struct TestDaemon {
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub root: PathBuf,
    extra: Vec<String>,
    /// the daemon's PATH, where the test puts its own tools first
    path: Option<String>,
    /// the network namespace it runs in (a node's, for the test), if not
    /// the host's
    netns: Option<String>,
    child: Option<ChildGuard>,
}

impl TestDaemon {
    pub fn start(root: &Path, extra: &[&str]) -> Self {
        Self::start_with_path(root, extra, None)
    }

    /// A daemon that looks up the programs it runs (tc, ip) in `path`.
    pub fn start_with_path(root: &Path, extra: &[&str], path: Option<String>) -> Self {
        Self::start_as(root, extra, path, None)
    }

    /// A daemon in the network namespace `netns` (`ip netns` name), which it
    /// takes for the node's: processes there are hostNetwork pods'.
    pub fn start_in_netns(root: &Path, extra: &[&str], netns: &str) -> Self {
        Self::start_as(root, extra, None, Some(netns.to_string()))
    }

    fn start_as(root: &Path, extra: &[&str], path: Option<String>, netns: Option<String>) -> Self {
        let name = unique("d");
        let mut d = Self {
            socket: std::env::temp_dir().join(&name).join("podshaper.sock"),
            bpffs: PathBuf::from("/sys/fs/bpf").join(&name),
            root: root.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            path,
            netns,
            child: None,
        };
        d.spawn();
        d
    }

    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's log (a pipe nobody reads would fill up and stall it).
    pub fn log_path(&self) -> PathBuf {
        self.socket.with_file_name("daemon.log")
    }

    fn spawn(&mut self) {
        if let Some(dir) = self.socket.parent() {
            fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open the daemon log: {e}"));
        let mut cmd = match &self.netns {
            // nsenter, not `ip netns exec`, which mounts a /sys of its own
            // (and with it no cgroup2 under /sys/fs/cgroup)
            Some(ns) => {
                let mut cmd = std::process::Command::new("nsenter");
                cmd.arg(format!(
                    "--net={}",
                    podshaper_netlab::netns::netns_path(ns).display()
                ))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_podshaper"));
                cmd
            }
            None => podshaper(),
        };
        cmd.arg("daemon")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--bpffs-dir")
            .arg(&self.bpffs)
            .arg("--cgroup-root")
            .arg(&self.root)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(path) = &self.path {
            cmd.env("PATH", path);
        }
        self.child = Some(ChildGuard::spawn(&mut cmd));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket.exists() && self.cli(&["list"]).status.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self
                .child
                .as_mut()
                .and_then(|c| c.0.as_mut())
                .map(|c| c.try_wait())
            {
                self.child = None;
                panic!(
                    "daemon exited with {status}; its log:\n{}",
                    fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up on {}",
                self.socket.display()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The id of the program the daemon pinned at `programs/<name>` (a
    /// queue's classifier, where tc finds it).
    pub fn pinned_program(&self, name: &str) -> u32 {
        aya::programs::ProgramInfo::from_pin(self.bpffs.join("programs").join(name))
            .unwrap_or_else(|e| panic!("the daemon's {name} is not pinned: {e}"))
            .id()
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.0.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill9(&mut self) {
        if let Some(guard) = self.child.take() {
            guard.kill9();
        }
    }

    /// SIGTERM: a normal shutdown (limits stay).
    pub fn stop(&mut self) {
        // ChildGuard's drop sends SIGTERM and waits.
        self.child.take();
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Pins, in the (stopped) daemon's place for the socket storage `map`
    /// (`sock_states`, `rcv_windows`), another build's socket storage whose
    /// value is `value_type`, as an upgrade that changed its layout leaves
    /// it (`tag` names the compiled object); its map id and value size.
    pub fn pin_another_sk_storage(&self, map: &str, tag: &str, value_type: &str) -> (u32, u32) {
        self.pin_sk_storage(map, &another_sk_storage(map, tag, value_type))
    }

    /// Pins the socket storage `map` of the compiled object `object`
    /// ([`another_sk_storage`]) in the (stopped) daemon's place for it; its
    /// map id and value size.
    pub fn pin_sk_storage(&self, map: &str, object: &[u8]) -> (u32, u32) {
        let pin = self.bpffs.join("maps").join(map);
        fs::remove_file(&pin).unwrap_or_else(|e| panic!("cannot unpin the daemon's {map}: {e}"));
        let loaded = aya::EbpfLoader::new().map_pin_path(map, &pin).load(object);
        drop(loaded.unwrap_or_else(|e| panic!("cannot pin another {map}: {e}")));
        let info = aya::maps::MapInfo::from_pin(&pin)
            .unwrap_or_else(|e| panic!("cannot read the pinned {map}: {e}"));
        (info.id(), info.value_size())
    }

    /// kill -9, then a daemon with other flags over the same bpffs pins.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// Runs a CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        podshaper()
            .args(args)
            .args(["--daemon", &self.address()])
            .output()
            .unwrap_or_else(|e| panic!("cannot run podshaper {args:?}: {e}"))
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "podshaper {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `list -o json`, parsed.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["list", "-o", "json"]);
        match serde_json::from_str::<serde_json::Value>(&out) {
            Ok(serde_json::Value::Array(a)) => a,
            other => panic!("list -o json gave {other:?}"),
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // Stop the daemon, then remove its state: unpinning the links
        // detaches them, unpinning the maps frees them.
        self.child.take();
        let _ = fs::remove_dir_all(&self.bpffs);
        if let Some(dir) = self.socket.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Attaches program `name` of an older build's object (`old`) to `cgroup`
/// and pins its link at `link_pin` in place of the daemon's, as an upgrade
/// finds it.
pub fn put_in_place_of_the_daemons(
    mut old: aya::Ebpf,
    name: &str,
    cgroup: &podshaper_shaper::Cgroup,
    attach_type: aya::programs::CgroupSkbAttachType,
    link_pin: &std::path::Path,
) {
    let program: &mut aya::programs::CgroupSkb = old
        .program_mut(name)
        .expect("its program")
        .try_into()
        .expect("a cgroup_skb program");
    program.load().expect("load its program");
    let cgroup_fd = std::fs::File::open(cgroup.path()).expect("open the cgroup");
    let link_id = program
        .attach(
            &cgroup_fd,
            attach_type,
            aya::programs::CgroupAttachMode::Single,
        )
        .expect("attach the older build");
    let link: aya::programs::links::FdLink = program
        .take_link(link_id)
        .expect("its link")
        .try_into()
        .expect("an fd link");
    let ours = aya::programs::links::PinnedLink::from_pin(link_pin).expect("the daemon's link pin");
    drop(ours.unpin().expect("unpin the daemon's link"));
    drop(link.pin(link_pin).expect("pin the older build's link"));
}

/// An object with another build's socket storage `map` (`sock_states`,
/// `rcv_windows`) whose value is `value_type`, as an upgrade that changed
/// its layout brings it (`tag` names the compiled object).
pub fn another_sk_storage(map: &str, tag: &str, value_type: &str) -> Vec<u8> {
    super::compiled_bpf(
        &format!("old_{map}_{tag}"),
        &format!(
            "struct {{ __uint(type, BPF_MAP_TYPE_SK_STORAGE); \
             __uint(map_flags, BPF_F_NO_PREALLOC); __type(key, int); \
             __type(value, {value_type}); }} {map} SEC(\".maps\");"
        ),
    )
}
