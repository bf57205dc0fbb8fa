/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Egress share steering and pacing (the first of egress's two layers; the
 * bucket in bucket.h is the second): the egress program steers a fair share
 * per cgroup every window so that the cgroup's aggregate meets its limit,
 * counts each TCP socket's bytes in the window, and tells each socket the
 * share to be paced at; the sockops program and the senders iterator apply
 * it (pace) and clamp the congestion window near its bandwidth-delay
 * product (clamp_cwnd); the un-pacing iterator lifts both after a detach.
 */
#ifndef PODSHAPER_LIB_EGRESS_H
#define PODSHAPER_LIB_EGRESS_H

#include "shaper.h"
#include "bucket.h"
#include "credit.h"
#include "kernel.h"
#include "maps.h"

/* the congestion window of a paced socket is clamped to twice its share's
 * bandwidth-delay product plus this many segments */
#define CWND_CLAMP_SLACK 8
/* ... and to at least this long at the share: a TSO packet is at most half
 * the window (tcp_cwnd_test), so a flow's packets may carry 10 ms of its
 * share, as long as the shortest steering window */
#define CWND_CLAMP_MIN_US 20000
#define CWND_UNCLAMPED 0x7fffffff
/* the share of a lone bulk flow may exceed the rate by 1/4: paced at exactly
 * the rate, one flow falls short of it (BBR's gain cycle and late pacing
 * timers: 0.79-0.92 of 1 Gbit/s here, no drop, no mark); the bucket level
 * pulls it back. Not with more flows: there the headroom widened the share's
 * swings (BBR, 100M x8: 0.72) */
#define SHARE_HEADROOM_SHIFT 2
/* fixed point for the steering ratio */
#define RATIO_ONE 1024ULL
/* the bucket level's weight in the steering: 1/8 (1/2 oscillated) */
#define INTEGRAL_SHIFT 3
/* the most the share may grow per window before damping (x1.5 after it);
 * slower growth (x1.125) measured worse: flows slowed by a congestion
 * notification took too long to get their share back */
#define SHARE_MAX_GROWTH (RATIO_ONE * 2)

/*
 * Steers the fair share so that the measured aggregate approaches the rate:
 * share *= sqrt-ish(rate / measured), clamped to halve or double at most per
 * window. With N flows all paced at the share, one full step lands on rate/N;
 * the half step damps noise. Called with the lock held.
 */
static __always_inline void steer_share(struct ps_bucket *b, __u64 now)
{
	__u64 span = now - b->window_start_ns;
	__u64 measured, ratio, next, floor, cap;
	__s64 offered;
	int keep = 0;

	if (span < b->window_ns)
		return;
	/*
	 * What the cgroup offered in the window, plus how far the bucket sits
	 * from half full: a bucket in deficit asks for a lower share, a full
	 * one for a higher share, so the level (not just the window's count of
	 * a few 64 KiB GSO packets) settles the aggregate on the rate.
	 */
	offered = (__s64)b->window_bytes + (((__s64)(b->burst >> 1) - b->tokens) >> INTEGRAL_SHIFT);
	/*
	 * The windows of a limit put on sockets already sending are first
	 * their way down to it: paced at the whole limit until their next
	 * packet, each sends a TSO packet as large as the window it grew
	 * unlimited allows, those over the bucket pass with a notification or
	 * are dropped, and the dropped ones send again after their
	 * retransmission timeout. Steered on that, the share fell by a
	 * quarter, and with the bucket's level counted, the flows paid its
	 * deficit back over the next 1.5 s (16 flows at 10M: 0.80-0.95 of the
	 * limit in the first two seconds after the attach). So until
	 * OPENING_NS after the limit came, the share holds, but that the first
	 * window may raise it (fewer of the sockets the senders iterator
	 * counted send): raised in every window that read low while flows
	 * waited out their timeouts, it climbed towards the whole limit at
	 * 100M (10 ms windows) and 16 flows read 0.96 of it in the next second.
	 * The first window to end after that starts the bucket's level at no
	 * less than the half the steering keeps it at.
	 */
	if (b->opening) {
		offered = (__s64)b->window_bytes;
		keep = b->window_start_ns + OPENING_NS != b->opening ||
		       (__u64)offered * NSEC_PER_SEC / span >= b->rate;
		if (now >= b->opening) {
			b->opening = 0;
			if (b->tokens < (__s64)(b->burst >> 1))
				b->tokens = (__s64)(b->burst >> 1);
		}
	}
	measured = offered > 0 ? (__u64)offered * NSEC_PER_SEC / span : 0;
	b->window_bytes = 0;
	b->top_flow_rate = b->window_top_bytes * NSEC_PER_SEC / span;
	b->window_top_bytes = 0;
	start_window(b, now);
	if (keep)
		return;

	if (measured == 0) {
		ratio = SHARE_MAX_GROWTH;
	} else {
		ratio = b->rate * RATIO_ONE / measured;
		if (ratio > SHARE_MAX_GROWTH)
			ratio = SHARE_MAX_GROWTH;
		if (ratio < RATIO_ONE / 2)
			ratio = RATIO_ONE / 2;
	}
	next = (b->share + b->share * ratio / RATIO_ONE) / 2;
	floor = b->rate >> 12;
	if (floor < 1000)
		floor = 1000;
	if (next < floor)
		next = floor;
	cap = b->rate;
	if (b->flows <= 1)
		cap += b->rate >> SHARE_HEADROOM_SHIFT;
	if (next > cap)
		next = cap;
	b->share = next;
}

