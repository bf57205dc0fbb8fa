// SPDX-License-Identifier: GPL-2.0-only
/*
 * podshaper's BPF shaper: per-cgroup egress and ingress bandwidth limits.
 *
 * One loaded object serves every limited cgroup. Limits and counters live in
 * maps keyed by cgroup id, so a limit changes with one map update.
 *
 * Egress has two layers (docs/design/egress.md explains why):
 *  1. TCP pacing. Every TCP socket of a limited cgroup is paced
 *     (SO_MAX_PACING_RATE, set from the sockops program) at the cgroup's
 *     "fair share": a level the egress program steers every few milliseconds
 *     so that the cgroup's measured aggregate matches its limit. Flows that
 *     send less than the share leave room for the others (max-min fairness),
 *     and TCP never has to lose a packet to find the limit. While the bucket
 *     below is short, no flow's share exceeds much what the most-sending flow
 *     got in the last window. The same sockops
 *     program clamps each socket's congestion window near its share's
 *     bandwidth-delay product, which keeps TSO packets small.
 *  2. A token bucket behind it that holds UDP and anything unpaced to the
 *     limit. TCP in deficit is passed with a congestion notification to the
 *     local stack (cwnd reduction, no loss) as long as the deficit stays
 *     under one burst; past that, and for other protocols, packets are dropped.
 *
 * From about 65 Mbit/s up, each CPU takes a slice of a bucket at a time (a
 * couple of milliseconds at the rate, while the bucket can spare it) and
 * passes packets on it without the lock, the clock or the cgroup's shared
 * state; the bucket decides, per packet, whatever it cannot spare a slice
 * for (cpu_credits, lib/credit.h).
 *
 * Ingress is a token-bucket policer: ECN-capable packets are marked CE while
 * the bucket (with the slices CPUs hold) is less than half full, and packets
 * that find it empty are dropped. Where a pod has a network namespace of its
 * own, a queue in front of it (ifb + htb, built by the daemon) holds the rate
 * first; the flow classifier at the end of this file gives each flow a FIFO
 * of its own there. hostNetwork pods can get one queue in the node's
 * namespace, fed by the host classifier after it.
 *
 * This file holds the programs, the entry points the daemon loads and
 * attaches. What they share is in lib/, one header per concern: the kernel's
 * structs and constants (kernel.h), every map (maps.h), the token bucket
 * (bucket.h), finding a cgroup's limit (limits.h), the CPUs' slices of a
 * bucket (credit.h), egress share steering and pacing (egress.h), the
 * ingress policer (policer.h), the receive-window clamp (rcv_window.h) and
 * the classifiers' flows and slots (classifier.h). The structs user space
 * shares are in shaper.h.
 */
#include <linux/bpf.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "shaper.h"
#include "lib/kernel.h"
#include "lib/maps.h"
#include "lib/bucket.h"
#include "lib/limits.h"
#include "lib/credit.h"
#include "lib/egress.h"
#include "lib/policer.h"
#include "lib/rcv_window.h"
#include "lib/classifier.h"

