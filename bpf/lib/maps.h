/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Every map the programs use, in one place, with the values of those whose
 * structs are not shared with Rust in shaper.h (the sockets' states, the
 * receive-window clamps, the flow classifier's flows and the host
 * classifier's sockets), and the one global user space sets at load.
 * User space reaches each by its name here (crates/shaper/src/shaper/mod.rs):
 * it pins them, writes limits and targets into them, and reads counters
 * from them, so a map's name, type, key and value are part of the contract
 * with the daemon, and the pinned ones' values outlive a daemon's restart
 * (shaper.h says what a change of their layout does).
 */
#ifndef PODSHAPER_LIB_MAPS_H
#define PODSHAPER_LIB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "shaper.h"

/*
 * Per-socket state (socket local storage). 48 bytes: the kernel keeps a
 * storage's data on a cache line of its own after an 8-byte pointer, so all
 * of it is one line, which every egress packet, every ACK's sockops run
 * and every ingress packet that takes the lock read. (At 72 bytes the
 * egress window's byte count sat on a second line.) Hence 16- and 32-bit
 * window numbers and times. Pinned: see shaper.h on changing a state's
 * layout (a restarted daemon that finds the sockets' map pinned with
 * another layout starts it afresh rather than read it under this one).
 */
struct sock_state {
	/* the pacing rate the egress program wants the sockops program to set */
	__u64 want;    /* bytes per second, 0 = unpaced */
	__u64 applied; /* what was last set on the socket */
	/* the limited cgroup whose share this socket is paced at */
	__u64 paced_cgid;
	/* the egress steering window (+1, as window_tag) this socket was last
	 * counted in as a flow, and the one its byte count is of */
	__u16 egress_window;
	__u16 egress_bytes_window;
	/* the bytes this socket sent in that window (at most 200 ms: 4 GB
	 * would be 171 Gbit/s) */
	__u32 egress_window_bytes;
	/* congestion window clamp last set, in segments (0 = never set) */
	__u32 cwnd_clamp;
	/* ingress: end of the highest TCP sequence seen by a packet that took
	 * the lock, to tell retransmissions (see rcv_high_fresh) */
	__u32 rcv_high;
	/* ingress: when a packet of this socket that took the lock was last let
	 * in (rcv_clock), the low bit set if the last one to take the lock was
	 * dropped; 0 = never */
	__u32 rcv_pass_at;
	/* ingress: the fairness window (+1, as window_tag) this socket was
	 * last counted in, and the KiB it had let in during it */
	__u16 rcv_window;
	__u16 rcv_window_kib;
};
_Static_assert(sizeof(struct sock_state) == 48,
	       "a socket's state fits the cache line its storage starts");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ps_limit);
} limits SEC(".maps");

/*
 * Bumped by user space after every change to `limits`. Each cgroup state
 * keeps the limit in force with the version it read it at, and looks the
 * limit up again only when the version moved: one array read per packet
 * instead of a hash lookup per cgroup level (a pod's containers sit a level
 * below the pod's limit).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} limits_version SEC(".maps");

/*
 * The shaping state of each attached cgroup and direction: cgroup storage,
 * which the kernel hands the program of the cgroup it runs for (no hash
 * lookup), created when the programs are attached and kept while the cgroup
 * lives. The daemon refuses a limit on a cgroup nested in (or containing) a
 * limited one, so the cgroup a program is attached to is the one whose limit
 * governs the packet. Egress and ingress have a storage each (the key
 * holds the attach type), so the two directions never share a lock.
 */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);
	__type(key, struct bpf_cgroup_storage_key);
	__type(value, struct ps_state);
} cgroup_states SEC(".maps");

/*
 * Each CPU's slice of each attached cgroup's bucket (struct ps_credit), in
 * the per-CPU cgroup storage: the kernel hands a program its own CPU's value
 * of the cgroup it is attached to, again without a lookup.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE);
	__type(key, struct bpf_cgroup_storage_key);
	__type(value, struct ps_credit);
} cpu_credits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} sock_states SEC(".maps");

/*
 * What user space tells the senders iterator (podshaper_senders), by key:
 * the cgroup about to get an egress limit, the pacing rate to give each of
 * its open sockets (0: only count them), how many there are (the counting
 * run's result), and the share the egress program starts that cgroup's
 * bucket at: the limit divided among them, so that the steering starts
 * where it would end rather than at the whole limit for each.
 */
#define SENDERS_CGROUP 0
#define SENDERS_RATE 1
#define SENDERS_FOUND 2
#define SENDERS_SHARE 3
/* sockets whose callback could not be turned on (the pacing run's result) */
#define SENDERS_UNARMED 4
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 5);
	__type(key, __u32);
	__type(value, __u64);
} senders_target SEC(".maps");

