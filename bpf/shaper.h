/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The structs shared between the BPF shaper and user space.
 *
 * Mirrored by `crates/shaper/src/abi.rs` (a unit test there checks that sizes
 * and offsets agree). Change both together.
 */
#ifndef PODSHAPER_SHAPER_H
#define PODSHAPER_SHAPER_H

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

/* Value of the per-CPU `counters` map, keyed by cgroup id. */
struct ps_counters {
	struct ps_dir_counters dir[PS_DIRECTIONS];
};

#endif