/*
 * While the bucket is in deficit and more than one bulk flow sends, no flow
 * is paced above an eighth more than the most-sending flow got in the last
 * window, nor, before there is such a window, above an equal part of the
 * rate. The steering alone only sees what the bucket lets through (never
 * much over the rate), so from a share of the whole rate it took seconds to
 * come down, and meanwhile the bucket's congestion notifications held the
 * flows and cut their windows for good (10M x4: share 640 kB/s -> 330 kB/s
 * over 3.5 s, 97% of packets marked). An equal part alone was too low where
 * flows differ: one bulk flow beside eight light ones fell from 6.4 to 4.1
 * Mbit/s of 10M (docs/design/egress.md, "A cap on the share while the bucket is
 * short"). Called with the lock held.
 */
static __always_inline void cap_share_in_deficit(struct ps_bucket *b)
{
	__u64 flows = active_flows(b);
	__u64 cap, top = b->top_flow_rate + (b->top_flow_rate >> 3);

	if (b->tokens >= 0 || flows <= 1)
		return;
	cap = b->rate / flows;
	if (cap < top)
		cap = top;
	if (b->share > cap)
		b->share = cap;
}

/*
 * Counts a TCP socket's packet into egress steering window `window` (+1): the
 * socket counts once per window as a flow (the latency probe's small
 * requests do not make one), and the bytes it passed in the window add up.
 * Returns those bytes.
 */
static __always_inline __u64 count_socket(struct ps_bucket *b, struct sock_state *p, __u64 window,
					  __u64 len, int passed)
{
	__u16 seq = window_tag(window);

	if (len > SMALL_PACKET_BYTES && p->egress_window != seq) {
		p->egress_window = seq;
		__sync_fetch_and_add(&b->window_flows, 1);
	}
	if (!passed)
		return 0;
	if (p->egress_bytes_window != seq) {
		p->egress_bytes_window = seq;
		p->egress_window_bytes = 0;
	}
	p->egress_window_bytes += len;
	return p->egress_window_bytes;
}

/* Tells a TCP socket its pacing rate. Written only when it changes: the
 * sockops program reads it on the core that takes the socket's ACKs. */
static __always_inline void steer_socket(struct sock_state *p, __u64 share, __u64 cgid)
{
	if (p->want != share)
		p->want = share;
	if (p->paced_cgid != cgid)
		p->paced_cgid = cgid;
}

/*
 * Passes an egress packet on this CPU's slice of the bucket (which covers
 * it): no lock, no clock, and nothing of the cgroup's state (`cgroup_states`),
 * whose lines the other core writes: the socket is steered with the slice's
 * copies of the share and the window. A socket counted in another window
 * than the copies' (the window moved on, or the socket is new in it) has
 * the CPU read the state once to catch up and count it. So a copy is at most
 * a slice old for a socket already counted in the window (its last packets
 * on the slice may carry the last window's share).
 */
static __always_inline void pass_on_credit(struct ps_credit *c, struct sock_state *p, __u64 len)
{
	struct ps_state *st;
	__u64 sent;

	spend_credit(c, len);
	if (!p)
		return;
	if (p->egress_bytes_window == window_tag(c->window_seq) &&
	    (len <= SMALL_PACKET_BYTES || p->egress_window == window_tag(c->window_seq))) {
		p->egress_window_bytes += len;
		sent = p->egress_window_bytes;
	} else {
		st = bpf_get_local_storage(&cgroup_states, 0);
		catch_up(st, c);
		sent = count_socket(&st->bucket, p, c->window_seq, len, 1);
	}
	if (sent > c->top_bytes)
		c->top_bytes = sent;
	steer_socket(p, c->share, c->limit_cgid);
}

/*
 * Clamps a paced socket's congestion window near its share's bandwidth-delay
 * product. On a path of under 512 us the kernel builds 64 KiB TSO packets
 * whatever the pacing rate (tcp_tso_autosize), which at 10 Mbit/s is 52 ms of
 * the pod's limit in one packet; a TSO packet is never larger than the
 * window allows, so the clamp keeps packets (and the bursts the aggregate
 * bucket must absorb) small. Twice the BDP plus slack leaves the window
 * above what pacing lets through, so the clamp never limits the rate.
 */
