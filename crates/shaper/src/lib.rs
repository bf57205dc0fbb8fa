//! podshaper's core: the BPF shaper and what it needs from the kernel.
//!
//! Knows cgroups, BPF programs and maps, and rates; knows nothing of gRPC or
//! Kubernetes (those are thin layers over this crate).

pub mod abi;
pub mod cgroup;
pub mod confine;
pub mod counters;
pub mod empty;
pub mod host_queue;
pub mod ingress_queue;
pub mod iproute;
pub mod kernel;
mod layout;
pub mod limits;
pub mod netns;
pub mod node;
mod problems;
pub mod shaper;
mod tc_classes;
pub mod tc_json;

pub use cgroup::{cgroup2_mount, Cgroup, CgroupError, TransientCgroup};
pub use confine::{CgroupRoot, ConfineError};
pub use counters::{CgroupCounters, DirectionCounters};
pub use limits::{DirectionLimit, Limits};
pub use node::{
    is_bpffs, remove_all_queues, Adoption, CgroupStatus, IngressMode, Node, NodeError, Repair,
    Uninstall,
};
pub use shaper::{Attachment, Features, Shaper, ShaperError};