SEC("cgroup_skb/egress")
int podshaper_egress(struct __sk_buff *skb)
{
	__u64 cgid, len = skb->len, now, share = 0, seen = limits_seen();
	struct ps_credit *c = cpu_slice();
	struct bpf_sock *tcp = tcp_fullsock(skb);
	struct sock_state *p = 0;
	struct ps_state *st;
	struct ps_bucket *b;
	__u64 sent;
	struct bpf_tcp_sock *ts;
	int verdict = VERDICT_PASS, marked = 0, idle, oversized;

	/* a slice is only taken under a limit this way, so the socket is
	 * paced: its storage is made here if it has none yet */
	if (slice_covers(c, len, seen)) {
		if (tcp)
			p = bpf_sk_storage_get(&sock_states, tcp, 0, BPF_SK_STORAGE_GET_F_CREATE);
		pass_on_credit(c, p, len);
		return VERDICT_PASS;
	}
	st = bpf_get_local_storage(&cgroup_states, 0);
	if (st->limit_version != seen)
		refresh_limit(skb, st, seen, PS_EGRESS);
	if (!has_limit(st)) {
		/* a socket paced under an egress limit lifted since (the
		 * cgroup keeps its ingress limit): unpaced at its next ACK */
		if (tcp)
			p = bpf_sk_storage_get(&sock_states, tcp, 0, 0);
		if (p && p->want)
			p->want = 0;
		return pass_unlimited(st, len);
	}
	if (tcp)
		p = bpf_sk_storage_get(&sock_states, tcp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!takes_slices(st))
		c = 0;
	now = bpf_ktime_get_ns();
	/* no helper calls under the lock */
	ts = tcp ? bpf_tcp_sock(tcp) : 0;
	/* an unpaced socket with nothing in flight (below). A paced one at a
	 * low share has nothing in flight between most of its packets, and
	 * is held to its share anyway */
	idle = ts && (!p || !p->applied) && ts->packets_out == 0;
	/*
	 * A socket whose congestion window is well above the clamp its share
	 * needs: one that grew it before the limit came. The clamp bounds the
	 * window's growth only (slow start and congestion avoidance), and a
	 * paced socket, never short of window, never shrinks it: one flow
	 * limited to 10M while open kept sending 64 KiB packets, 52 ms of the
	 * limit each. A congestion notification makes TCP cut it by 30%, once
	 * per round trip, until it is near the clamp.
	 */
	oversized = ts && p && p->cwnd_clamp && ts->snd_cwnd > p->cwnd_clamp + (p->cwnd_clamp >> 1);

	bpf_spin_lock(&st->lock);
	b = &st->bucket;
	cgid = st->limit_cgid;
	if (b->rate == 0) {
		/* the limit went away since has_limit */
		bpf_spin_unlock(&st->lock);
		return VERDICT_PASS;
	}
	refill(b, now);
	if (c)
		settle_credit(st, c, 1);
	if (b->tokens >= (__s64)len) {
		b->tokens -= (__s64)len;
	} else if (tcp && b->tokens + (__s64)b->burst >= (__s64)len) {
		/*
		 * TCP over the limit: let it through but tell it to slow down
		 * (cwnd reduction, no loss). Marking only the flows over their
		 * share was tried: fairer at 10 Mbit/s x16 (Jain 0.84 against
		 * 0.74-0.84), worse at 1 Gbit/s x16 (0.93-0.97 of the rate
		 * against 0.99), so every flow is told.
		 */
		b->tokens -= (__s64)len;
		verdict = VERDICT_PASS_CN;
		marked = 1;
	} else if (tcp && len <= SMALL_PACKET_BYTES &&
		   b->tokens + 2 * (__s64)b->burst >= (__s64)len) {
		b->tokens -= (__s64)len;
		verdict = VERDICT_PASS_CN;
		marked = 1;
	} else if (idle && b->tokens + (__s64)b->max_deficit >= (__s64)len) {
		/*
		 * A socket with nothing in flight that is not paced to its
		 * share (opened before the limit came, where nothing armed
		 * it): dropped, its segment stays queued with no ACK to come,
		 * and it waits for the zero-window probe timer (200 ms) each
		 * time it empties the bucket. One cubic flow limited while
		 * open got a third of 30M so. Passed with a notification, it
		 * reduces its window and its ACKs clock it again; the deficit
		 * is paid back before anything else passes.
		 */
		b->tokens -= (__s64)len;
		verdict = VERDICT_PASS_CN;
		marked = 1;
	} else {
		verdict = VERDICT_DROP_CN;
	}
	if (oversized && verdict == VERDICT_PASS) {
		verdict = VERDICT_PASS_CN;
		marked = 1;
	}
	/*
	 * Steer on what the cgroup offers. A TCP packet dropped here is not
	 * lost: the stack sends it again, so counting it would count it twice.
	 * Other protocols' drops count, or a UDP flood would never lower the
	 * share of the TCP flows beside it.
	 */
	if (!tcp || verdict != VERDICT_DROP_CN)
		b->window_bytes += len;
	if (p) {
		sent = count_socket(b, p, b->window_seq + 1, len, verdict != VERDICT_DROP_CN);
		if (sent > b->window_top_bytes)
			b->window_top_bytes = sent;
	}
	steer_share(b, now);
	cap_share_in_deficit(b);
	share = b->share;
	count(b, len, verdict, marked);
	if (c && verdict == VERDICT_PASS)
		take_credit(st, c);
	bpf_spin_unlock(&st->lock);

	if (p)
		steer_socket(p, share, cgid);
	return verdict;
}

