//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parsetest: runs the shared parser and rewrite helpers on one frame and
 * records what they produced, so Go tests can check them with BPF_PROG_RUN.
 */
#include "nb_parse.h"
#include "nb_csum.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nb_pkt);
} result SEC(".maps");

/* Which rewrites the nat_* programs apply (struct nat_cfg.flags). */
enum {
	NAT_SADDR = 1 << 0,
	NAT_DADDR = 1 << 1,
	NAT_SPORT = 1 << 2,
	NAT_DPORT = 1 << 3,
};

struct nat_cfg {
	union nb_addr saddr;
	union nb_addr daddr;
	__be16 sport;
	__be16 dport;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_cfg);
} nat SEC(".maps");

/* Status of the last nat_* run: 0, or the step that failed (1-4) times 1000 minus the error. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s32);
} nat_status SEC(".maps");

static __always_inline void record(const struct nb_pkt *p)
{
	__u32 k = 0;

	bpf_map_update_elem(&result, &k, p, BPF_ANY);
}

static __always_inline void status(__s32 st)
{
	__u32 k = 0;

	bpf_map_update_elem(&nat_status, &k, &st, BPF_ANY);
}

SEC("xdp")
int parse_xdp(struct xdp_md *ctx)
{
	struct nb_pkt p = {};

	nb_parse_xdp(ctx, &p);
	record(&p);
	return XDP_PASS;
}

/*
 * parse_ip_xdp parses the frame as a bare IP packet that starts at byte 14:
 * BPF_PROG_RUN takes no input shorter than 14 bytes, so the tests put the
 * packet behind 14 bytes of filler to feed every length of it from 0 up.
 */
SEC("xdp")
int parse_ip_xdp(struct xdp_md *ctx)
{
	struct nb_pkt p = {};

	nb_parse_ip_xdp(ctx, &p, 14, 0);
	record(&p);
	return XDP_PASS;
}

/* parse_quoted_xdp is parse_ip_xdp for a packet quoted in an ICMP error. */
SEC("xdp")
int parse_quoted_xdp(struct xdp_md *ctx)
{
	struct nb_pkt p = {};

	nb_parse_ip_xdp(ctx, &p, 14, NB_PARSE_QUOTED);
	record(&p);
	return XDP_PASS;
}

SEC("tc")
int parse_tc(struct __sk_buff *skb)
{
	struct nb_frame f;
	struct nb_pkt p = {};

	if (nb_frame_skb(&f, skb, NB_PULL_LEN) < 0)
		return TC_ACT_OK;
	nb_parse_skb(skb, &p);
	record(&p);
	return TC_ACT_OK;
}

SEC("xdp")
int nat_xdp(struct xdp_md *ctx)
{
	struct nat_cfg *cfg;
	struct nb_frame f;
	struct nb_pkt p = {};
	__u32 k = 0;

	cfg = bpf_map_lookup_elem(&nat, &k);
	if (!cfg)
		return XDP_ABORTED;
	nb_parse_xdp(ctx, &p);
	nb_frame_xdp(&f, ctx);
	if ((cfg->flags & NAT_SADDR) && nb_rewrite_addr(&f, &p, 0, &cfg->saddr))
		return status(1000), XDP_PASS;
	if ((cfg->flags & NAT_DADDR) && nb_rewrite_addr(&f, &p, 1, &cfg->daddr))
		return status(2000), XDP_PASS;
	if ((cfg->flags & NAT_SPORT) && nb_rewrite_port(&f, &p, 0, cfg->sport))
		return status(3000), XDP_PASS;
	if ((cfg->flags & NAT_DPORT) && nb_rewrite_port(&f, &p, 1, cfg->dport))
		return status(4000), XDP_PASS;
	status(0);
	record(&p);
	return XDP_PASS;
}

SEC("tc")
int nat_tc(struct __sk_buff *skb)
{
	struct nat_cfg *cfg;
	struct nb_frame f;
	struct nb_pkt p = {};
	__u32 k = 0;
	int ret;

	cfg = bpf_map_lookup_elem(&nat, &k);
	if (!cfg)
		return TC_ACT_SHOT;
	if (nb_frame_skb(&f, skb, NB_PULL_LEN) < 0)
		return TC_ACT_SHOT;
	nb_parse_skb(skb, &p);
	if ((cfg->flags & NAT_SADDR) && (ret = nb_skb_rewrite_addr(skb, &p, 0, &cfg->saddr)))
		return status(1000 - ret), TC_ACT_OK;
	if ((cfg->flags & NAT_DADDR) && (ret = nb_skb_rewrite_addr(skb, &p, 1, &cfg->daddr)))
		return status(2000 - ret), TC_ACT_OK;
	if ((cfg->flags & NAT_SPORT) && (ret = nb_skb_rewrite_port(skb, &p, 0, cfg->sport)))
		return status(3000 - ret), TC_ACT_OK;
	if ((cfg->flags & NAT_DPORT) && (ret = nb_skb_rewrite_port(skb, &p, 1, cfg->dport)))
		return status(4000 - ret), TC_ACT_OK;
	status(0);
	record(&p);
	return TC_ACT_OK;
}
