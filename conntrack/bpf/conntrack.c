//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The standalone tracker: attached to tc ingress and egress of one interface,
 * it tracks every connection through it and passes every packet on unchanged.
 */
#include "nb_parse.h"
#include "conntrack.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline int track(struct __sk_buff *skb, __u8 dir)
{
	struct ct_tuple tuple;
	struct nb_frame f;
	struct nb_pkt p = {};

	if (nb_frame_skb(&f, skb, NB_PULL_LEN) < 0) {
		ct_count(CT_UNTRACKED);
		return TC_ACT_UNSPEC;
	}
	nb_parse_skb(skb, &p);
	ct_track_skb(skb, &p, dir, NULL, &tuple);
	return TC_ACT_UNSPEC; /* TCX_NEXT: never a verdict of our own */
}

SEC("tc")
int nb_ct_ingress(struct __sk_buff *skb)
{
	return track(skb, CT_DIR_IN);
}

SEC("tc")
int nb_ct_egress(struct __sk_buff *skb)
{
	return track(skb, CT_DIR_OUT);
}

