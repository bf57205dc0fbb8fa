/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The token bucket each attached cgroup has in each direction (struct
 * ps_bucket in shaper.h, kept in `cgroup_states`): the verdicts, the
 * counters, taking a limit into the bucket, refilling it, and the windows a
 * bucket counts its TCP flows in. All of it but has_limit and
 * pass_unlimited runs with the state's lock held. What the bucket lends
 * CPUs is in credit.h, the egress steering of its share in egress.h, and the
 * ingress fair parts in policer.h.
 */
#ifndef PODSHAPER_LIB_BUCKET_H
#define PODSHAPER_LIB_BUCKET_H

#include "shaper.h"
#include "kernel.h"

/* cgroup_skb verdicts (egress may add a congestion notification). */
#define VERDICT_DROP 0
#define VERDICT_PASS 1
#define VERDICT_DROP_CN 2
#define VERDICT_PASS_CN 3

/* the fair share is re-steered after at least this many bytes at the limit
 * (four 64 KiB TSO packets: fewer made the count of packets in a window the
 * signal) ... */
#define SHARE_WINDOW_BYTES (256ULL * 1024)
/* ingress: a flow's fair part is judged over windows of this many bytes at
 * the limit (same bounds): sixteen 64 KiB packets, so that a part of eight
 * flows is still two of them (fair_standing) */
#define FAIR_WINDOW_BYTES (1024ULL * 1024)
/* ... bounded to this window length */
#define SHARE_WINDOW_MIN_NS (10ULL * 1000 * 1000)
#define SHARE_WINDOW_MAX_NS (200ULL * 1000 * 1000)
/* how far TCP retransmissions may take an ingress bucket below empty: this
 * much time at the rate, and at least two bursts */
#define MAX_DEFICIT_NS (200ULL * 1000 * 1000)
#define MIN_DEFICIT_BURSTS 2
/*
 * How long a limit put on sockets already sending counts as their way down
 * to it (steer_share, "opening"): the sockets paced at the whole limit until
 * their next packet, and those of them the bucket dropped waiting out a
 * retransmission timeout (200 ms at least) before they send at their share.
 * 16 flows at 10M went on passing packets over the bucket 480 ms after the
 * limit came.
 */
#define OPENING_NS (600ULL * 1000 * 1000)
/*
 * TCP packets this small (pure ACKs, small requests and replies) pass while
 * a bulk packet would be dropped, charged to the bucket like any other: they
 * move no bulk, but a drop of one leaves its sender nothing to retransmit on
 * but its timer (an RPC waits 200 ms or more).
 */
#define SMALL_PACKET_BYTES 256

/* Counts a packet into its direction's counters. Called with the lock held. */
static __always_inline void count(struct ps_bucket *b, __u64 len, int verdict, int marked)
{
	if (verdict == VERDICT_PASS || verdict == VERDICT_PASS_CN) {
		b->counters.bytes += len;
		b->counters.packets += 1;
	} else {
		b->counters.dropped += 1;
	}
	if (marked)
		b->counters.marked += 1;
}

/*
 * Whether the state's direction has a limit. Read without the lock, to
 * choose the path: the limit is read again under it.
 */
static __always_inline int has_limit(struct ps_state *st)
{
	return st->bucket.rate != 0;
}

/*
 * Passes a packet of a direction without a limit, counted if its cgroup is
 * limited the other way. No bucket to keep whole, so two atomic adds instead
 * of the lock (which also saves and restores interrupts): the ACKs of a pod
 * limited on egress only are most of its ingress packets.
 */
static __always_inline int pass_unlimited(struct ps_state *st, __u64 len)
{
	if (st->limit_cgid) {
		__sync_fetch_and_add(&st->bucket.counters.bytes, len);
		__sync_fetch_and_add(&st->bucket.counters.packets, 1);
	}
	return VERDICT_PASS;
}

/* Takes a new or changed limit (rate and burst non-zero) into a bucket.
 * Called with the lock held. */
