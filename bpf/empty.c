// SPDX-License-Identifier: GPL-2.0-only
/*
 * Programs that pass every packet and do nothing else. `podshaper bench`
 * attaches them beside the shaper, on the same cgroup, so that the shaper's
 * run time per packet is reported beside what running any program on the
 * same packets costs on the same machine (the kernel's BPF statistics count
 * the entry and exit of a program, and its caches, as well as its work).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup_skb/egress")
int empty_egress(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/ingress")
int empty_ingress(struct __sk_buff *skb)
{
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
