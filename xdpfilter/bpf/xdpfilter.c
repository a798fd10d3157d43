//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdpfilter: an XDP prefilter that drops, or only admits, IP traffic by the
 * source address's CIDR, before the stack allocates anything.
 *
 * Rules live in two buffers (0 and 1) of four maps each: an LPM trie and an
 * exact-match hash (for /32 and /128, far cheaper) per family. The config's
 * `active` word names the buffer packets use; Replace fills the other buffer
 * and switches with one write, so a packet sees the old set or the new one.
 *
 * Deny mode drops what matches; allow-only mode drops IP traffic that matches
 * nothing. Non-IP frames (ARP, LLDP) always pass. VLAN-tagged IP is classified
 * by its inner header. A frame too short to parse (Ethernet, VLAN tags or the
 * IP header cut off) passes in deny mode and is dropped in allow-only mode.
 */
#include "nb_parse.h"

char __license[] SEC("license") = "Dual BSD/GPL";

enum {
	XF_MODE_DENY = 0,
	XF_MODE_ALLOW_ONLY = 1,
};

/* Totals (nb_xf_stats), per CPU. */
enum {
	XF_STAT_PASSED = 0,		/* every frame passed */
	XF_STAT_DROPPED = 1,		/* every frame dropped */
	XF_STAT_PASSED_NON_IP = 2,	/* of the passed: not IP */
	XF_STAT_SHORT = 3,		/* frames too short to parse (passed or dropped by mode) */
	XF_STAT_MATCHED = 4,		/* IP frames that matched a rule */
	XF_STAT_EVENTS_LOST = 5,	/* drop events the ring buffer had no room for */
	XF_STAT_MAX = 8,
};

/* Why a frame was dropped (struct xf_event.reason). */
enum {
	XF_DROP_MATCH = 1,	/* deny mode: it matched a rule */
	XF_DROP_NO_MATCH = 2,	/* allow-only mode: it matched none */
	XF_DROP_SHORT = 3,	/* allow-only mode: too short to parse */
};

struct xf_config {
	__u32 active;	/* buffer packets use: 0 or 1 */
	__u32 mode;	/* XF_MODE_* */
	__u32 sample;	/* one drop event per this many drops; 0: none */
	__u32 pad;
	__u64 revision;	/* bumped by every change; for the Go side */
};

struct xf_lpm4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct xf_lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct xf_addr6 {
	__u8 addr[16];
};

/* A drop event: one in every config.sample drops. */
struct xf_event {
	__u8 addr[16];	/* source; IPv4 in the first 4 bytes */
	__u32 rule;	/* rule id that matched, 0 for none */
	__u32 count;	/* drops this event stands for */
	__u8 family;	/* 4, 6, or 0 for a frame too short to parse */
	__u8 reason;	/* XF_DROP_* */
	__u8 pad[2];
};

/* Keeps struct xf_event in the object's BTF, for the Go side's layout check. */
struct xf_event *xf_event_btf __attribute__((unused));

#define XF_LPM(name, ktype)                                     \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);          \
		__uint(max_entries, 65536);                   \
		__uint(map_flags, BPF_F_NO_PREALLOC);         \
		__type(key, ktype);                           \
		__type(value, __u32);                         \
	} name SEC(".maps")

#define XF_EXACT(name, ktype)                                   \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_HASH);              \
		__uint(max_entries, 1 << 20);                 \
		__uint(map_flags, BPF_F_NO_PREALLOC);         \
		__type(key, ktype);                           \
		__type(value, __u32);                         \
	} name SEC(".maps")

XF_LPM(nb_xf_lpm4_0, struct xf_lpm4_key);
XF_LPM(nb_xf_lpm4_1, struct xf_lpm4_key);
XF_LPM(nb_xf_lpm6_0, struct xf_lpm6_key);
XF_LPM(nb_xf_lpm6_1, struct xf_lpm6_key);
XF_EXACT(nb_xf_exact4_0, __be32);
XF_EXACT(nb_xf_exact4_1, __be32);
XF_EXACT(nb_xf_exact6_0, struct xf_addr6);
XF_EXACT(nb_xf_exact6_1, struct xf_addr6);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xf_config);
} nb_xf_config SEC(".maps");