SEC("cgroup_skb/ingress")
int podshaper_ingress(struct __sk_buff *skb)
{
	__u64 len = skb->len, now, seen = limits_seen(), had_kib = 0;
	struct ps_credit *c = cpu_slice();
	struct bpf_sock *tcp;
	struct sock_state *ss;
	struct ps_state *st;
	struct ps_bucket *b;
	int verdict = VERDICT_PASS, congested = 0, may_borrow = 0, standing;
	__u32 seq = 0, end = 0, clock;

	/*
	 * On this CPU's slice of the bucket: nothing to drop, and marked if
	 * the bucket was under half full when the slice was taken. Nothing of
	 * the cgroup's state or of the socket is read: the socket's highest
	 * sequence, its time of last delivery, its last drop and its bytes in
	 * the fairness window are kept by the packets that take the lock, where
	 * they decide something (a slice is only given while the bucket holds
	 * three, so drops, borrowing and retransmissions happen there). After a
	 * while on slices, a flow's first packet to find the bucket short may
	 * borrow, as after a gap.
	 */
	if (slice_covers(c, len, seen)) {
		spend_credit(c, len);
		if (c->congested && bpf_skb_ecn_set_ce(skb))
			__sync_fetch_and_add(&c->marked, 1);
		return VERDICT_PASS;
	}
	st = bpf_get_local_storage(&cgroup_states, 0);
	if (st->limit_version != seen)
		refresh_limit(skb, st, seen, PS_INGRESS);
	if (!has_limit(st))
		return pass_unlimited(st, len);
	tcp = tcp_fullsock(skb);
	ss = data_socket(skb, tcp, &seq, &end);
	if (!takes_slices(st))
		c = 0;
	/*
	 * Some TCP packets may take the bucket into deficit (charged; new data
	 * pays it back): a retransmission (data below the highest sequence
	 * already seen), since dropping it again would leave the sender nothing
	 * to do but wait for its retransmission timer, which is what collapses
	 * TCP under a plain policer; and small packets (ACKs, requests).
	 */
	now = bpf_ktime_get_ns();
	clock = rcv_clock(now);
	if (tcp && len <= SMALL_PACKET_BYTES)
		may_borrow = BORROW_SMALL;
	if (ss) {
		if (rcv_high_fresh(ss, clock) && (__s32)(end - ss->rcv_high) <= 0)
			may_borrow |= BORROW_RETRANSMIT;
		/*
		 * A flow whose last packet was dropped, or that has had nothing
		 * let in for a while, gets one packet through, so that its sender
		 * hears (by SACK) what was lost and recovers fast instead of
		 * waiting for a retransmission timeout.
		 */
		if (ss->rcv_pass_at & 1)
			may_borrow |= BORROW_AFTER_DROP;
		if (rcv_since_pass(ss, clock) > FEEDBACK_GAP_NS >> 10)
			may_borrow |= BORROW_AFTER_GAP;
	}

	bpf_spin_lock(&st->lock);
	b = &st->bucket;
	if (b->rate == 0) {
		/* the limit went away since has_limit */
		bpf_spin_unlock(&st->lock);
		return VERDICT_PASS;
	}
	refill(b, now);
	if (c)
		settle_credit(st, c, 0);
	if (ss) {
		if (now - b->window_start_ns >= b->window_ns)
			start_window(b, now);
		had_kib = count_ingress_flow(b, ss);
	}
	if (b->tokens >= (__s64)len) {
		b->tokens -= (__s64)len;
		congested = under_half(b);
	} else {
		/* short: the flow's fair part decides whether it may borrow */
		standing = ss ? fair_standing(b, had_kib, len) : 0;
		if (standing == FAIR_HOG && len > SMALL_PACKET_BYTES)
			may_borrow &= BORROW_HOG_KEEPS;
		if ((may_borrow && b->tokens + (__s64)b->max_deficit >= (__s64)len) ||
		    (standing == FAIR_UNDER && b->tokens + (__s64)b->burst >= (__s64)len)) {
			b->tokens -= (__s64)len;
			congested = 1;
		} else {
			verdict = VERDICT_DROP;
		}
	}
	/* marks are counted below, once the packet is marked */
	count(b, len, verdict, 0);
	if (ss && verdict == VERDICT_PASS)
		add_ingress_bytes(ss, len);
	if (c && verdict == VERDICT_PASS)
		take_credit(st, c);
	bpf_spin_unlock(&st->lock);

	if (ss)
		note_verdict(ss, end, clock, verdict != VERDICT_PASS);

	/* early, loss-free signal for flows that negotiated ECN (a helper
	 * cannot run under the lock, so the mark is counted atomically; only
	 * this line writes the ingress `marked`) */
	if (congested && bpf_skb_ecn_set_ce(skb))
		__sync_fetch_and_add(&b->counters.marked, 1);
	return verdict;
}

