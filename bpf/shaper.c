// SPDX-License-Identifier: GPL-2.0-only
/*
 * podshaper's BPF shaper: per-cgroup egress and ingress bandwidth limits.
 *
 * One loaded object serves every limited cgroup. Limits and counters live in
 * maps keyed by cgroup id, so a limit changes with one map update.
 *
 * Egress has two layers (docs/shaping.md explains why):
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
 * for (cpu_credits, below).
 *
 * Ingress is a token-bucket policer: ECN-capable packets are marked CE while
 * the bucket (with the slices CPUs hold) is less than half full, and packets
 * that find it empty are dropped. Where a pod has a network namespace of its
 * own, a queue in front of it (ifb + htb, built by the daemon) holds the rate
 * first; the flow classifier at the end of this file gives each flow a FIFO
 * of its own there. hostNetwork pods can get one queue in the node's
 * namespace, fed by the host classifier after it.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "shaper.h"

#define SOL_SOCKET 1
#define SO_MAX_PACING_RATE 47
#define SOL_TCP 6
#define TCP_BPF_SNDCWND_CLAMP 1002
#define TCP_BPF_DELACK_MAX 1003
/* the congestion window of a paced socket is clamped to twice its share's
 * bandwidth-delay product plus this many segments */
#define CWND_CLAMP_SLACK 8
/* ... and to at least this long at the share */
#define CWND_CLAMP_MIN_US 2000
#define CWND_UNCLAMPED 0x7fffffff

/* cgroup_skb verdicts (egress may add a congestion notification). */
#define VERDICT_DROP 0
#define VERDICT_PASS 1
#define VERDICT_DROP_CN 2
#define VERDICT_PASS_CN 3

#define NSEC_PER_SEC 1000000000ULL
/* cgroup v2 nesting we look through for a limited ancestor */
#define MAX_CGROUP_LEVEL 16
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
/* ingress: how long a socket's highest sequence is taken as known after a
 * packet that took the lock set it, in rcv_clock units (1024 ns): 67 ms */
#define RCV_HIGH_FRESH (64U << 10)
/* ingress: longest a TCP flow goes without a packet let in */
#define FEEDBACK_GAP_NS (1ULL * 1000 * 1000)
/*
 * TCP packets this small (pure ACKs, small requests and replies) pass while
 * a bulk packet would be dropped, charged to the bucket like any other: they
 * move no bulk, but a drop of one leaves its sender nothing to retransmit on
 * but its timer (an RPC waits 200 ms or more).
 */
#define SMALL_PACKET_BYTES 256
/* the share of a lone bulk flow may exceed the rate by 1/4: paced at exactly
 * the rate, one flow falls short of it (BBR's gain cycle and late pacing
 * timers: 0.79-0.92 of 1 Gbit/s here, no drop, no mark); the bucket level
 * pulls it back. Not with more flows: there the headroom widened the share's
 * swings (BBR, 100M x8: 0.72) */
#define SHARE_HEADROOM_SHIFT 2
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
/* fixed point for the steering ratio */
#define RATIO_ONE 1024ULL
/* the bucket level's weight in the steering: 1/8 (1/2 oscillated) */
#define INTEGRAL_SHIFT 3
/* the most the share may grow per window before damping (x1.5 after it);
 * slower growth (x1.125) measured worse: flows slowed by a congestion
 * notification took too long to get their share back */
#define SHARE_MAX_GROWTH (RATIO_ONE * 2)

/*
 * Per-socket state (socket local storage). 48 bytes: the kernel keeps a
 * storage's data on a cache line of its own after an 8-byte pointer, so all
 * of it is one line, which every egress packet, every ACK's sockops run
 * and every ingress packet that takes the lock read. (At 72 bytes the
 * egress window's byte count sat on a second line.) Hence 16- and 32-bit
 * window numbers and times. Pinned: see shaper.h on changing a state's
 * layout (session 14's was 56 bytes, so a restarted daemon starts the
 * sockets' map afresh rather than read it under this one).
 */
