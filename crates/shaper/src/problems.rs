//! What the daemon could not do for a limited cgroup, kept for `status`:
//! operators see why a pod has no ingress queue without reading the log.

use std::collections::{BTreeMap, HashMap};

/// The kinds of problem a cgroup can have, one message each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// network namespaces of its processes that cannot be opened
    Namespaces,
    /// its ingress queue cannot be built, changed or removed
    Queue,
}

/// The current problems of each cgroup, by cgroup id.
#[derive(Debug, Default)]
pub struct Problems(HashMap<u64, BTreeMap<Problem, String>>);

impl Problems {
    /// Records (Some) or clears (None) one kind of problem of a cgroup.
    pub fn set(&mut self, id: u64, kind: Problem, message: Option<String>) {
        match message {
            Some(m) => {
                self.0.entry(id).or_default().insert(kind, m);
            }
            None => {
                if let Some(kinds) = self.0.get_mut(&id) {
                    kinds.remove(&kind);
                    if kinds.is_empty() {
                        self.0.remove(&id);
                    }
                }
            }
        }
    }

    pub fn get(&self, id: u64, kind: Problem) -> Option<&str> {
        self.0.get(&id)?.get(&kind).map(String::as_str)
    }

    /// A cgroup's problems, in a fixed order.
    pub fn of(&self, id: u64) -> Vec<String> {
        self.0
            .get(&id)
            .map(|k| k.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a cgroup that is no longer limited.
    pub fn forget(&mut self, id: u64) {
        self.0.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_kept_by_kind_and_cleared_one_by_one() {
        let mut p = Problems::default();
        p.set(7, Problem::Queue, Some("no ifb".into()));
        p.set(7, Problem::Namespaces, Some("pid 12: denied".into()));
        assert_eq!(p.of(7), ["pid 12: denied", "no ifb"]);
        p.set(7, Problem::Namespaces, None);
        assert_eq!(p.of(7), ["no ifb"]);
        assert_eq!(p.get(7, Problem::Queue), Some("no ifb"));
        p.set(7, Problem::Queue, None);
        assert!(p.of(7).is_empty());
        p.set(8, Problem::Queue, Some("x".into()));
        p.forget(8);
        assert!(p.of(8).is_empty());
    }
}
