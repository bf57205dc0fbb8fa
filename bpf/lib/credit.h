/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Each CPU's slice of a bucket (struct ps_credit in shaper.h, kept in
 * `cpu_credits`): from about 65 Mbit/s up, a CPU takes a couple of
 * milliseconds of the bucket at a time under the lock and passes packets on
 * it without the lock, the clock or the cgroup's shared state, whose cache
 * lines the other core writes. Here: taking a slice, spending it, settling
 * what is left back into the bucket, and the egress copies a slice carries
 * (the share and window it steers sockets with).
 */
#ifndef PODSHAPER_LIB_CREDIT_H
#define PODSHAPER_LIB_CREDIT_H

#include "shaper.h"
#include "bucket.h"
#include "maps.h"

/*
 * A CPU's slice of the bucket (struct ps_credit) is this long at the rate,
 * at most an eighth of the burst, and taken only while the bucket keeps two
 * slices after it. Below CREDIT_MIN_BYTES (rates under about 65 Mbit/s) no
 * slices are taken: a slice smaller than a few packets saves nothing, and
 * there every packet takes the lock as before.
 */
#define CREDIT_NS (2ULL * 1000 * 1000)
#define CREDIT_MIN_BYTES (16ULL * 1024)
#define CREDIT_MIN_RATE (CREDIT_MIN_BYTES * (NSEC_PER_SEC / CREDIT_NS))

/*
 * Whether this CPU's slice covers a packet: what is left of it is at least
 * the packet, and it was taken under the limit in force (`seen`; a slice
 * is only taken under a limit, and every change of one moves the version).
 */
static __always_inline int slice_covers(struct ps_credit *c, __u64 len, __u64 seen)
{
	return c->credit >= (__s64)len && c->version == seen;
}

/*
 * Takes a packet the slice covers from it.
 *
 * Atomic adds, though the value is this CPU's alone: a softirq may run the
 * program again on this CPU in the middle of a process-context run, and a
 * plain add could then lose the other's count and make a counter go back
 * (a counter reset, to Prometheus). The line is this CPU's, so a locked add
 * costs no transfer. Nested runs may overdraw a slice by a packet.
 */
static __always_inline void spend_credit(struct ps_credit *c, __u64 len)
{
	__sync_fetch_and_sub(&c->credit, (__s64)len);
	__sync_fetch_and_add(&c->bytes, len);
	__sync_fetch_and_add(&c->packets, 1);
}

/*
 * Takes the bucket's steering window, share and limited cgroup into this
 * CPU's copies, read without the lock (as the share always was read on
 * this path). A new window starts the CPU's count of its most-sending
 * socket afresh: the last one's was settled, or came too late.
 */
static __always_inline void catch_up(struct ps_state *st, struct ps_credit *c)
{
	__u64 seq = st->bucket.window_seq + 1;

	if (c->window_seq != seq) {
		c->window_seq = seq;
		c->top_bytes = 0;
	}
	c->share = st->bucket.share;
	c->limit_cgid = st->limit_cgid;
}

/*
 * Settles this CPU's slice, under the lock: what is left goes back to the
 * bucket (if taken at the rate in force). Egress (`steered`): what it
 * passed counts into the steering window now, and the most one socket sent
 * on it in this window is taken into the window's.
 */
static __always_inline void settle_credit(struct ps_state *st, struct ps_credit *c, int steered)
{
	struct ps_bucket *b = &st->bucket;

	if (c->rate == b->rate) {
		b->lent -= b->lent < c->slice ? b->lent : c->slice;
		if (c->credit > 0) {
			b->tokens += c->credit;
			if (b->tokens > (__s64)b->burst)
				b->tokens = (__s64)b->burst;
		}
		if (steered)
			b->window_bytes += c->slice - (c->credit > 0 ? (__u64)c->credit : 0);
	}
	c->credit = 0;
	c->slice = 0;
	c->rate = 0;
	if (steered && c->window_seq == b->window_seq + 1 && c->top_bytes > b->window_top_bytes)
		b->window_top_bytes = c->top_bytes;
}

/*
 * This CPU's slice of the cgroup's bucket this way. Looked up before the
 * cgroup's state: a packet the slice covers needs nothing else.
 */
static __always_inline struct ps_credit *cpu_slice(void)
{
	return bpf_get_local_storage(&cpu_credits, 0);
}

/* Whether the bucket lends slices: from CREDIT_MIN_RATE up. */
static __always_inline int takes_slices(struct ps_state *st)
{
	return st->bucket.rate >= CREDIT_MIN_RATE;
}

/* Gives this CPU a slice of the bucket, under the lock, if the bucket keeps
 * two slices more after it. */
static __always_inline void take_credit(struct ps_state *st, struct ps_credit *c)
{
	struct ps_bucket *b = &st->bucket;
	__s64 slice = (__s64)(b->rate / (NSEC_PER_SEC / CREDIT_NS));

	if (slice > (__s64)(b->burst >> 3))
		slice = (__s64)(b->burst >> 3);
	if (slice < (__s64)CREDIT_MIN_BYTES || b->tokens < 3 * slice)
		return;
	b->tokens -= slice;
	b->lent += (__u64)slice;
	c->credit = slice;
	c->slice = (__u64)slice;
	c->version = st->limit_version;
	c->rate = b->rate;
	c->congested = under_half(b);
	catch_up(st, c);
}

#endif