struct sock_state {
	/* the pacing rate the egress program wants the sockops program to set */
	__u64 want;    /* bytes per second, 0 = unpaced */
	__u64 applied; /* what was last set on the socket */
	/* the limited cgroup whose share this socket is paced at */
	__u64 paced_cgid;
	/* the egress steering window (+1, as window_tag) this socket was last
	 * counted in as a flow, and the one its byte count is of */
	__u16 egress_window;
	__u16 egress_bytes_window;
	/* the bytes this socket sent in that window (at most 200 ms: 4 GB
	 * would be 171 Gbit/s) */
	__u32 egress_window_bytes;
	/* congestion window clamp last set, in segments (0 = never set) */
	__u32 cwnd_clamp;
	/* ingress: end of the highest TCP sequence seen by a packet that took
	 * the lock, to tell retransmissions (see rcv_high_fresh) */
	__u32 rcv_high;
	/* ingress: when a packet of this socket that took the lock was last let
	 * in (rcv_clock), the low bit set if the last one to take the lock was
	 * dropped; 0 = never */
	__u32 rcv_pass_at;
	/* ingress: the fairness window (+1, as window_tag) this socket was
	 * last counted in, and the KiB it had let in during it */
	__u16 rcv_window;
	__u16 rcv_window_kib;
};
_Static_assert(sizeof(struct sock_state) == 48, "a socket's state fits the cache line its storage starts");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ps_limit);
} limits SEC(".maps");

/*
 * Bumped by user space after every change to `limits`. Each cgroup state
 * keeps the limit in force with the version it read it at, and looks the
 * limit up again only when the version moved: one array read per packet
 * instead of a hash lookup per cgroup level (a pod's containers sit a level
 * below the pod's limit).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} limits_version SEC(".maps");

/*
 * The shaping state of each attached cgroup and direction: cgroup storage,
 * which the kernel hands the program of the cgroup it runs for (no hash
 * lookup), created when the programs are attached and kept while the cgroup
 * lives. The daemon refuses a limit on a cgroup nested in (or containing) a
 * limited one, so the cgroup a program is attached to is the one whose limit
 * governs the packet. Egress and ingress have a storage each (the key
 * holds the attach type), so the two directions never share a lock.
 */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);
	__type(key, struct bpf_cgroup_storage_key);
	__type(value, struct ps_state);
} cgroup_states SEC(".maps");

/*
 * Each CPU's slice of each attached cgroup's bucket (struct ps_credit), in
 * the per-CPU cgroup storage: the kernel hands a program its own CPU's value
 * of the cgroup it is attached to, again without a lookup.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE);
	__type(key, struct bpf_cgroup_storage_key);
	__type(value, struct ps_credit);
} cpu_credits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} sock_states SEC(".maps");

/*
 * What user space tells the senders iterator (podshaper_senders), by key:
 * the cgroup about to get an egress limit, the pacing rate to give each of
 * its open sockets (0: only count them), how many there are (the counting
 * run's result), and the share the egress program starts that cgroup's
 * bucket at: the limit divided among them, so that the steering starts
 * where it would end rather than at the whole limit for each.
 */
#define SENDERS_CGROUP 0
#define SENDERS_RATE 1
#define SENDERS_FOUND 2
#define SENDERS_SHARE 3
/* sockets whose callback could not be turned on (the pacing run's result) */
#define SENDERS_UNARMED 4
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 5);
	__type(key, __u32);
	__type(value, __u64);
} senders_target SEC(".maps");

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
			  dir == PS_EGRESS ? SHARE_WINDOW_BYTES : FAIR_WINDOW_BYTES, now, first_share);
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

	if (span < b->window_ns)
		return;
	/*
	 * What the cgroup offered in the window, plus how far the bucket sits
	 * from half full: a bucket in deficit asks for a lower share, a full
	 * one for a higher share, so the level (not just the window's count of
	 * a few 64 KiB GSO packets) settles the aggregate on the rate.
	 */
	offered = (__s64)b->window_bytes +
		  (((__s64)(b->burst >> 1) - b->tokens) >> INTEGRAL_SHIFT);
	measured = offered > 0 ? (__u64)offered * NSEC_PER_SEC / span : 0;
	b->window_bytes = 0;
	b->top_flow_rate = b->window_top_bytes * NSEC_PER_SEC / span;
	b->window_top_bytes = 0;
	start_window(b, now);

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
 * Mbit/s of 10M (docs/shaping.md). Called with the lock held.
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

