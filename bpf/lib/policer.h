/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The ingress policer's decisions beyond the bucket: which TCP packets may
 * take the bucket below empty (retransmissions, small packets, a flow's
 * packet after a drop or a gap), each flow's fair part of the rate through
 * the policer alone, the TCP sequence range a received packet carries, and
 * the receiver's delayed ACK, shortened so that a sender recovers from a
 * drop on the next ACK rather than the delayed-ACK timer.
 */
#ifndef PODSHAPER_LIB_POLICER_H
#define PODSHAPER_LIB_POLICER_H

#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>

#include "shaper.h"
#include "bucket.h"
#include "kernel.h"
#include "limits.h"
#include "maps.h"

/* ingress: how long a socket's highest sequence is taken as known after a
 * packet that took the lock set it, in rcv_clock units (1024 ns): 67 ms */
#define RCV_HIGH_FRESH (64U << 10)
/* ingress: longest a TCP flow goes without a packet let in */
#define FEEDBACK_GAP_NS (1ULL * 1000 * 1000)

/*
 * The TCP sequence range a packet carries. cgroup_skb data starts at the IP
 * header. Returns 0 when the packet is not TCP with payload (or has IPv6
 * extension headers, which are rare enough to treat as new data).
 *
 * The headers are read in place when they are in the packet's linear part
 * (as received packets' are), else copied out (bpf_skb_load_bytes, three
 * helper calls).
 */
static __always_inline int tcp_payload_range(struct __sk_buff *skb, __u32 *seq, __u32 *end)
{
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	__u32 l3len, doff, raw_seq;
	__u8 *first = data, version;
	struct tcphdr *th, copy;

	if ((void *)(first + 1) > data_end)
		goto copied;
	if ((*first >> 4) == 4) {
		struct iphdr *ip = data;

		if ((void *)(ip + 1) > data_end)
			goto copied;
		if (ip->protocol != IPPROTO_TCP)
			return 0;
		l3len = (*first & 0xf) * 4;
	} else if ((*first >> 4) == 6) {
		struct ipv6hdr *ip6 = data;

		if ((void *)(ip6 + 1) > data_end)
			goto copied;
		if (ip6->nexthdr != IPPROTO_TCP)
			return 0;
		l3len = sizeof(struct ipv6hdr);
	} else {
		return 0;
	}
	th = data + l3len;
	if ((void *)(th + 1) > data_end)
		goto copied;
	doff = th->doff;
	raw_seq = th->seq;
	goto range;

copied:
	if (bpf_skb_load_bytes(skb, 0, &version, 1))
		return 0;
	if ((version >> 4) == 4) {
		__u8 proto;

		if (bpf_skb_load_bytes(skb, offsetof(struct iphdr, protocol), &proto, 1) ||
		    proto != IPPROTO_TCP)
			return 0;
		l3len = (version & 0xf) * 4;
	} else if ((version >> 4) == 6) {
		__u8 next;

		if (bpf_skb_load_bytes(skb, offsetof(struct ipv6hdr, nexthdr), &next, 1) ||
		    next != IPPROTO_TCP)
			return 0;
		l3len = sizeof(struct ipv6hdr);
	} else {
		return 0;
	}
	if (bpf_skb_load_bytes(skb, l3len, &copy, sizeof(copy)))
		return 0;
	doff = copy.doff;
	raw_seq = copy.seq;

range:
	if (skb->len <= l3len + doff * 4)
		return 0;
	*seq = bpf_ntohl(raw_seq);
	*end = *seq + (skb->len - l3len - doff * 4);
	return 1;
}

/* The ingress program's clock for `rcv_pass_at`: ns / 1024, low 32 bits
 * (wraps every 73 minutes, far beyond the spans it measures), low bit clear. */
static __always_inline __u32 rcv_clock(__u64 now)
{
	return (__u32)(now >> 10) & ~1U;
}

/* How long ago (rcv_clock units) a socket last had a packet that took the
 * lock let in; the most if none ever was. */
static __always_inline __u32 rcv_since_pass(struct sock_state *ss, __u32 clock)
{
	return ss->rcv_pass_at ? clock - (ss->rcv_pass_at & ~1U) : 0xffffffff;
}

/*
 * Whether a socket's `rcv_high` still says where its sequence is. Packets on
 * a CPU's slice do not update it (they read nothing of the socket), so it
 * can fall behind the sequence while a flow runs on slices; a value left
 * 2 GB behind would read, in 32-bit sequence arithmetic, as ahead of all new
 * data, and every packet would then count as a retransmission. Taken as
 * known for RCV_HIGH_FRESH (about 67 ms) after a packet that took the lock
 * was let in (packets dropped meanwhile move it too, but not the time: it
 * goes stale sooner, never later): less than 2 GB even at 200 Gbit/s.
 */
static __always_inline int rcv_high_fresh(struct sock_state *ss, __u32 clock)
{
	return rcv_since_pass(ss, clock) <= RCV_HIGH_FRESH;
}

/* Notes a packet that took the lock: the highest TCP sequence it carried,
 * dropped or not (a dropped tail's resend is a retransmission too), and
 * either when it was let in or that it was dropped. */
static __always_inline void note_verdict(struct sock_state *ss, __u32 end, __u32 clock, int dropped)
{
	if (!rcv_high_fresh(ss, clock) || (__s32)(end - ss->rcv_high) > 0)
		ss->rcv_high = end;
	ss->rcv_pass_at = dropped ? ss->rcv_pass_at | 1 : clock;
}

