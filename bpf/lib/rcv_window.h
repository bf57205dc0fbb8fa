/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The receive-window clamp: what the sockops program and the iterators do
 * so that a receiving socket behind an ingress queue never advertises more
 * window than its flow's FIFO in the queue takes (the comment below says
 * why), and give the window back when the limit or the queue goes.
 */
#ifndef PODSHAPER_LIB_RCV_WINDOW_H
#define PODSHAPER_LIB_RCV_WINDOW_H

#include <linux/tcp.h>

#include "shaper.h"
#include "kernel.h"
#include "limits.h"
#include "maps.h"

/*
 * The receive window (docs/design/ingress.md, "A receive window no deeper than the
 * flow's FIFO"). A socket of a cgroup with an ingress limit and a queue in
 * front of it never advertises more window than 7/8 of its flow's FIFO in
 * the queue plus the bandwidth-delay product at the whole limit over the
 * handshake's round trip (on a longer path than a veth, the window the rate
 * needs), reached by a ramp (ramped_window). So its sender never has more in
 * flight than the FIFO takes, and the queue loses nothing: no resends, and
 * no data held out of order at the receiver behind a hole.
 *
 * Set with TCP_WINDOW_CLAMP before every segment the socket sends, ACKs
 * included (BPF_SOCK_OPS_HDR_OPT_LEN_CB runs in the kernel's option sizing,
 * before the window is chosen): the kernel's buffer autotuning sets the
 * clamp again from the buffer as the buffer grows, so one setting at the
 * handshake did not hold. A socket's buffer is never locked, so autotuning
 * carries on beneath the clamp and needs nothing back when the limit goes.
 * (An ACK with three SACK blocks leaves no option space, and the kernel then
 * skips the callback: that ACK may advertise the autotuned window.)
 */

/* the receive window a limited cgroup's connections start with, in segments */
#define RWND_INIT_SEGMENTS 10

/* The ingress rate of the limited cgroup a socket is in or below (the
 * deepest: the daemon refuses nested limits), if a queue is in front of that
 * cgroup; 0 if not. */
static __always_inline __u64 queued_ingress_rate_of(struct tcp_sock *tp)
{
	struct cgroup *cg = socket_cgroup(tp);

	for (int i = 0; i < MAX_CGROUP_LEVEL && cg; i++, cg = parent_cgroup(cg)) {
		__u64 id = BPF_CORE_READ(cg, kn, id);
		struct ps_limit *lim = bpf_map_lookup_elem(&limits, &id);

		if (lim)
			return bpf_map_lookup_elem(&queued_ingress, &id) ?
				       lim->dir[PS_INGRESS].rate_bytes_per_sec :
				       0;
	}
	return 0;
}

/* The depth of a flow's FIFO at `rate` (flow_queue_bytes in Rust). */
static __always_inline __u64 flow_queue_bytes(__u64 rate)
{
	__u64 bytes = rate * PS_FLOW_QUEUE_US / 1000000,
	      floor = rate * PS_FLOW_QUEUE_MIN_US / 1000000;

	if (bytes > PS_FLOW_QUEUE_CAP_BYTES)
		bytes = PS_FLOW_QUEUE_CAP_BYTES;
	if (bytes < floor)
		bytes = floor;
	return bytes < PS_FLOW_QUEUE_MIN_BYTES ? PS_FLOW_QUEUE_MIN_BYTES : bytes;
}

/* The window a socket's kernel would clamp at from its buffer as it is: what
 * a clamp goes back to when the limit goes (autotuning raises it from there).
 * As the kernel's tcp_win_from_space: from 6.6 the socket's measured
 * scaling_ratio, before it the sysctl's fixed share of the buffer. */
static __always_inline __u32 autotuned_window(struct tcp_sock *tp)
{
	__u64 space = BPF_CORE_READ((struct sock *)tp, sk_rcvbuf);

	if (bpf_core_field_exists(tp->scaling_ratio))
		return (__u32)((space * BPF_CORE_READ(tp, scaling_ratio)) >> RMEM_TO_WIN_SCALE);
	if (adv_win_scale <= 0)
		return (__u32)(space >> (-adv_win_scale & 31));
	return (__u32)(space - (space >> (adv_win_scale & 31)));
}

/* Whether a socket's sockops program runs before each segment it sends. */
static __always_inline int rcv_window_armed(struct tcp_sock *tp)
{
	return BPF_CORE_READ(tp, bpf_sock_ops_cb_flags) & BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
}