/* How a socket notes a steering or fairness window (+1): its low 16 bits.
 * The windows are at least 10 ms long, so a tag comes back after 655 s at
 * the soonest: a socket idle for just that long reads its old window's
 * count once. */
static __always_inline __u16 window_tag(__u64 window)
{
	return (__u16)window;
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
	oversized = ts && p && p->cwnd_clamp &&
		    ts->snd_cwnd > p->cwnd_clamp + (p->cwnd_clamp >> 1);

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
 * off for long (docs/shaping.md, "Fair parts through the policer alone").
 * Taking the retransmissions' pass from such a flow as well held BBR
 * senders, which do not back off on loss, to 0.67-0.89 of 1G; a threshold
 * of twice the part over windows of 256 KiB let one cubic flow of eight at
 * 100M take 3.5 parts.
 */
#define FAIR_UNDER 1
#define FAIR_HOG 2
#define HOG_SLACK_BYTES (64 * 1024)

/* Why a TCP packet the bucket cannot cover may borrow (may_borrow bits). */
#define BORROW_SMALL 1	     /* an ACK or small request */
#define BORROW_RETRANSMIT 2  /* below the highest sequence seen */
#define BORROW_AFTER_DROP 4  /* the flow's last packet was dropped */
#define BORROW_AFTER_GAP 8   /* nothing let in for FEEDBACK_GAP_NS */
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

/*
 * The receive window (docs/shaping.md, "A receive window no deeper than the
 * flow's FIFO"). A socket of a cgroup with an ingress limit and a queue in
 * front of it never advertises more window than 7/8 of its flow's FIFO in
 * the queue plus twice the
 * bandwidth-delay product at the whole limit over the handshake's round trip
 * (on a longer path than a veth, the window the rate needs). So its sender
 * never has more in flight than the FIFO takes, and the queue loses nothing:
 * no resends, and no data held out of order at the receiver behind a hole.
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
#ifndef TCP_BPF_SOCK_OPS_CB_FLAGS
#define TCP_BPF_SOCK_OPS_CB_FLAGS 1008
#endif
/* the receive window a limited cgroup's connections start with, in segments */
#define RWND_INIT_SEGMENTS 10
/* the kernel's TCP_RMEM_TO_WIN_SCALE: a window is space x scaling_ratio >> 8 */
#define RMEM_TO_WIN_SCALE 8

/* A socket's receive-window clamp: socket storage of its own (the sockops
 * program and the iterators are the only readers, so sock_state's cache
 * line stays as the packet programs need it). Pinned, so that a restarted
 * daemon's detach finds the clamps to give back; a socket still armed that
 * finds no state (a daemon whose build changed this layout) starts again. */
struct rcv_window {
	/* limits_seen() when `rate` was read */
	__u64 seen;
	/* the governing cgroup's ingress rate, bytes per second, if a queue is
	 * in front of it (queued_ingress); 0 = none */
	__u64 rate;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rcv_window);
} rcv_windows SEC(".maps");

/*
 * The cgroups with an ingress queue in front of them (the daemon's, in a
 * pod's network namespace or the node's for hostNetwork pods), written by
 * user space once the queue is in place. Only there is a receive window
 * clamped: through the policer alone there is no FIFO for a window to fit
 * (the policer delays nothing, so no window holds a sender to the rate),
 * and the clamp would only cost a run before every segment
 * (docs/shaping.md, "Only where a queue is in front").
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} queued_ingress SEC(".maps");

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
	__u64 bytes = rate * PS_FLOW_QUEUE_US / 1000000, floor = rate * PS_FLOW_QUEUE_MIN_US / 1000000;

	if (bytes > PS_FLOW_QUEUE_CAP_BYTES)
		bytes = PS_FLOW_QUEUE_CAP_BYTES;
	if (bytes < floor)
		bytes = floor;
	return bytes < PS_FLOW_QUEUE_MIN_BYTES ? PS_FLOW_QUEUE_MIN_BYTES : bytes;
}

/* net.ipv4.tcp_adv_win_scale, set by user space at load: how kernels before
 * 6.6 (no scaling_ratio) size a window from a buffer. */
const volatile __s32 adv_win_scale = 1;

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