/*
 * Ingress fairness among a cgroup's TCP flows, for the policer alone (a
 * hostNetwork pod has no queue in front). The bucket counts the flows that
 * bring data in each window (the egress steering's window fields, unused on
 * ingress; FAIR_WINDOW_BYTES long), each socket its KiB let in during the
 * window, and a flow's fair part of a window is the rate's bytes over the
 * flows. When the bucket cannot cover a packet, a flow within its part
 * borrows (down to a burst below empty), and a flow over its part by more
 * than 64 KiB (a GSO packet of slack), with others beside it, loses the
 * pass after a drop: it keeps only the passes of retransmissions, of small
 * packets and after a millisecond with nothing let in, so its sender still
 * recovers without a timeout. Before, one cubic flow of 16 at 1G took
 * 390-510 MB of 710 in half the runs (Jain 0.12-0.31): each of its drops let
 * its next packet through, so it never lost two running and never backed
 * off for long (docs/design/ingress.md, "Fair parts through the policer alone").
 * Taking the retransmissions' pass from such a flow as well held BBR
 * senders, which do not back off on loss, to 0.67-0.89 of 1G; a threshold
 * of twice the part over windows of 256 KiB let one cubic flow of eight at
 * 100M take 3.5 parts.
 */
#define FAIR_UNDER 1
#define FAIR_HOG 2
#define HOG_SLACK_BYTES (64 * 1024)

/* Why a TCP packet the bucket cannot cover may borrow (may_borrow bits). */
#define BORROW_SMALL 1	    /* an ACK or small request */
#define BORROW_RETRANSMIT 2 /* below the highest sequence seen */
#define BORROW_AFTER_DROP 4 /* the flow's last packet was dropped */
#define BORROW_AFTER_GAP 8  /* nothing let in for FEEDBACK_GAP_NS */
/* what a flow over its fair part (FAIR_HOG) keeps */
#define BORROW_HOG_KEEPS (BORROW_SMALL | BORROW_RETRANSMIT | BORROW_AFTER_GAP)

/* Counts a socket into the ingress window; returns the KiB it had let in
 * during it. Called with the lock held. */
static __always_inline __u64 count_ingress_flow(struct ps_bucket *b, struct sock_state *ss)
{
	__u16 tag = window_tag(b->window_seq + 1);

	if (ss->rcv_window != tag) {
		ss->rcv_window = tag;
		ss->rcv_window_kib = 0;
		b->window_flows++;
	}
	return ss->rcv_window_kib;
}

/* Adds a packet let in to its socket's KiB of the window (saturating: 64 MiB
 * in a window of 10 ms or more is over any part of 51 Gbit/s). */
static __always_inline void add_ingress_bytes(struct sock_state *ss, __u64 len)
{
	__u64 kib = ss->rcv_window_kib + ((len + 1023) >> 10);

	ss->rcv_window_kib = kib > 0xffff ? 0xffff : kib;
}

/* FAIR_UNDER if a packet of `len` keeps its flow (which had `had_kib` of
 * the window) within its part, FAIR_HOG if the flow is over its part by
 * more than HOG_SLACK_BYTES while other flows send, else 0. Called with the
 * lock held. */
static __always_inline int fair_standing(struct ps_bucket *b, __u64 had_kib, __u64 len)
{
	__u64 flows = active_flows(b);
	__u64 part, had = had_kib << 10;

	if (flows == 0)
		flows = 1;
	/* no overflow: windows of more than 10 ms are only taken below 105 MB/s */
	part = b->rate / flows * (b->window_ns / 1000) / 1000000;
	if (had + len <= part)
		return FAIR_UNDER;
	if (flows > 1 && had > part + HOG_SLACK_BYTES)
		return FAIR_HOG;
	return 0;
}

/*
 * The storage of the TCP socket a received packet carries data for (made if
 * it has none), and the packet's sequence range; NULL for anything else.
 */
static __always_inline struct sock_state *data_socket(struct __sk_buff *skb, struct bpf_sock *tcp,
						      __u32 *seq, __u32 *end)
{
	struct sock_state *sp;

	if (!tcp)
		return 0;
	sp = bpf_sk_storage_get(&sock_states, tcp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!sp || !tcp_payload_range(skb, seq, end))
		return 0;
	return sp;
}

/*
 * Shortens the delayed ACK of a socket the current task opens or listens on
 * (accepted connections inherit the listener's), if its cgroup has an
 * ingress limit: to 2 jiffies, the least the kernel takes (tried at HZ 1000,
 * 250, 100). When the policer drops a packet, the sender recovers on the
 * receiver's ACKs; a lone segment, or a retransmission that fills a hole
 * with little behind it, waited for the delayed-ACK timer (40 ms or more)
 * while the sender, its window spent, sent nothing. One cubic flow through
 * the policer alone got 0.63-0.71 of 100M and 1G; with this, 0.95-0.99
 * (docs/design/ingress.md, "The receiver's delayed ACK"). A connection
 * asking for ECN gets the same from the kernel on its own (an ACK at once
 * for every packet that is not ECT, as retransmissions are), which is why
 * ECN senders do so much better.
 */
static __always_inline void set_short_delack(void *sock)
{
	__u32 usecs[] = {2000, 8000, 20000};

	for (int i = 0; i < 3; i++) {
		if (bpf_setsockopt(sock, SOL_TCP, TCP_BPF_DELACK_MAX, &usecs[i],
				   sizeof(usecs[i])) == 0)
			return;
	}
}

static __always_inline void shorten_delayed_ack(struct bpf_sock_ops *skops)
{
	struct tcp_sock *tp = skops->sk ? bpf_skc_to_tcp_sock(skops->sk) : 0;
	struct ps_limit *found = tp ? socket_limit(tp) : 0;

	if (!found || found->dir[PS_INGRESS].rate_bytes_per_sec == 0)
		return;
	set_short_delack(skops);
}

#endif