/*
 * Applies the pacing rate the egress program chose for a socket. Runs when a
 * connection is established and on every RTT sample (every ACK), so a new
 * share reaches every active flow within one round trip. Also when a socket
 * connects or listens (in the task's system call, whose cgroup is the
 * socket's), for the delayed ACK.
 */
SEC("sockops")
int podshaper_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk;
	struct sock_state *p;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		shorten_delayed_ack(skops);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_RTT_CB_FLAG |
							 rcv_window_flag(skops));
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		clamp_rcv_window(skops);
		return 1;
	case BPF_SOCK_OPS_RWND_INIT:
		/*
		 * The window a connection's SYN or SYN-ACK offers: the clamp
		 * cannot take back what was offered, and the kernel's ~64 KB
		 * let the senders' slow start overflow a 16 KiB FIFO (2-3
		 * segments lost per flow at 10M). A passive connection's program
		 * runs before its socket exists, so whether the pod has an
		 * ingress limit is not known here: every connection of a limited
		 * cgroup starts with the senders' own initial window (RFC 6928),
		 * and grows from there as the kernel's does.
		 */
		skops->reply = RWND_INIT_SEGMENTS;
		return 1;
	case BPF_SOCK_OPS_RTT_CB:
		break;
	default:
		return 1;
	}
	sk = skops->sk;
	if (!sk)
		return 1;
	p = bpf_sk_storage_get(&sock_states, sk, 0, 0);
	if (!p)
		return 1;
	if (p->want != p->applied)
		pace(skops, p, p->want);
	clamp_cwnd(skops, p, skops->srtt_us >> 3, skops->mss_cache, skops->snd_ssthresh);
	return 1;
}

/*
 * Un-pacing after a detach. Once the programs are detached from a cgroup,
 * nothing would ever lift the pacing cap of its open TCP sockets; user space
 * writes the cgroup's id into `unpace_target` and runs this iterator over
 * every TCP socket, which resets the sockets that cgroup paced (pacing rate
 * and congestion window clamp) and gives its receiving sockets their window
 * back (the receive-window clamp).
 */
SEC("iter/tcp")
int podshaper_unpace(struct bpf_iter__tcp *ctx)
{
	__u32 unpaced = ~0U, unclamped = CWND_UNCLAMPED;
	struct rcv_window *rw;
	struct sock_state *ss;
	struct tcp_sock *tp;
	__u64 target = 0;

	tp = iter_socket(ctx, &unpace_target, &target);
	if (!tp)
		return 0;
	/* a clamped socket, or one armed by an older build whose state map a
	 * daemon upgrade replaced (as for pacing, unpace_unknown) */
	rw = bpf_sk_storage_get(&rcv_windows, tp, 0, 0);
	if ((rw || rcv_window_armed(tp)) && in_cgroup(tp, target)) {
		release_rcv_window(tp, tp);
		arm_rcv_window(tp, 0);
	}
	ss = bpf_sk_storage_get(&sock_states, tp, 0, 0);
	if (!ss) {
		unpace_unknown(tp, target);
		return 0;
	}
	if (ss->paced_cgid != target || ss->applied == 0)
		return 0;
	if (ss->cwnd_clamp &&
	    bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SNDCWND_CLAMP, &unclamped, sizeof(unclamped)) == 0)
		ss->cwnd_clamp = 0;
	if (bpf_setsockopt(tp, SOL_SOCKET, SO_MAX_PACING_RATE, &unpaced, sizeof(unpaced)) == 0) {
		ss->applied = 0;
		ss->want = 0;
		ss->paced_cgid = 0;
	}
	return 0;
}

