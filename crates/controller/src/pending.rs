//! What the controller remembers of pods between passes, by pod UID: when
//! the watch event that carried a change arrived (for the latency metric),
//! and since when a pod's limits have waited for its cgroup (for the
//! CgroupNotFound warning). Pure: the times are given, so every rule is
//! tested without a clock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Pending {
    /// uid -> (node, the earliest change not yet taken by a pass)
    changes: HashMap<String, (String, Instant)>,
    /// uid -> when a pass first saw its limits wait for the cgroup
    waiting: HashMap<String, Instant>,
}

impl Pending {
    /// A watch event changed the pod; an earlier change not yet taken
    /// keeps its time (the latency counts from the first).
    pub fn changed(&mut self, uid: &str, node: &str, at: Instant) {
        self.changes
            .entry(uid.to_string())
            .or_insert_with(|| (node.to_string(), at));
    }

    /// Takes the changes of `node`'s pods, for a pass over it.
    pub fn take_changes(&mut self, node: &str) -> HashMap<String, Instant> {
        let uids: Vec<String> = self
            .changes
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(uid, _)| uid.clone())
            .collect();
        uids.into_iter()
            .filter_map(|uid| self.changes.remove(&uid).map(|(_, at)| (uid, at)))
            .collect()
    }

    /// Puts back the changes a pass took and did not see through (the
    /// daemon could not be reached): the next pass counts from them.
    pub fn put_back(&mut self, node: &str, taken: HashMap<String, Instant>) {
        for (uid, at) in taken {
            let entry = self
                .changes
                .entry(uid)
                .or_insert_with(|| (node.to_string(), at));
            entry.1 = entry.1.min(at);
        }
    }

    /// The pod's limits wait for its cgroup: how long they have, counted
    /// from the first pass that saw them wait.
    pub fn waiting(&mut self, uid: &str, now: Instant) -> Duration {
        now.saturating_duration_since(*self.waiting.entry(uid.to_string()).or_insert(now))
    }

    /// The pod's limits wait no longer (in force, refused, or not wanted).
    pub fn not_waiting(&mut self, uid: &str) {
        self.waiting.remove(uid);
    }

    /// Forgets pods that are not in `live`.
    pub fn retain(&mut self, live: &HashSet<String>) {
        self.changes.retain(|uid, _| live.contains(uid));
        self.waiting.retain(|uid, _| live.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_counts_from_its_first_event_and_is_taken_once() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        p.changed("a", "n1", t0);
        p.changed("a", "n1", t0 + Duration::from_millis(5));
        p.changed("b", "n2", t0);
        let taken = p.take_changes("n1");
        assert_eq!(taken.get("a"), Some(&t0));
        assert!(!taken.contains_key("b"), "another node's pod");
        assert!(p.take_changes("n1").is_empty());
        assert_eq!(p.take_changes("n2").len(), 1);
    }

    #[test]
    fn changes_put_back_keep_the_earlier_time() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        p.changed("a", "n1", t0);
        let taken = p.take_changes("n1");
        // a newer event arrived while the pass ran
        p.changed("a", "n1", t0 + Duration::from_secs(1));
        p.put_back("n1", taken);
        assert_eq!(p.take_changes("n1").get("a"), Some(&t0));
    }

    #[test]
    fn waiting_counts_from_the_first_pass_that_saw_it_until_it_ends() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        assert_eq!(p.waiting("a", t0), Duration::ZERO);
        assert_eq!(
            p.waiting("a", t0 + Duration::from_secs(61)),
            Duration::from_secs(61)
        );
        p.not_waiting("a");
        assert_eq!(p.waiting("a", t0 + Duration::from_secs(62)), Duration::ZERO);
    }

    #[test]
    fn gone_pods_are_forgotten() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        p.changed("a", "n1", t0);
        p.changed("b", "n1", t0);
        p.waiting("a", t0);
        p.retain(&HashSet::from(["b".to_string()]));
        assert_eq!(p.take_changes("n1").len(), 1);
        assert_eq!(p.waiting("a", t0 + Duration::from_secs(9)), Duration::ZERO);
    }
}