static __always_inline void clamp_rcv_window(struct bpf_sock_ops *skops)
{
	__u64 seen = limits_seen(), srtt_us = skops->srtt_us >> 3, clamp;
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
		w->rate = queued_ingress_rate_of(tp);
		w->seen = seen;
		if (w->rate == 0) {
			/* the limit or the queue went: stop running before
			 * every segment */
			release_rcv_window(skops, tp);
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags &
								 ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
			return;
		}
	}
	/* no round trip measured (a SYN cookie): the path's length is unknown,
	 * and a FIFO-deep window could hold a long path under the limit */
	if (w->rate == 0 || srtt_us == 0)
		return;
	clamp = flow_queue_bytes(w->rate) * 7 / 8 + 2 * w->rate * srtt_us / 1000000;
	set = clamp > 0x7fffffff ? 0x7fffffff : (__u32)clamp;
	/* looked at on every segment, as autotuning may have raised it since;
	 * read first (a load from the socket the kernel is sending on), as it
	 * is mostly unchanged and the option's call chain costs more */
	if (tp->window_clamp == set)
		return;
	bpf_setsockopt(skops, SOL_TCP, TCP_WINDOW_CLAMP, &set, sizeof(set));
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
	__u64 want, floor;
	__u32 clamp, tolerance = p->cwnd_clamp >> 3;

	if (p->applied == 0 || mss == 0) {
		clamp = CWND_UNCLAMPED;
	} else {
		want = 2 * p->applied * srtt_us / 1000000 / mss + CWND_CLAMP_SLACK;
		/* never below CWND_CLAMP_MIN_US of the share: at high rates the
		 * clamp would only cost CPU (smaller packets, same rate) */
		floor = p->applied * CWND_CLAMP_MIN_US / 1000000 / mss;
		if (want < floor)
			want = floor;
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
	 */
	if (p->cwnd_clamp && clamp <= p->cwnd_clamp + tolerance &&
	    clamp + tolerance >= p->cwnd_clamp && ssthresh <= p->cwnd_clamp)
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
 * Shortens the delayed ACK of a socket the current task opens or listens on
 * (accepted connections inherit the listener's), if its cgroup has an
 * ingress limit: to 2 jiffies, the least the kernel takes (tried at HZ 1000,
 * 250, 100). When the policer drops a packet, the sender recovers on the
 * receiver's ACKs; a lone segment, or a retransmission that fills a hole
 * with little behind it, waited for the delayed-ACK timer (40 ms or more)
 * while the sender, its window spent, sent nothing. One cubic flow through
 * the policer alone got 0.63-0.71 of 100M and 1G; with this, 0.95-0.99
 * (docs/shaping.md). A connection asking for ECN gets the same from the
 * kernel on its own (an ACK at once for every packet that is not ECT, as
 * retransmissions are), which is why ECN senders did so much better.
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
struct bpf_iter_meta;
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unpace_target SEC(".maps");

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
	if (ss->cwnd_clamp && bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SNDCWND_CLAMP, &unclamped,
					     sizeof(unclamped)) == 0)
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
 * limit covers its containers), shortens the delayed ACK and, if a queue
 * is in front of the cgroup, arms the receive-window clamp (it runs again
 * when a queue comes later). Without the first, a pod limited live, as an
 * operator adding the annotation to a running pod does, kept the kernel's
 * delayed ACK on its open connections, and a cubic download through the
 * policer alone got 0.5-0.9 of the limit (docs/shaping.md); without the
 * second, its open connections kept windows the queue's FIFOs cannot hold.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} receivers_target SEC(".maps");