/*
 * The receiving side of sockets opened before their cgroup's ingress limit
 * came (the sockops program sees only sockets connected, listened on or
 * established since): when a cgroup gets an ingress limit, user space writes
 * its id into `receivers_target` and runs this iterator over every TCP
 * socket, which, for those whose cgroup is that one or below it (a pod's
 * limit covers its containers), shortens the delayed ACK (without it a cubic
 * download through the policer alone gets 0.5-0.9 of the limit,
 * docs/design/ingress.md, "The receiver's delayed ACK") and, if a queue is
 * in front of the cgroup, arms the receive-window clamp, so that open
 * connections keep no window the queue's FIFOs cannot hold (it runs again
 * when a queue comes later).
 *
 * Before a queue is built in front of open flows, user space runs it with
 * the queue's rate (RECEIVERS_RATE: clamp_rcv_window_ahead), and with
 * RECEIVERS_GIVE_BACK if the queue then does not come.
 */
SEC("iter/tcp")
int podshaper_receivers(struct bpf_iter__tcp *ctx)
{
	__u32 rate_key = RECEIVERS_RATE;
	__u64 target = 0, *rate;
	struct tcp_sock *tp;

	tp = iter_socket(ctx, &receivers_target, &target);
	if (!tp || !in_cgroup(tp, target))
		return 0;
	rate = bpf_map_lookup_elem(&receivers_target, &rate_key);
	if (rate && *rate == RECEIVERS_GIVE_BACK) {
		release_rcv_window(tp, tp);
		return 0;
	}
	set_short_delack(tp);
	if (rate && *rate) {
		clamp_rcv_window_ahead(tp, *rate);
		return 0;
	}
	/* through the policer alone its first segment would only disarm it */
	if (bpf_map_lookup_elem(&queued_ingress, &target))
		arm_rcv_window(tp, 1);
	return 0;
}

/*
 * The sending side of sockets opened before their cgroup's egress limit came
 * (the sockops program turns on its per-ACK callback only at a connection's
 * establishment, so it never runs for them): when a cgroup is about to get
 * an egress limit, user space writes its id into `senders_target` and runs
 * this iterator over every TCP socket twice: first to count the established
 * ones in that cgroup or below it (the egress program starts the cgroup's
 * share at the limit divided among them), then to pace each at the limit,
 * clamp its congestion window, and turn on the callback, so that every ACK
 * from then on applies the share the egress program steers, as for a socket
 * opened under the limit. Pacing at the limit, not a share, spaces the first
 * packet (as large as the window grown before the limit) by its time at the
 * limit. It runs before the limit is in force, so flows sending at tens of
 * Gbit/s never meet a 128 KiB bucket unpaced; an unpaced socket empties the
 * bucket, loses what it sends with nothing in flight and waits for the
 * zero-window probe timer (0.60 of 100M, docs/design/state-and-upgrades.md,
 * "Connections open before the limit").
 */
SEC("iter/tcp")
int podshaper_senders(struct bpf_iter__tcp *ctx)
{
	__u32 rate_key = SENDERS_RATE, found_key = SENDERS_FOUND, share_key = SENDERS_SHARE,
	      unarmed_key = SENDERS_UNARMED;
	__u64 target = 0, *rate, *found, *share, *unarmed;
	struct sock_state *p;
	struct tcp_sock *tp;
	int flags, armed;

	tp = iter_socket(ctx, &senders_target, &target);
	if (!tp ||
	    BPF_CORE_READ((struct sock *)tp, __sk_common.skc_state) != TCP_STATE_ESTABLISHED ||
	    !in_cgroup(tp, target))
		return 0;
	rate = bpf_map_lookup_elem(&senders_target, &rate_key);
	if (!rate)
		return 0;
	if (*rate == 0) {
		found = bpf_map_lookup_elem(&senders_target, &found_key);
		if (found)
			__sync_fetch_and_add(found, 1);
		return 0;
	}
	p = bpf_sk_storage_get(&sock_states, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!p)
		return 0;
	flags = BPF_CORE_READ(tp, bpf_sock_ops_cb_flags);
	armed = flags & BPF_SOCK_OPS_RTT_CB_FLAG;
	if (!armed) {
		flags |= BPF_SOCK_OPS_RTT_CB_FLAG;
		armed = bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &flags,
				       sizeof(flags)) == 0;
	}
	/* a socket left without its callback (before Linux 6.12 an iterator
	 * cannot turn it on) keeps this rate: its share, not the whole limit */
	share = bpf_map_lookup_elem(&senders_target, &share_key);
	p->want = armed || !share || !*share ? *rate : *share;
	p->paced_cgid = target;
	pace(tp, p, p->want);
	clamp_cwnd(tp, p, BPF_CORE_READ(tp, srtt_us) >> 3, BPF_CORE_READ(tp, mss_cache),
		   BPF_CORE_READ(tp, snd_ssthresh));
	if (!armed) {
		unarmed = bpf_map_lookup_elem(&senders_target, &unarmed_key);
		if (unarmed)
			__sync_fetch_and_add(unarmed, 1);
	}
	return 0;
}