/* Arms (`on`) or disarms a socket for the clamp, from an iterator: through
 * the socket option that sets the sockops flags. */
static __always_inline void arm_rcv_window(struct tcp_sock *tp, int on)
{
	int flags = BPF_CORE_READ(tp, bpf_sock_ops_cb_flags);

	if (!(flags & BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) == !on)
		return;
	flags ^= BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
	bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &flags, sizeof(flags));
}

/* Gives a socket the window its buffer makes if its clamp is below that (set
 * by this shaper: nothing else clamps under the buffer), and forgets its
 * state. `sock`: the sockops context or the iterator's socket. */
static __always_inline void release_rcv_window(void *sock, struct tcp_sock *tp)
{
	__u32 window = autotuned_window(tp);

	if (window > BPF_CORE_READ(tp, window_clamp))
		bpf_setsockopt(sock, SOL_TCP, TCP_WINDOW_CLAMP, &window, sizeof(window));
	bpf_sk_storage_delete(&rcv_windows, tp);
}

/* The clamp for a socket behind a queue at `rate` (bytes per second) over a
 * round trip of `srtt_us`: 7/8 of its flow's FIFO plus twice the
 * bandwidth-delay product at the whole limit. What an open socket gets
 * before its queue is built, and the bound of the ramp (ramped_window,
 * which stays within one product). */
static __always_inline __u32 rcv_window_clamp(__u64 rate, __u64 srtt_us)
{
	__u64 clamp = flow_queue_bytes(rate) * 7 / 8 + 2 * rate * srtt_us / 1000000;

	return clamp > 0x7fffffff ? 0x7fffffff : (__u32)clamp;
}

/*
 * The window a flow may have now, up to rcv_window_clamp: it grows with what
 * the flow delivers. A sender in slow start doubles its window each round
 * trip, so it sends at twice the rate it is acknowledged at, and a long path
 * delivers that burst at once: behind a fixed clamp of twice the
 * bandwidth-delay product, one cubic flow at 1G behind 50 ms overflowed its
 * FIFO and read 0.21-0.30 of the limit; one product did no better, as the
 * path then holds the doubled burst (docs/decisions/0048-*). So:
 * - once a round trip (the handshake's, at least RAMP_MIN_NS) the window may
 *   reach twice what the flow delivered in the last one, never more than
 *   the product at the whole limit, plus 7/8 of the FIFO;
 * - on each segment the socket sends it grows by at most what arrived since
 *   the last one, less near the product (grown), so the sender's growth is
 *   spread over the round trip as its acknowledgements come.
 * It starts at 7/8 of the FIFO, where a flow idle for a round trip goes back
 * to. The FIFO drops only well above its depth (flow_fifo_limit_bytes in
 * ingress_queue.rs), for what still comes in bursts.
 */
#define RAMP_MIN_NS (1ULL * 1000 * 1000)

/* How much the window grows for `newly` bytes arrived, when the flow
 * delivered `delivered` in its last round trip: the sender then sends
 * newly plus that, so it sends at (1 + g) times the rate it is acknowledged
 * at. g is what keeps that at the limit's bandwidth-delay product `bdp` per
 * round trip ((bdp - delivered) / delivered: the queue does not grow), and
 * at least the FIFO's share of it, so that the window still reaches the
 * FIFO above the product in a round trip or so; at most 1. */
static __always_inline __u64 grown(__u32 newly, __u64 delivered, __u64 bdp, __u64 fifo)
{
	__u64 room = bdp > delivered ? bdp - delivered : 0;

	if (delivered == 0 || room >= delivered)
		return newly;
	if (bdp && room * bdp < fifo * delivered)
		return fifo >= bdp ? newly : (__u64)newly * fifo / bdp;
	return (__u64)newly * room / delivered;
}

