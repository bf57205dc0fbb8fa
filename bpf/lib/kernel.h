/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What the programs know of the kernel beyond its UAPI headers: the socket
 * options and constants those headers lack; the kernel's own structs, as far
 * as the sockops program, the iterators and the host classifier read them,
 * mirrored for CO-RE (relocated to the running kernel's layout when the
 * object loads); and the steps the programs take over them: a packet's TCP
 * socket, a socket's cgroup and the cgroups above it, the socket an
 * iterator visits. Kept in one place, so that what depends on the running
 * kernel is found together (crates/shaper/src/kernel.rs says which
 * releases have what the shaper needs).
 */
#ifndef PODSHAPER_LIB_KERNEL_H
#define PODSHAPER_LIB_KERNEL_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#define SOL_SOCKET 1
#define SO_MAX_PACING_RATE 47
#define SOL_TCP 6
#define TCP_BPF_SNDCWND_CLAMP 1002
#define TCP_BPF_DELACK_MAX 1003
#ifndef TCP_BPF_SOCK_OPS_CB_FLAGS
#define TCP_BPF_SOCK_OPS_CB_FLAGS 1008
#endif
/* the kernel's TCP_RMEM_TO_WIN_SCALE: a window is space x scaling_ratio >> 8 */
#define RMEM_TO_WIN_SCALE 8

#define NSEC_PER_SEC 1000000000ULL
/* cgroup v2 nesting we look through for a limited ancestor */
#define MAX_CGROUP_LEVEL 16

/*
 * The kernel's structs, as far as the sockops program and the iterators read
 * them: relocated to the running kernel's layout (CO-RE), read with
 * bpf_probe_read_kernel.
 */
struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup_subsys_state {
	struct cgroup_subsys_state *parent;
} __attribute__((preserve_access_index));

/* `self` is struct cgroup's first member: a parent css is its cgroup */
struct cgroup {
	struct cgroup_subsys_state self;
	struct kernfs_node *kn;
	int level;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned char skc_state;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
	unsigned long sk_max_pacing_rate;
	int sk_rcvbuf;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 srtt_us;
	__u32 mss_cache;
	__u32 snd_ssthresh;
	__u32 snd_cwnd_clamp;
	__u32 window_clamp;
	__u8 scaling_ratio;
	__u8 bpf_sock_ops_cb_flags;
} __attribute__((preserve_access_index));

/* TCP_ESTABLISHED in the kernel's socket states */
#define TCP_STATE_ESTABLISHED 1

/* An iter/tcp program's context. */
struct bpf_iter_meta;
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} __attribute__((preserve_access_index));

/* The packet's full TCP socket, or NULL (UDP, raw, request and timewait sockets). */
static __always_inline struct bpf_sock *tcp_fullsock(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 0;
	return sk;
}

/* A socket's cgroup, and a cgroup's parent (NULL above the root): the steps
 * of the walks up a socket's cgroups (a pod's limit covers its containers,
 * a level or more below it). */
static __always_inline struct cgroup *socket_cgroup(struct tcp_sock *tp)
{
	return BPF_CORE_READ((struct sock *)tp, sk_cgrp_data.cgroup);
}

static __always_inline struct cgroup *parent_cgroup(struct cgroup *cg)
{
	return (struct cgroup *)BPF_CORE_READ(cg, self.parent);
}

/* Whether a socket's cgroup is `target` or below it. */
static __always_inline int in_cgroup(struct tcp_sock *tp, __u64 target)
{
	struct cgroup *cg = socket_cgroup(tp);

	for (int i = 0; i < MAX_CGROUP_LEVEL && cg; i++, cg = parent_cgroup(cg)) {
		if (BPF_CORE_READ(cg, kn, id) == target)
			return 1;
	}
	return 0;
}

/* The TCP socket an iterator visits and the cgroup id user space wrote into
 * the iterator's one-entry `target_map`; NULL if either is missing. */
static __always_inline struct tcp_sock *iter_socket(struct bpf_iter__tcp *ctx, void *target_map,
						    __u64 *target)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	__u32 zero = 0;
	__u64 *value;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	value = bpf_map_lookup_elem(target_map, &zero);
	if (!value || *value == 0)
		return 0;
	*target = *value;
	return tp;
}

#endif