/*
 * The ingress queue's flow classifier (tc, on the ifb's htb root): which of
 * the PS_FLOW_QUEUES per-flow FIFOs a bulk packet waits in. htb serves them
 * in turn, so flows share the limit equally, where one shared FIFO let a few
 * flows take most of it (Jain 0.66 at 16 flows, docs/design/ingress.md, "A FIFO per flow").
 *
 * A flow is its addresses, protocol and ports (not the packet's hash, which
 * a TCP sender changes after a timeout). A hash of those modulo the FIFOs
 * would put two of 16 flows in one FIFO about half the time; instead a new
 * flow takes the next FIFO in turn for its destination (the pod's address:
 * flows of different pods never share an ifb), so up to PS_FLOW_QUEUES flows
 * each get one of their own. An LRU map remembers each flow's FIFO; a flow
 * idle for two seconds takes a new turn (FLOW_IDLE_UNITS, lib/classifier.h).
 */
SEC("classifier")
int podshaper_flow_class(struct __sk_buff *skb)
{
	struct ps_flow flow = {};
	struct flow_queue *known, fresh;
	__u32 *next, first = 0, mine, now, idle;

	if (!read_flow(skb, &flow))
		return to_flow_queue(bpf_get_hash_recalc(skb));
	now = flow_clock();
	known = bpf_map_lookup_elem(&flow_queues, &flow);
	if (known) {
		idle = now - known->seen;
		if (idle < FLOW_IDLE_UNITS) {
			if (idle > FLOW_REFRESH_UNITS)
				known->seen = now;
			return to_flow_queue(known->queue);
		}
	}
	next = bpf_map_lookup_elem(&next_flow_queue, &flow.dst);
	if (!next) {
		bpf_map_update_elem(&next_flow_queue, &flow.dst, &first, BPF_NOEXIST);
		next = bpf_map_lookup_elem(&next_flow_queue, &flow.dst);
		if (!next)
			return to_flow_queue(bpf_get_hash_recalc(skb));
	}
	/* atomic: one queue classifies under its qdisc's lock, but the map is
	 * shared by every queue on the node, and pods in different networks
	 * may have the same address */
	mine = __sync_fetch_and_add(next, 1);
	fresh.queue = mine;
	fresh.seen = now;
	/* a flow back from idle replaces its entry; a new one keeps whichever
	 * entry another CPU made first */
	bpf_map_update_elem(&flow_queues, &flow, &fresh, known ? BPF_ANY : BPF_NOEXIST);
	known = bpf_map_lookup_elem(&flow_queues, &flow);
	return to_flow_queue(known ? known->queue : mine);
}

/*
 * The node's ingress queue for hostNetwork pods (docs/design/ingress.md,
 * "Ingress: a queue for hostNetwork pods"). A hostNetwork pod shares the node's interfaces,
 * so nothing but its sockets tells its packets apart: this classifier, on
 * the ingress of every interface of the node's namespace, looks up the
 * socket a TCP packet is for and the cgroup above it at each level in
 * `host_queue_levels`; if that cgroup has a slot in `host_queue_slots`,
 * the packet goes (mirred, the filter's action) to the node's ifb, whose
 * htb takes skb->priority as the class: the pod's small-packet class or its
 * flow's FIFO. Any other packet returns 0: no match, nothing done.
 */
SEC("classifier")
int podshaper_host_class(struct __sk_buff *skb)
{
	struct ps_flow flow = {};
	__u32 minor;

	/* ports 0: a fragment: the policer alone */
	if (!read_flow(skb, &flow) || flow.proto != IPPROTO_TCP || !flow.dport)
		return 0;
	minor = host_class(skb, &flow);
	if (!minor)
		return 0;
	skb->priority = (PS_QUEUE_MAJOR << 16) | minor;
	return skb->priority;
}

char LICENSE[] SEC("license") = "GPL";