static __always_inline void clamp_cwnd(void *sock, struct sock_state *p, __u64 srtt_us, __u64 mss,
				       __u32 ssthresh)
{
	__u64 want, floor, bdp2 = 0;
	__u32 clamp, tolerance = p->cwnd_clamp >> 3;
	int cut, floored = 0;

	if (p->applied == 0 || mss == 0) {
		clamp = CWND_UNCLAMPED;
	} else {
		bdp2 = 2 * p->applied * srtt_us / 1000000 / mss;
		want = bdp2 + CWND_CLAMP_SLACK;
		/* never below CWND_CLAMP_MIN_US of the share: where the round
		 * trip is short, a smaller clamp only makes smaller packets, at
		 * the same rate and more CPU */
		floor = p->applied * CWND_CLAMP_MIN_US / 1000000 / mss;
		if (want < floor) {
			want = floor;
			floored = 1;
		}
		clamp = want > CWND_UNCLAMPED ? CWND_UNCLAMPED : (__u32)want;
	}
	if (p->cwnd_clamp == 0 && clamp == CWND_UNCLAMPED)
		return;
	/*
	 * Within an eighth of the clamp in force: not worth a setsockopt on
	 * this ACK. Unless the slow-start threshold is above the clamp: a
	 * window that grew before the limit came is cut (a congestion
	 * notification, podshaper_egress) to a threshold the kernel takes
	 * from the window itself, and the window becomes that threshold when
	 * the cut ends. The clamp's setsockopt sets the threshold to the
	 * clamp too, so the window ends the cut at the clamp.
	 *
	 * Where the floor sets the clamp (a short round trip), a cut of the
	 * threshold that leaves it at least twice the share's bandwidth-delay
	 * product is undone the same way, whatever made it (a congestion
	 * notification, a loss): such a window still carries twice the share
	 * over the round trip, so the cut slows nothing and only shrinks
	 * packets, and a paced flow never grows its window back. Undone at
	 * the socket's next ACK if its callback is on; otherwise when the
	 * senders iterator next runs. A cut below twice the BDP, or where the
	 * round trip sets the clamp, stays, as a brake.
	 */
	cut = floored && ssthresh < clamp - (clamp >> 3) && ssthresh >= bdp2;
	if (p->cwnd_clamp && clamp <= p->cwnd_clamp + tolerance &&
	    clamp + tolerance >= p->cwnd_clamp && ssthresh <= p->cwnd_clamp && !cut)
		return;
	if (bpf_setsockopt(sock, SOL_TCP, TCP_BPF_SNDCWND_CLAMP, &clamp, sizeof(clamp)) == 0)
		p->cwnd_clamp = clamp;
}

/* Paces a socket at `want` bytes per second (0: unpaced). `sock`: the
 * sockops context or the iterator's socket. */
static __always_inline void pace(void *sock, struct sock_state *p, __u64 want)
{
	/* SO_MAX_PACING_RATE takes a u32 in bytes per second; ~0U is "unpaced" */
	__u32 rate = want == 0 || want >= 0xffffffffULL ? ~0U : (__u32)want;

	if (bpf_setsockopt(sock, SOL_SOCKET, SO_MAX_PACING_RATE, &rate, sizeof(rate)) == 0)
		p->applied = want;
}

/*
 * A socket of the cgroup (or below it) with no state in this build's map,
 * but a pacing cap or a window clamp: paced by an older build whose socket
 * map a daemon upgrade started afresh (shaper.h), and idle since, so this
 * build never took it over. Its cap and clamp are lifted as its state's
 * would be. A cap the application set itself on such a socket is lifted too:
 * podshaper replaced any such cap on every socket that sent under the limit
 * anyway, and leaving an old share on a socket of a pod no longer limited
 * is the worse error. The window clamp is only set by BPF (or a route's
 * locked cwnd, which is not per socket).
 */
static __always_inline void unpace_unknown(struct tcp_sock *tp, __u64 target)
{
	__u32 unpaced = ~0U, unclamped = CWND_UNCLAMPED;
	unsigned long cap = BPF_CORE_READ((struct sock *)tp, sk_max_pacing_rate);
	int capped = cap != ~0UL && cap != ~0U;
	int clamped = BPF_CORE_READ(tp, snd_cwnd_clamp) < CWND_UNCLAMPED;

	if (!(capped || clamped) || !in_cgroup(tp, target))
		return;
	if (clamped)
		bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SNDCWND_CLAMP, &unclamped, sizeof(unclamped));
	if (capped)
		bpf_setsockopt(tp, SOL_SOCKET, SO_MAX_PACING_RATE, &unpaced, sizeof(unpaced));
}

#endif