/* A socket's receive-window clamp: socket storage of its own (the sockops
 * program and the iterators are the only readers, so sock_state's cache
 * line stays as the packet programs need it). Pinned, so that a restarted
 * daemon's detach finds the clamps to give back; a socket still armed that
 * finds no state (a daemon whose build changed this layout) starts again. */
struct rcv_window {
	/* limits_seen() when `rate` was read */
	__u64 seen;
	/* the governing cgroup's ingress rate, bytes per second, if a queue is
	 * in front of it (queued_ingress); 0 = none */
	__u64 rate;
	/* the ramp (rcv_window.h, ramped_window): when the round trip being
	 * counted started, and the flow's sequence then */
	__u64 mark_ns;
	__u32 mark_nxt;
	/* the sequence at the socket's last segment sent */
	__u32 last_nxt;
	/* the most the window may reach in this round trip, and what it is */
	__u32 target;
	__u32 allowed;
	/* what the flow delivered in the last round trip */
	__u32 round_bytes;
	__u32 unused;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rcv_window);
} rcv_windows SEC(".maps");

/*
 * The cgroups with an ingress queue in front of them (the daemon's, in a
 * pod's network namespace or the node's for hostNetwork pods), written by
 * user space once the queue is in place. Only there is a receive window
 * clamped: through the policer alone there is no FIFO for a window to fit
 * (the policer delays nothing, so no window holds a sender to the rate),
 * and the clamp would only cost a run before every segment
 * (docs/design/ingress.md, "Only where a queue is in front").
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} queued_ingress SEC(".maps");

/* The cgroup the un-pacing iterator (podshaper_unpace) works on, written by
 * user space before each run. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unpace_target SEC(".maps");

/* What the receivers iterator (podshaper_receivers) does, written by user
 * space before each run: the cgroup it works on, and RECEIVERS_RATE: 0 to
 * ready the sockets (the delayed ACK shortened, the clamp armed where a
 * queue is in front), the rate (bytes per second) of a queue about to be
 * built to clamp their windows for it now, or RECEIVERS_GIVE_BACK to give
 * clamped windows back (that queue did not come). */
#define RECEIVERS_CGROUP 0
#define RECEIVERS_RATE 1
#define RECEIVERS_GIVE_BACK (~0ULL)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} receivers_target SEC(".maps");

/* A flow as the flow classifier (podshaper_flow_class) tells flows apart:
 * its addresses, protocol and ports. */
struct ps_flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u32 proto;
};

/* A flow's FIFO, and when the flow was last seen (flow_clock). */
struct flow_queue {
	__u32 queue;
	__u32 seen;
};

/* Each flow's FIFO (podshaper_flow_class): an LRU map, so that flows long
 * gone make room for new ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ps_flow);
	__type(value, struct flow_queue);
} flow_queues SEC(".maps");

/* The next FIFO in turn for a new flow, by its destination address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32[4]);
	__type(value, __u32);
} next_flow_queue SEC(".maps");

/* The host classifier's maps (podshaper_host_class). The first two are
 * written by user space: each limited hostNetwork pod's slot in the node's
 * queue, by cgroup id, and the cgroup levels the limited cgroups sit at (0
 * ends the list). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_HOST_SLOTS);
	__type(key, __u64);
	__type(value, __u32);
} host_queue_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PS_HOST_LEVELS);
	__type(key, __u32);
	__type(value, __u32);
} host_queue_levels SEC(".maps");

/* Bumped by user space after every change to host_queue_slots: a socket's
 * slot, kept in host_socks, is good while the version it was found at is. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} host_queue_version SEC(".maps");

/* What the classifier found for a socket of a limited hostNetwork pod (or
 * of one that was): its slot (0: none) and its flow's FIFO, so that its
 * next packets skip the walk up its cgroups and the flow's lookup. Only
 * sockets that had a slot get one. */
struct host_sock {
	__u64 version;
	__u32 slot;
	__u32 queue;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct host_sock);
} host_socks SEC(".maps");

/* each slot's turn counter for its flows' FIFOs (the pods share the node's
 * addresses, so next_flow_queue's key would mix their flows) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PS_HOST_SLOTS + 1);
	__type(key, __u32);
	__type(value, __u32);
} host_next_flow_queue SEC(".maps");

/* net.ipv4.tcp_adv_win_scale, set by user space at load: how kernels before
 * 6.6 (no scaling_ratio) size a window from a buffer. */
const volatile __s32 adv_win_scale = 1;

#endif
