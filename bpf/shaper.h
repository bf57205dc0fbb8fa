/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The structs shared between the BPF shaper and user space.
 *
 * Mirrored by `crates/shaper/src/abi.rs` (a unit test there checks that sizes
 * and offsets agree). Change both together.
 *
 * The state maps' values (struct ps_state, struct ps_credit, and struct
 * sock_state and struct rcv_window in lib/maps.h) outlive the daemon in bpffs pins, and a restarted
 * daemon reuses them unless their size or layout changed
 * (Shaper::load_pinned compares the BTF the kernel kept with each pinned
 * map, field names, offsets and types, with this build's). A change of a
 * field's meaning alone (same name, type and place) is not noticed: rename
 * the field with it, or the new build reads the old values under the new
 * meaning.
 */
#ifndef PODSHAPER_SHAPER_H
#define PODSHAPER_SHAPER_H

#include <linux/bpf.h>
#include <linux/types.h>

#define PS_EGRESS 0
#define PS_INGRESS 1
#define PS_DIRECTIONS 2

/* One direction's limit. rate_bytes_per_sec == 0 means "no limit this way". */
struct ps_dir_limit {
	__u64 rate_bytes_per_sec;
	__u64 burst_bytes;
};

/* Value of the `limits` map, keyed by cgroup id; written only by user space. */
struct ps_limit {
	struct ps_dir_limit dir[PS_DIRECTIONS];
};

/* One direction's counters. bytes and packets count what was let through. */
struct ps_dir_counters {
	__u64 bytes;
	__u64 packets;
	__u64 dropped;
	/* passed with a congestion signal: ECN CE, or NET_XMIT_CN to local TCP */
	__u64 marked;
};

/*
 * One direction's shaping state. The fields every packet reads or writes
 * come first, the ones it needs now and then last: the programs of both
 * cores write this state, and each cache line of it they touch moves
 * between the cores.
 */
struct ps_bucket {
	/* the limit in force (0: none), and the time to fill an empty bucket */
	__u64 rate;
	__u64 burst;
	__u64 fill_ns;
	/* token bucket: may go negative by up to one burst (TCP deficit) */
	__s64 tokens;
	__u64 last_ns;
	/* fair-share steering (egress): the window, what the cgroup offered
	 * in it, the windows so far, the share, and the most bytes one TCP
	 * socket sent in this window. Ingress uses the window, its length
	 * and number (and the flow counts below) for each flow's fair part */
	__u64 window_start_ns;
	__u64 window_ns;
	__u64 window_bytes;
	__u64 window_seq;
	__u64 share;
	__u64 window_top_bytes;
	/* what passed, was dropped and was marked this way (kept beside the
	 * bucket, under its lock: one map lookup per packet fewer than a
	 * counters map of their own) */
	struct ps_dir_counters counters;
	/* how far below empty TCP retransmissions may take the bucket (ingress) */
	__u64 max_deficit;
	/* TCP sockets that sent (ingress: brought) bulk packets in this window
	 * and in the last complete one, and the most-sending one's rate over
	 * the last complete window, bytes/s (egress only) */
	__u64 window_flows;
	__u64 flows;
	__u64 top_flow_rate;
	/* slices of this bucket that CPUs hold (struct ps_credit), taken at
	 * the rate in force and not yet settled: tokens out of the bucket but
	 * not yet spent, at most. The ingress mark counts them in the level */
	__u64 lent;
	/* egress: while a limit put on sockets already sending is new, the
	 * time its way down ends (steer_share, "opening"); else 0 */
	__u64 opening;
};

/*
 * Value of the `cgroup_states` map: one per attached cgroup and direction, in
 * the cgroup storage of the cgroup the programs are attached to (keyed by
 * its id and the attach type), which a program reaches without a lookup.
 * Owned by BPF; user space only reads it (under the lock: BPF_F_LOCK) and
 * zeroes it when it attaches a cgroup afresh.
 */
struct ps_state {
	struct bpf_spin_lock lock;
	/* the limited cgroup whose limit is in the bucket (0: none), as of
	 * `limits_version` (+1) = limit_version */
	__u64 limit_version;
	__u64 limit_cgid;
	struct ps_bucket bucket;
};

/*
 * One CPU's slice of one direction's bucket: value of `cpu_credits`, per-CPU
 * cgroup storage beside `cgroup_states` (same keys). While the bucket is well
 * above empty, a CPU takes a slice of it (a couple of milliseconds at the
 * rate) under the lock and passes packets against it on its own: no lock, no
 * clock, no line the other core writes. What is left of a slice goes back to
 * the bucket when the CPU next takes the lock. Owned by BPF; user space adds
 * `bytes` and `packets` to the state's counters and zeroes the slices when it
 * zeroes the state.
 */
struct ps_credit {
	/* bytes this CPU may still pass on its own, of a slice this large */
	__s64 credit;
	__u64 slice;
	/* the state's limit_version and rate the slice was taken under: a
	 * packet spends it only under that version, and what is left goes back
	 * to the bucket if the rate is the same (a change to another cgroup's
	 * limit moves the version too) */
	__u64 version;
	__u64 rate;
	/* what this CPU passed on credit, and marked ECN CE (only grow) */
	__u64 bytes;
	__u64 packets;
	__u64 marked;
	/* ingress: the bucket was under half full when the slice was taken, so
	 * packets passed on it are marked (ECN CE) as the bucket would */
	__u64 congested;
	/* egress: the steering window (+1) this CPU's copies below are from,
	 * and the most one socket sent on this CPU in it */
	__u64 top_bytes;
	__u64 window_seq;
	/* egress: copies of the bucket's share and of the limited cgroup, so
	 * that a packet on the slice reads nothing the other core writes.
	 * Taken with the slice, and again when a socket shows that the
	 * window moved on (catch_up) */
	__u64 share;
	__u64 limit_cgid;
};

/*
 * The ingress queue (crates/shaper/src/ingress_queue.rs): the flow classifier
 * sends each flow's bulk packets to one of PS_FLOW_QUEUES htb classes,
 * PS_QUEUE_MAJOR:PS_FLOW_CLASS_BASE and up, each with a FIFO of its own.
 */
#define PS_QUEUE_MAJOR 1
#define PS_FLOW_CLASS_BASE 0x100
#define PS_FLOW_QUEUES 16
/* ... and small packets (IP length under 256 bytes) go to this class */
#define PS_SMALL_CLASS 0x10
/*
 * Each flow's FIFO holds PS_FLOW_QUEUE_US at the limit's rate, at most
 * PS_FLOW_QUEUE_CAP_BYTES, at least PS_FLOW_QUEUE_MIN_US at the rate and
 * PS_FLOW_QUEUE_MIN_BYTES (flow_queue_bytes in ingress_queue.rs says why).
 * The sockops program keeps each receiving socket's window within it.
 */
#define PS_FLOW_QUEUE_US 10000
#define PS_FLOW_QUEUE_CAP_BYTES 131072
#define PS_FLOW_QUEUE_MIN_US 2000
#define PS_FLOW_QUEUE_MIN_BYTES 16384

/*
 * The node's queue for hostNetwork pods (crates/shaper/src/host_queue.rs):
 * one ifb in the node's namespace, and under its htb root one subtree per
 * pod, the classes above offset by slot x PS_HOST_SLOT_STRIDE (slots 1 to
 * PS_HOST_SLOTS; htb minor ids are 16 bits). The host classifier finds a
 * packet's socket and the limited cgroup above it at one of the
 * PS_HOST_LEVELS cgroup levels the daemon lists.
 */
#define PS_HOST_SLOTS 127
#define PS_HOST_SLOT_STRIDE 0x200
/* a power of two: host_slot_of (bpf/lib/classifier.h) masks an index with it */
#define PS_HOST_LEVELS 4

#endif
