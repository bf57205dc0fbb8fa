/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The tc classifiers' helpers: reading a packet's flow, a flow's turn at the
 * ingress queue's per-flow FIFOs and when an idle flow takes a new one (the
 * flow classifier), and, for hostNetwork pods, the slot in the node's queue
 * of the limited cgroup a packet's socket is in (the host classifier).
 */
#ifndef PODSHAPER_LIB_CLASSIFIER_H
#define PODSHAPER_LIB_CLASSIFIER_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>

#include "shaper.h"
#include "kernel.h"
#include "maps.h"

/*
 * A flow idle this long takes the next FIFO in turn when it sends again, as
 * a new one. The map forgets flows only when it is full, and a connection
 * that reuses an ended one's addresses and ports (a client's ports come
 * round) would otherwise get that one's FIFO, whichever flow now has it:
 * two flows in one FIFO share its part, and with receive windows sized to
 * one FIFO (the receive-window clamp) they overflow it. Units of 2^20 ns.
 */
#define FLOW_IDLE_UNITS 2048   /* about 2.1 s */
#define FLOW_REFRESH_UNITS 128 /* the time seen is written at most this often */

static __always_inline __u32 flow_clock(void)
{
	return (__u32)(bpf_ktime_get_ns() >> 20);
}

/* A classifier (not direct-action) returns the class id, major:minor. */
static __always_inline int to_flow_queue(__u32 queue)
{
	return (PS_QUEUE_MAJOR << 16) | (PS_FLOW_CLASS_BASE + queue % PS_FLOW_QUEUES);
}

/* The packet's flow; 0 if it is not IP. Ports stay 0 for other protocols,
 * IPv4 fragments and IPv6 extension headers. */
static __always_inline int read_flow(struct __sk_buff *skb, struct ps_flow *f)
{
	__u32 l4 = 0;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes_relative(skb, 0, &ip, sizeof(ip), BPF_HDR_START_NET))
			return 0;
		f->src[0] = ip.saddr;
		f->dst[0] = ip.daddr;
		f->proto = ip.protocol;
		if (!(ip.frag_off & bpf_htons(0x3fff)))
			l4 = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes_relative(skb, 0, &ip6, sizeof(ip6), BPF_HDR_START_NET))
			return 0;
		__builtin_memcpy(f->src, &ip6.saddr, sizeof(f->src));
		__builtin_memcpy(f->dst, &ip6.daddr, sizeof(f->dst));
		f->proto = ip6.nexthdr;
		l4 = sizeof(ip6);
	} else {
		return 0;
	}
	if (l4 && (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP)) {
		__u16 ports[2];

		if (!bpf_skb_load_bytes_relative(skb, l4, ports, sizeof(ports),
						 BPF_HDR_START_NET)) {
			f->sport = ports[0];
			f->dport = ports[1];
		}
	}
	return 1;
}

/* The slot of the limited cgroup a TCP socket is in (or below); 0 if none.
 * The socket's cgroup and its parents are read as the iterators read them
 * (cgroup programs have a helper for a socket's ancestors at a level; tc
 * programs do not); only the levels user space listed are looked up. */
static __always_inline __u32 host_slot_of(struct tcp_sock *tp)
{
	__u32 levels[PS_HOST_LEVELS] = {}, lowest = ~0U;
	struct cgroup *cg;

	for (__u32 i = 0; i < PS_HOST_LEVELS; i++) {
		/* the key's copy goes to the stack for the lookup; the mask
		 * keeps the index bounded for verifiers that lose track of a
		 * value reloaded from there (6.1 and 6.12 refused it) */
		__u32 key = i;
		__u32 *level = bpf_map_lookup_elem(&host_queue_levels, &key);

		if (!level || !*level)
			break;
		levels[i & (PS_HOST_LEVELS - 1)] = *level;
		if (*level < lowest)
			lowest = *level;
	}
	if (lowest == ~0U)
		return 0;
	cg = socket_cgroup(tp);
	for (int i = 0; i < MAX_CGROUP_LEVEL && cg; i++, cg = parent_cgroup(cg)) {
		__u32 level = BPF_CORE_READ(cg, level);
		int listed = 0;

		if (level < lowest)
			break;
		for (__u32 j = 0; j < PS_HOST_LEVELS; j++)
			listed |= levels[j] == level;
		if (listed) {
			__u64 cgid = BPF_CORE_READ(cg, kn, id);
			__u32 *slot = bpf_map_lookup_elem(&host_queue_slots, &cgid);

			if (slot)
				return *slot <= PS_HOST_SLOTS ? *slot : 0;
		}
	}
	return 0;
}

/* The htb class (minor id) of a packet of a limited hostNetwork pod's TCP
 * socket; 0 if it is for no such socket. UDP is left to the policer: tc
 * programs can reach a UDP socket's cgroup only for IPv6 sockets
 * (bpf_skc_to_udp6_sock), and the policer holds UDP to its rate anyway (it
 * does not back off). */
static __always_inline __u32 host_class(struct __sk_buff *skb, const struct ps_flow *flow)
{
	struct bpf_sock_tuple tuple = {};
	struct host_sock *known;
	struct tcp_sock *tp;
	struct bpf_sock *sk;
	__u32 size, slot = 0, queue = 0, zero = 0, *next;
	__u64 *version;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		tuple.ipv4.saddr = flow->src[0];
		tuple.ipv4.daddr = flow->dst[0];
		tuple.ipv4.sport = flow->sport;
		tuple.ipv4.dport = flow->dport;
		size = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, flow->src, sizeof(tuple.ipv6.saddr));
		__builtin_memcpy(tuple.ipv6.daddr, flow->dst, sizeof(tuple.ipv6.daddr));
		tuple.ipv6.sport = flow->sport;
		tuple.ipv6.dport = flow->dport;
		size = sizeof(tuple.ipv6);
	}
	version = bpf_map_lookup_elem(&host_queue_version, &zero);
	if (!version)
		return 0;
	sk = bpf_sk_lookup_tcp(skb, &tuple, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	known = bpf_sk_storage_get(&host_socks, sk, 0, 0);
	if (known && known->version == *version) {
		slot = known->slot;
		queue = known->queue;
	} else {
		tp = bpf_skc_to_tcp_sock(sk);
		if (tp)
			slot = host_slot_of(tp);
		if (slot && !known)
			known = bpf_sk_storage_get(&host_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (slot) {
			next = bpf_map_lookup_elem(&host_next_flow_queue, &slot);
			if (next)
				queue = __sync_fetch_and_add(next, 1);
		}
		if (known) {
			known->slot = slot;
			known->queue = queue;
			known->version = *version;
		}
	}
	bpf_sk_release(sk);
	if (!slot)
		return 0;
	return slot * PS_HOST_SLOT_STRIDE +
	       (skb->len < 256 ? PS_SMALL_CLASS : PS_FLOW_CLASS_BASE + queue % PS_FLOW_QUEUES);
}

#endif
