/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Finding the limit that governs a packet or a socket: the limited cgroup
 * is the socket's own or the deepest limited one above it (a pod's limit
 * covers its containers), looked up in `limits` by cgroup id. A packet
 * program keeps the limit in its cgroup's state and looks again only when
 * user space bumps `limits_version` (refresh_limit); the sockops program
 * walks a socket's cgroups with CO-RE reads (socket_limit).
 */
#ifndef PODSHAPER_LIB_LIMITS_H
#define PODSHAPER_LIB_LIMITS_H

#include "shaper.h"
#include "bucket.h"
#include "kernel.h"
#include "maps.h"

/* The share a new egress bucket of cgroup `cgid` starts at, if the senders
 * iterator just paced its open sockets; else 0 (the whole rate). */
static __always_inline __u64 open_senders_share(__u64 cgid)
{
	__u32 key = SENDERS_CGROUP;
	__u64 *target = bpf_map_lookup_elem(&senders_target, &key), *share;

	if (!target || *target != cgid)
		return 0;
	key = SENDERS_SHARE;
	share = bpf_map_lookup_elem(&senders_target, &key);
	return share ? *share : 0;
}

/*
 * The limited cgroup that governs a packet: its socket's cgroup if limited,
 * else the deepest limited ancestor (a pod's limit covers its containers).
 */
static __always_inline struct ps_limit *find_limit(struct __sk_buff *skb, __u64 *cgid)
{
	__u64 leaf = bpf_skb_cgroup_id(skb);
	struct ps_limit *found = bpf_map_lookup_elem(&limits, &leaf);

	if (found) {
		*cgid = leaf;
		return found;
	}
	for (int level = 0; level < MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
		struct ps_limit *lim;

		if (id == 0 || id == leaf)
			break;
		lim = bpf_map_lookup_elem(&limits, &id);
		if (lim) {
			found = lim;
			*cgid = id;
		}
	}
	return found;
}

/* The version of `limits` (+1) a state's copy of its limit must match; 0
 * (never matched) if the array cannot be read. */
static __always_inline __u64 limits_seen(void)
{
	__u32 zero = 0;
	__u64 *version = bpf_map_lookup_elem(&limits_version, &zero);

	return version ? *version + 1 : 0;
}

/*
 * Takes the limit in force for a direction into the state, after a change
 * to `limits` (`seen` moved). The lookups cannot run under the state's lock;
 * the bucket takes the limit under it, so a packet reads a limit whole. The
 * version is read before the limit, so a change that lands in between
 * moves it again and the next packet looks again.
 */
static __always_inline void refresh_limit(struct __sk_buff *skb, struct ps_state *st, __u64 seen,
					  int dir)
{
	__u64 cgid = 0, now = bpf_ktime_get_ns();
	struct ps_limit *found = find_limit(skb, &cgid);
	struct ps_dir_limit lim = {};
	__u64 first_share = 0;

	if (found)
		lim = dir == PS_EGRESS ? found->dir[PS_EGRESS] : found->dir[PS_INGRESS];
	if (found && dir == PS_EGRESS)
		first_share = open_senders_share(cgid);
	bpf_spin_lock(&st->lock);
	if (lim.rate_bytes_per_sec && lim.burst_bytes) {
		configure(&st->bucket, lim.rate_bytes_per_sec, lim.burst_bytes,
			  dir == PS_EGRESS ? SHARE_WINDOW_BYTES : FAIR_WINDOW_BYTES, now,
			  first_share);
	} else {
		/* none this way: a limit that comes back starts a full bucket */
		st->bucket.rate = 0;
		st->bucket.burst = 0;
		st->bucket.lent = 0;
	}
	st->limit_cgid = found ? cgid : 0;
	st->limit_version = seen;
	bpf_spin_unlock(&st->lock);
}

/* The limit of the cgroup a socket is in or below (the deepest: the daemon
 * refuses nested limits), or NULL. The socket's own cgroup, walked up with
 * CO-RE reads: sockops may not ask for the current task's cgroup before
 * Linux 6.2, and it is the socket's that the packet programs key on. */
static __always_inline struct ps_limit *socket_limit(struct tcp_sock *tp)
{
	struct cgroup *cg = socket_cgroup(tp);

	for (int i = 0; i < MAX_CGROUP_LEVEL && cg; i++, cg = parent_cgroup(cg)) {
		__u64 id = BPF_CORE_READ(cg, kn, id);
		struct ps_limit *lim = bpf_map_lookup_elem(&limits, &id);

		if (lim)
			return lim;
	}
	return 0;
}

#endif