static __always_inline __u32 ramped_window(struct rcv_window *w, __u64 rate, __u64 srtt_us,
					   __u32 rcv_nxt)
{
	__u64 now = bpf_ktime_get_ns(), fifo = flow_queue_bytes(rate) * 7 / 8;
	__u64 most = rcv_window_clamp(rate, srtt_us), bdp = rate * srtt_us / 1000000;
	__u64 round = srtt_us * 1000, allowed;

	if (round < RAMP_MIN_NS)
		round = RAMP_MIN_NS;
	if (w->mark_ns == 0) {
		w->mark_ns = now;
		w->mark_nxt = rcv_nxt;
		w->last_nxt = rcv_nxt;
		w->target = fifo < most ? fifo : most;
		w->allowed = w->target;
	}
	if (now - w->mark_ns >= round) {
		/* per round trip; no overflow: 4 GB x srtt_us (under 2^29),
		 * over at least RAMP_MIN_NS in us */
		__u64 per_round =
			(__u64)(rcv_nxt - w->mark_nxt) * srtt_us / ((now - w->mark_ns) / 1000);
		__u64 target = 2 * per_round < bdp ? 2 * per_round : bdp;

		target += fifo;
		w->target = target < most ? target : most;
		w->round_bytes = per_round < 0xffffffff ? per_round : 0xffffffff;
		w->mark_ns = now;
		w->mark_nxt = rcv_nxt;
	}
	allowed = (__u64)w->allowed + grown(rcv_nxt - w->last_nxt, w->round_bytes, bdp, fifo);
	w->last_nxt = rcv_nxt;
	w->allowed = allowed < w->target ? allowed : w->target;
	return w->allowed;
}

/*
 * Clamps an open socket's window for a queue at `rate` that is about to be
 * built in front of it, from an iterator, as the sockops program would once
 * the socket is armed (no round trip measured, no clamp): the senders' next
 * ACK (the namespace lets TCP shrink an offered window) brings what they
 * keep in flight down to what their FIFOs take before the queue holds them
 * (docs/design/state-and-upgrades.md, "Connections open before the limit").
 */
static __always_inline void clamp_rcv_window_ahead(struct tcp_sock *tp, __u64 rate)
{
	__u64 srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	__u32 clamp = rcv_window_clamp(rate, srtt_us);

	if (srtt_us && clamp < BPF_CORE_READ(tp, window_clamp))
		bpf_setsockopt(tp, SOL_TCP, TCP_WINDOW_CLAMP, &clamp, sizeof(clamp));
}

static __always_inline void clamp_rcv_window(struct bpf_sock_ops *skops)
{
	__u64 seen = limits_seen(), srtt_us = skops->srtt_us >> 3;
	struct bpf_sock *sk = skops->sk;
	struct rcv_window *w;
	struct tcp_sock *tp;
	__u32 set;

	if (!sk)
		return;
	w = bpf_sk_storage_get(&rcv_windows, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	tp = bpf_skc_to_tcp_sock(sk);
	if (!w || !tp)
		return;
	if (w->seen != seen) {
		__u64 rate = queued_ingress_rate_of(tp);

		/* a new rate: the ramp starts again from its FIFO, so a
		 * lower limit does not keep the old one's window */
		if (rate != w->rate)
			w->mark_ns = 0;
		w->rate = rate;
		w->seen = seen;
		if (w->rate == 0) {
			/* the limit or the queue went: stop running before
			 * every segment */
			release_rcv_window(skops, tp);
			bpf_sock_ops_cb_flags_set(skops,
						  skops->bpf_sock_ops_cb_flags &
							  ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
			return;
		}
	}
	/* no round trip measured (a SYN cookie): the path's length is unknown,
	 * and a FIFO-deep window could hold a long path under the limit */
	if (w->rate == 0 || srtt_us == 0)
		return;
	set = ramped_window(w, w->rate, srtt_us, skops->rcv_nxt);
	/* looked at on every segment, as autotuning may have raised it since;
	 * read first (a load from the socket the kernel is sending on), as it
	 * is mostly unchanged and the option's call chain costs more */
	if (tp->window_clamp == set)
		return;
	bpf_setsockopt(skops, SOL_TCP, TCP_WINDOW_CLAMP, &set, sizeof(set));
}

/*
 * The header-option flag for a socket established in a cgroup with an
 * ingress limit and a queue in front of it (its receive window is clamped
 * before each segment it sends), else none. The socket's clamp state is made here from the limit
 * found, so its first segment does not walk its cgroups again.
 */
static __always_inline int rcv_window_flag(struct bpf_sock_ops *skops)
{
	/* read before the limit, as refresh_limit does: a change that lands
	 * in between moves it again */
	__u64 seen = limits_seen(), rate;
	struct bpf_sock *sk = skops->sk;
	struct rcv_window *w;
	struct tcp_sock *tp;

	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	rate = tp ? queued_ingress_rate_of(tp) : 0;
	if (rate == 0)
		return 0;
	w = bpf_sk_storage_get(&rcv_windows, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (w) {
		w->rate = rate;
		w->seen = seen;
	}
	return BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
}

#endif