/* Hits per rule id, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << 16);
	__type(key, __u32);
	__type(value, __u64);
} nb_xf_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XF_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nb_xf_stats SEC(".maps");

/* Drops since the last event, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} nb_xf_sample SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} nb_xf_events SEC(".maps");

static __always_inline void xf_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&nb_xf_stats, &stat);

	if (v)
		*v += 1;
}

/* xf_match returns the id of the rule the source address matches, or 0. */
static __always_inline __u32 xf_match(__u32 active, const struct nb_pkt *p)
{
	__u32 *id;

	if (p->l3_proto == ETH_P_IP) {
		struct xf_lpm4_key k = {.prefixlen = 32};

		__builtin_memcpy(k.addr, p->saddr.bytes, 4);
		id = bpf_map_lookup_elem(active ? (void *)&nb_xf_exact4_1 : (void *)&nb_xf_exact4_0, &p->saddr.v4);
		if (!id)
			id = bpf_map_lookup_elem(active ? (void *)&nb_xf_lpm4_1 : (void *)&nb_xf_lpm4_0, &k);
	} else {
		struct xf_lpm6_key k = {.prefixlen = 128};

		__builtin_memcpy(k.addr, p->saddr.bytes, 16);
		id = bpf_map_lookup_elem(active ? (void *)&nb_xf_exact6_1 : (void *)&nb_xf_exact6_0, p->saddr.bytes);
		if (!id)
			id = bpf_map_lookup_elem(active ? (void *)&nb_xf_lpm6_1 : (void *)&nb_xf_lpm6_0, &k);
	}
	return id ? *id : 0;
}

/* xf_drop counts a drop and, one in every cfg->sample, reports it. */
static __always_inline int xf_drop(const struct xf_config *cfg, const struct nb_pkt *p, __u32 rule, __u8 reason)
{
	__u32 zero = 0, *n;
	struct xf_event *ev;

	xf_count(XF_STAT_DROPPED);
	if (!cfg->sample)
		return XDP_DROP;
	n = bpf_map_lookup_elem(&nb_xf_sample, &zero);
	if (!n || ++*n < cfg->sample)
		return XDP_DROP;
	ev = bpf_ringbuf_reserve(&nb_xf_events, sizeof(*ev), 0);
	if (!ev) {
		xf_count(XF_STAT_EVENTS_LOST);
		return XDP_DROP; /* try again at the next drop */
	}
	__builtin_memcpy(ev->addr, p->saddr.bytes, 16);
	ev->rule = rule;
	ev->count = *n;
	ev->family = reason == XF_DROP_SHORT ? 0 : (p->l3_proto == ETH_P_IPV6 ? 6 : 4);
	ev->reason = reason;
	ev->pad[0] = ev->pad[1] = 0;
	bpf_ringbuf_submit(ev, 0);
	*n = 0;
	return XDP_DROP;
}

static __always_inline int xf_pass(void)
{
	xf_count(XF_STAT_PASSED);
	return XDP_PASS;
}

SEC("xdp")
int nb_xdp_filter(struct xdp_md *ctx)
{
	struct xf_config *cfg;
	struct nb_frame f;
	struct nb_pkt p = {};
	__u32 zero = 0, rule;
	int err;

	cfg = bpf_map_lookup_elem(&nb_xf_config, &zero);
	if (!cfg)
		return XDP_PASS;
	nb_frame_xdp(&f, ctx);
	err = nb_parse_eth(&f, &p);
	if (!err && p.l3_proto != ETH_P_IP && p.l3_proto != ETH_P_IPV6) {
		xf_count(XF_STAT_PASSED_NON_IP);
		return xf_pass();
	}
	if (!err)
		err = nb_parse_l3_xdp(ctx, &p, NB_PARSE_NO_L4);
	if (err || !(p.layers & NB_LAYER_L3)) {
		xf_count(XF_STAT_SHORT);
		if (cfg->mode == XF_MODE_ALLOW_ONLY)
			return xf_drop(cfg, &p, 0, XF_DROP_SHORT);
		return xf_pass();
	}

	rule = xf_match(cfg->active, &p);
	if (rule) {
		__u64 *hits = bpf_map_lookup_elem(&nb_xf_hits, &rule);

		if (hits)
			*hits += 1;
		xf_count(XF_STAT_MATCHED);
		if (cfg->mode == XF_MODE_DENY)
			return xf_drop(cfg, &p, rule, XF_DROP_MATCH);
		return xf_pass();
	}
	if (cfg->mode == XF_MODE_ALLOW_ONLY)
		return xf_drop(cfg, &p, 0, XF_DROP_NO_MATCH);
	return xf_pass();
}