static __always_inline void configure(struct ps_bucket *b, __u64 rate, __u64 burst,
				      __u64 window_bytes, __u64 now, __u64 first_share)
{
	/* slices taken at another rate never come back (settle_credit) */
	if (b->rate != rate)
		b->lent = 0;
	if (b->rate == 0) {
		/* new: start full, with every flow allowed the whole rate */
		b->tokens = (__s64)burst;
		b->last_ns = now;
		b->window_start_ns = now;
		b->window_bytes = 0;
		b->share = first_share && first_share < rate ? first_share : rate;
		/* sockets already sending: their way down steers nothing */
		b->opening = first_share ? now + OPENING_NS : 0;
	}
	b->rate = rate;
	b->burst = burst;
	b->fill_ns = burst * NSEC_PER_SEC / rate;
	b->window_ns = window_bytes * NSEC_PER_SEC / rate;
	if (b->window_ns < SHARE_WINDOW_MIN_NS)
		b->window_ns = SHARE_WINDOW_MIN_NS;
	if (b->window_ns > SHARE_WINDOW_MAX_NS)
		b->window_ns = SHARE_WINDOW_MAX_NS;
	b->max_deficit = rate * (MAX_DEFICIT_NS / 1000000) / 1000;
	if (b->max_deficit < MIN_DEFICIT_BURSTS * burst)
		b->max_deficit = MIN_DEFICIT_BURSTS * burst;
	if (b->tokens > (__s64)burst)
		b->tokens = (__s64)burst;
	if (b->share > rate || b->share == 0)
		b->share = rate;
}

/* Adds the tokens earned since the last packet. Called with the lock held. */
static __always_inline void refill(struct ps_bucket *b, __u64 now)
{
	__u64 elapsed = now > b->last_ns ? now - b->last_ns : 0;
	__u64 fills = 0;

	b->last_ns = now;
	/*
	 * Whole bucket-fills first, then the remainder: remainder < fill_ns keeps
	 * remainder * rate < burst * 1e9, so nothing overflows. A deficit is
	 * paid back before the bucket counts as full again. (Packets are
	 * mostly less than a fill apart: no division for the fills then.)
	 */
	if (elapsed >= b->fill_ns) {
		fills = elapsed / b->fill_ns;
		if (fills > b->max_deficit / b->burst + 1) {
			b->tokens = (__s64)b->burst;
			return;
		}
	}
	b->tokens += (__s64)(fills * b->burst);
	b->tokens += (__s64)((elapsed - fills * b->fill_ns) * b->rate / NSEC_PER_SEC);
	if (b->tokens > (__s64)b->burst)
		b->tokens = (__s64)b->burst;
}

/*
 * Starts a bucket's next window of flow counting (the egress steering's, the
 * ingress fair parts'): a flow is forgotten one window at a time, since a
 * flow paced at a small share may send nothing in one window. Called with
 * the lock held.
 */
static __always_inline void start_window(struct ps_bucket *b, __u64 now)
{
	b->window_start_ns = now;
	b->flows = b->flows > b->window_flows ? b->flows - 1 : b->window_flows;
	b->window_flows = 0;
	b->window_seq++;
}

/* The bucket's TCP flows: of the window so far or of the ones before it,
 * whichever are more. Called with the lock held. */
static __always_inline __u64 active_flows(struct ps_bucket *b)
{
	return b->flows > b->window_flows ? b->flows : b->window_flows;
}

/* How a socket notes a steering or fairness window (+1): its low 16 bits.
 * The windows are at least 10 ms long, so a tag comes back after 655 s at
 * the soonest: a socket idle for just that long reads its old window's
 * count once. */
static __always_inline __u16 window_tag(__u64 window)
{
	return (__u16)window;
}

/*
 * Whether the bucket is under half full, counting the slices CPUs hold
 * (ingress marks ECN CE below that). Not the tokens alone: the slices are
 * tokens not yet spent, and behind the ingress queue the tokens alone sat
 * just under half (the queue's own burst ahead of them, plus two slices at
 * 1G), so every packet of an ECN flow was marked. Called with the lock held.
 */
static __always_inline int under_half(struct ps_bucket *b)
{
	return b->tokens + (__s64)b->lent < (__s64)(b->burst / 2);
}

#endif