SEC("iter/tcp")
int podshaper_receivers(struct bpf_iter__tcp *ctx)
{
	struct tcp_sock *tp;
	__u64 target = 0;

	tp = iter_socket(ctx, &receivers_target, &target);
	if (!tp || !in_cgroup(tp, target))
		return 0;
	set_short_delack(tp);
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
 * opened under the limit. The first packet of such a socket is as large as
 * the window it grew before the limit (the clamp bounds the window's growth,
 * not what it is: podshaper_egress cuts it), and pacing spaces the next one
 * by that packet's time at the pacing rate: at the limit, not at a share of
 * it, which kept 16 flows at 10M silent for most of a second. It runs before the limit is
 * in force: flows sending at tens of Gbit/s met a bucket of 128 KiB for the
 * few milliseconds until it ran, lost most of what they sent then, and
 * took two seconds to come back to 10M. Without it, such a socket stayed unpaced: it emptied the
 * bucket, its segments were dropped with nothing in flight, and it waited
 * for the zero-window probe timer each time (a third of 30M, one cubic
 * flow; 0.60 of 100M, docs/shaping.md, "Connections open before the limit").
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
	if (!tp || BPF_CORE_READ((struct sock *)tp, __sk_common.skc_state) != TCP_STATE_ESTABLISHED ||
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
 * flows take most of it (Jain 0.66 at 16 flows, docs/shaping.md).
 *
 * A flow is its addresses, protocol and ports (not the packet's hash, which
 * a TCP sender changes after a timeout). A hash of those modulo the FIFOs
 * would put two of 16 flows in one FIFO about half the time; instead a new
 * flow takes the next FIFO in turn for its destination (the pod's address:
 * flows of different pods never share an ifb), so up to PS_FLOW_QUEUES flows
 * each get one of their own. An LRU map remembers each flow's FIFO; a flow
 * idle for two seconds takes a new turn (FLOW_IDLE_UNITS below).
 */
struct ps_flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u32 proto;
};

/* A flow's FIFO, and when the flow was last seen (flow_clock). */
struct flow_queue {
	__u32 queue;
	__u32 seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ps_flow);
	__type(value, struct flow_queue);
} flow_queues SEC(".maps");

/*
 * A flow idle this long takes the next FIFO in turn when it sends again, as
 * a new one. The map forgets flows only when it is full, and a connection
 * that reuses an ended one's addresses and ports (a client's ports come
 * round) would otherwise get that one's FIFO, whichever flow now has it:
 * two flows in one FIFO share its part, and with receive windows sized to
 * one FIFO (the receive-window clamp) they overflow it. Units of 2^20 ns.
 */
#define FLOW_IDLE_UNITS 2048	/* about 2.1 s */
#define FLOW_REFRESH_UNITS 128	/* the time seen is written at most this often */

static __always_inline __u32 flow_clock(void)
{
	return (__u32)(bpf_ktime_get_ns() >> 20);
}

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32[4]);
	__type(value, __u32);
} next_flow_queue SEC(".maps");

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

		if (!bpf_skb_load_bytes_relative(skb, l4, ports, sizeof(ports), BPF_HDR_START_NET)) {
			f->sport = ports[0];
			f->dport = ports[1];
		}
	}
	return 1;
}

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
 * The node's ingress queue for hostNetwork pods (docs/shaping.md, "A queue
 * for hostNetwork pods"). A hostNetwork pod shares the node's interfaces,
 * so nothing but its sockets tells its packets apart: this classifier, on
 * the ingress of every interface of the node's namespace, looks up the
 * socket a TCP packet is for and the cgroup above it at each level in
 * `host_queue_levels`; if that cgroup has a slot in `host_queue_slots`,
 * the packet goes (mirred, the filter's action) to the node's ifb, whose
 * htb takes skb->priority as the class: the pod's small-packet class or its
 * flow's FIFO. Any other packet returns 0: no match, nothing done.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_HOST_SLOTS);
	__type(key, __u64);
	__type(value, __u32);
} host_queue_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PS_HOST_LEVELS);
	__type(key, __u32);
	__type(value, __u32);
} host_queue_levels SEC(".maps");

/* Bumped by user space after every change to host_queue_slots: a socket's
 * slot, kept in host_socks, is good while the version it was found at is. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} host_queue_version SEC(".maps");

/* What the classifier found for a socket of a limited hostNetwork pod (or
 * of one that was): its slot (0: none) and its flow's FIFO, so that its
 * next packets skip the walk up its cgroups and the flow's lookup. Only
 * sockets that had a slot get one. */
struct host_sock {
	__u64 version;
	__u32 slot;
	__u32 queue;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct host_sock);
} host_socks SEC(".maps");

/* each slot's turn counter for its flows' FIFOs (the pods share the node's
 * addresses, so next_flow_queue's key would mix their flows) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PS_HOST_SLOTS + 1);
	__type(key, __u32);
	__type(value, __u32);
} host_next_flow_queue SEC(".maps");

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
