//! Limits for pods whose cgroup does not exist yet, held by pod UID and
//! attached the moment the kubelet makes the cgroup. The kubelet makes a
//! pod's cgroup before its sandbox and its containers, so the pod's first
//! packet is already shaped. The kubelet's cgroup directories are watched
//! with inotify; a poll every second covers a watch that could not be set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use podshaper_shaper::{ConfineError, Limits, Node};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::service::{PodName, State};

/// At most this many pods wait at once (each is looked for at every cgroup
/// event below the watched directories); beyond it an attach is refused
/// and the controller asks again later.
pub const MAX_WAITING: usize = 4096;
/// How often waiting pods are looked for without an event.
const POLL: Duration = Duration::from_secs(1);

/// A pod's limits, held until its cgroup appears.
#[derive(Debug, Clone)]
pub struct WaitingPod {
    pub limits: Limits,
    pub name: Option<PodName>,
    /// when the limits were first handed over
    pub since: Instant,
}

/// The directories to watch: those the kubelet makes pods' cgroups in, and
/// every directory between them and the cgroup root (they may not exist
/// yet: on a hybrid node runc makes `kubepods/besteffort/pod<uid>/<ctr>`
/// in the cgroup2 tree in one go).
pub fn watched_dirs(root: &podshaper_shaper::CgroupRoot) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = vec![root.root().to_path_buf()];
    for parent in root.pod_cgroup_parents() {
        let mut dir: &Path = &parent;
        while dir.starts_with(root.root()) {
            out.push(dir.to_path_buf());
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The inotify watches on [`watched_dirs`] that exist.
struct Watches {
    stream: inotify::EventStream<Vec<u8>>,
    dirs: Vec<PathBuf>,
    watched: HashMap<WatchDescriptor, PathBuf>,
}

impl Watches {
    fn new(dirs: Vec<PathBuf>) -> std::io::Result<Self> {
        let stream = Inotify::init()?.into_event_stream(vec![0u8; 4096])?;
        let mut w = Self {
            stream,
            dirs,
            watched: HashMap::new(),
        };
        w.add_missing();
        Ok(w)
    }

    /// Watches the directories that exist now and are not yet watched.
    fn add_missing(&mut self) {
        for dir in &self.dirs {
            if self.watched.values().any(|d| d == dir) || !dir.is_dir() {
                continue;
            }
            let mask = WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR;
            match self.stream.watches().add(dir, mask) {
                Ok(wd) => {
                    self.watched.insert(wd, dir.clone());
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for new pod cgroups here; waiting pods are looked for every second instead")
                }
            }
        }
    }

    /// Waits for the next event; a directory removed loses its watch, and is
    /// watched again when it comes back.
    async fn next(&mut self) {
        match self.stream.next().await {
            Some(Ok(event)) => {
                if event.mask.contains(inotify::EventMask::IGNORED) {
                    self.watched.remove(&event.wd);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading cgroup events failed");
                tokio::time::sleep(POLL).await;
            }
            None => std::future::pending().await,
        }
        self.add_missing();
    }
}

/// Attaches waiting pods as their cgroups appear, until `stop`.
pub async fn run(state: Arc<State>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let dirs = state
        .blocking(|state| state.node.lock().map(|node| watched_dirs(node.root())).ok())
        .await?;
    let Some(dirs) = dirs else {
        anyhow::bail!("daemon state poisoned");
    };
    let mut watches = match Watches::new(dirs) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for new pod cgroups (inotify); waiting pods are looked for every second instead");
            None
        }
    };
    loop {
        tokio::select! {
            () = next_event(&mut watches) => {}
            () = tokio::time::sleep(POLL) => {
                if let Some(w) = watches.as_mut() {
                    w.add_missing();
                }
            }
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        // on a thread of the blocking pool: crate::service::State::blocking
        if let Err(e) = state.blocking(attach_appeared).await {
            // a pass that panicked ends this task as it would have inline
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            return Ok(());
        }
    }
}

async fn next_event(watches: &mut Option<Watches>) {
    match watches {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Attaches every waiting pod whose cgroup is there now.
pub fn attach_appeared(state: &State) {
    let Ok(mut node) = state.node.lock() else {
        return;
    };
    let Ok(mut waiting) = state.waiting.lock() else {
        return;
    };
    if waiting.is_empty() {
        return;
    }
    let mut done = Vec::new();
    for (uid, pod) in waiting.iter() {
        match attach_one(&mut node, uid, pod) {
            Outcome::NotYet => continue,
            Outcome::Attached(id) => {
                if let (Some(name), Ok(mut names)) = (&pod.name, state.pod_names.lock()) {
                    names.insert(id, name.clone());
                }
            }
            Outcome::Dropped => {}
        }
        done.push(uid.clone());
    }
    for uid in done {
        waiting.remove(&uid);
    }
}

enum Outcome {
    /// no cgroup yet: the pod keeps waiting
    NotYet,
    /// limited, cgroup id
    Attached(u64),
    /// the cgroup is there but cannot be limited (logged): the controller
    /// sees the pod unlimited, asks again and gets the error itself
    Dropped,
}

fn attach_one(node: &mut Node, uid: &str, pod: &WaitingPod) -> Outcome {
    let cgroup = match node.root().resolve_pod(uid) {
        Ok(c) => c,
        Err(ConfineError::NoPodCgroup { .. }) => return Outcome::NotYet,
        Err(e) => {
            tracing::warn!(pod_uid = uid, error = %e, "the cgroup that appeared for a waiting pod cannot be limited; its limits are dropped");
            return Outcome::Dropped;
        }
    };
    match node.apply(&cgroup, &pod.limits) {
        Ok(_) => {
            tracing::info!(
                pod_uid = uid,
                cgroup = %cgroup.path().display(),
                waited_ms = pod.since.elapsed().as_millis() as u64,
                limits = ?pod.limits,
                "limits in force from the pod cgroup's creation"
            );
            Outcome::Attached(cgroup.id())
        }
        Err(e) => {
            tracing::warn!(pod_uid = uid, cgroup = %cgroup.path().display(), error = %e, "cannot attach the limits held for a pod whose cgroup appeared; they are dropped");
            Outcome::Dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelets_directories_and_those_between_them_and_the_root_are_watched() {
        let root = podshaper_shaper::CgroupRoot::new(None).expect("a cgroup2 mount");
        let dirs = watched_dirs(&root);
        let m = root.root();
        for d in [
            m.to_path_buf(),
            m.join("kubepods"),
            m.join("kubepods/besteffort"),
            m.join("kubepods/burstable"),
            m.join("kubepods.slice"),
            m.join("kubepods.slice/kubepods-besteffort.slice"),
            m.join("kubepods.slice/kubepods-burstable.slice"),
        ] {
            assert!(dirs.contains(&d), "{} not watched: {dirs:?}", d.display());
        }
        assert_eq!(dirs.len(), 7, "{dirs:?}");
    }
}
