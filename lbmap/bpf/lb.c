//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The service load balancer for the interface facing the clients (a pod's
 * host-side veth): on tc ingress (packets from the client) a packet to a
 * service frontend is DNATed to a backend chosen once per connection and kept
 * in conntrack; on tc egress (packets to the client) replies, and ICMP errors
 * about the connection, are translated back to the frontend.
 *
 * Hairpin: when the backend chosen for a client's packet is the client itself
 * (a pod reaching a service it backs), the packet is also SNATed to the
 * hairpin address (lb_hairpin4/6) and sent straight back into the interface
 * it came from, as Cilium does; without the SNAT the pod would get a packet
 * from its own address. The pod answers the hairpin address, by its default
 * route, so the reply comes to tc ingress here too: its destination is
 * restored to the pod and its source to the frontend (the rev-NAT index is the
 * connection's client -> backend conntrack entry's, whose tuple the reply
 * names: client and backend are one address), and it is sent back in as well.
 */
#include "nb_parse.h"
#include "nb_csum.h"
#include "conntrack.h"
#include "lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Which way the service and backend tuples run: the client's packets go IN. */
#define LB_CT_DIR CT_DIR_IN

/* Set by the Go side at load (Config.HairpinAddr4/6): the hairpin source addresses. */
volatile const __be32 lb_hairpin4 = 0;
volatile const __be32 lb_hairpin6[4] = {};

/* lb_hairpin_addr fills *a with the hairpin address of family; returns -1 if it is not set. */
static __always_inline int lb_hairpin_addr(__u8 family, union nb_addr *a)
{
	__builtin_memset(a, 0, sizeof(*a));
	if (family == 4) {
		a->v4 = lb_hairpin4;
		return a->v4 ? 0 : -1;
	}
	a->v6[0] = lb_hairpin6[0];
	a->v6[1] = lb_hairpin6[1];
	a->v6[2] = lb_hairpin6[2];
	a->v6[3] = lb_hairpin6[3];
	return (a->v6[0] | a->v6[1] | a->v6[2] | a->v6[3]) ? 0 : -1;
}

/*
 * lb_hairpin_out sends a packet back into the interface it came from (tc
 * ingress to the same interface's egress): the Ethernet addresses swap, so
 * the client's own MAC address is the destination.
 */
static __always_inline int lb_hairpin_out(struct __sk_buff *skb)
{
	__u8 in[12], out[12];

	if (bpf_skb_load_bytes(skb, 0, in, sizeof(in)))
		return TC_ACT_SHOT;
	__builtin_memcpy(out, in + 6, 6);
	__builtin_memcpy(out + 6, in, 6);
	if (bpf_skb_store_bytes(skb, 0, out, sizeof(out), 0))
		return TC_ACT_SHOT;
	lb_count(LB_STAT_HAIRPIN);
	return bpf_redirect(NB_READ_CTX(skb, ifindex), 0);
}

/*
 * lb_hairpin_reply translates a client's reply to the hairpin address
 * (client:bport -> hairpin:cport, the client being the backend of its own
 * connection) to frontend -> client:cport and sends it back in. Returns a
 * verdict, or -1 if p is no such reply.
 */
static __always_inline int lb_hairpin_reply(struct __sk_buff *skb, struct nb_pkt *p, __u8 family)
{
	struct lb_revnat *rn;
	struct ct_entry *e;
	struct ct_tuple t = {};
	union nb_addr h, client;
	__u32 idx;
	int reply;

	if (!p || lb_hairpin_addr(family, &h) || __builtin_memcmp(&p->daddr, &h, sizeof(h)))
		return -1;
	/* The connection's client -> backend tuple: client:cport -> client:bport. */
	client = p->saddr;
	t.saddr = client;
	t.daddr = client;
	t.sport = p->dport;
	t.dport = p->sport;
	t.proto = p->l4_proto;
	t.family = family;
	e = ct_lookup(&t, &reply);
	if (!e || reply || !e->rev_nat || (e->flags & CT_F_SERVICE))
		return -1;
	idx = e->rev_nat;
	rn = bpf_map_lookup_elem(&nb_lb_revnat, &idx);
	if (!rn)
		return -1;
	ct_account(e, p->l4_proto, p->tcp_flags, NB_READ_CTX(skb, len), 1, bpf_ktime_get_ns());
	if (nb_skb_rewrite_addr(skb, p, 1, &client) || nb_skb_rewrite_addr(skb, p, 0, &rn->addr) ||
	    nb_skb_rewrite_port(skb, p, 0, rn->port))
		return TC_ACT_SHOT;
	lb_count(LB_STAT_REVNAT);
	return lb_hairpin_out(skb);
}

/*
 * lb_backend_of returns the backend of the connection t (client -> frontend)
 * as conntrack remembers it, if that backend still exists, else 0.
 */
static __always_inline __u32 lb_backend_of(struct ct_tuple *t, struct ct_entry **svc_entry, struct lb_backend **b)
{
	int reply;
	__u32 id;

	*svc_entry = ct_lookup(t, &reply);
	if (!*svc_entry || reply)
		return 0;
	id = (*svc_entry)->user;
	*b = bpf_map_lookup_elem(&nb_lb_backends, &id);
	return *b ? id : 0;
}

SEC("tc")
int nb_lb_from_client(struct __sk_buff *skb)
{
	struct ct_create_opts opts = {.flags = CT_F_SERVICE};
	struct ct_entry *svc_entry = NULL, *e;
	struct lb_backend *b = NULL;
	struct ct_tuple t;
	struct nb_frame f;
	struct nb_pkt p = {};
	struct lb_svc_info svc;
	union nb_addr baddr;
	__be16 bport;
	__u32 id, len;
	__u64 now;
	__u8 family;
	int reply, hairpin;

	if (nb_frame_skb(&f, skb, NB_PULL_LEN) < 0)
		return TC_ACT_UNSPEC;
	if (nb_parse_skb(skb, &p) || !(p.layers & NB_LAYER_L4) ||
	    (p.l4_proto != IPPROTO_TCP && p.l4_proto != IPPROTO_UDP))
		return TC_ACT_UNSPEC;
	family = p.l3_proto == ETH_P_IPV6 ? 6 : 4;
	if (!lb_lookup_service(&p.daddr, p.dport, p.l4_proto, family, &svc)) {
		/* Not a service: not ours, unless it is a reply to the hairpin address. */
		reply = lb_hairpin_reply(skb, &p, family);
		return reply >= 0 ? reply : TC_ACT_UNSPEC;
	}
	if (!lb_source_allowed(&svc, &p.saddr, family)) {
		lb_count(LB_STAT_DROP_SOURCE_RANGE);
		return TC_ACT_SHOT;
	}
	len = NB_READ_CTX(skb, len);
	now = bpf_ktime_get_ns(); /* once per packet, for both conntrack entries */
	opts.rev_nat = svc.rev_nat;

	/* The client -> frontend entry remembers the connection's backend. */
	if (ct_tuple_from_pkt(&p, &t))
		return TC_ACT_UNSPEC;
	id = lb_backend_of(&t, &svc_entry, &b);
	if (id) {
		ct_account(svc_entry, p.l4_proto, p.tcp_flags, len, 0, now);
	} else {
		if (svc_entry)
			lb_count(LB_STAT_RESELECT);
		id = lb_select(&svc, &p.saddr, family, lb_hash(&p.saddr, &p.daddr, p.sport, p.dport, p.l4_proto), &b);
		if (!id || !b) {
			lb_count(LB_STAT_DROP_NO_BACKEND);
			return TC_ACT_SHOT;
		}
		opts.user = id;
		ct_create(&t, LB_CT_DIR, p.l4_proto == IPPROTO_TCP ? p.tcp_flags : 0, len, &opts, now);
	}
	baddr = b->addr;
	bport = b->port;
	/* The client is its own backend: the packet goes back in, from the hairpin address. */
	hairpin = b->family == family && !__builtin_memcmp(&baddr, &p.saddr, sizeof(baddr));

	/* DNAT to the backend. */
	if (nb_skb_rewrite_addr(skb, &p, 1, &baddr) || nb_skb_rewrite_port(skb, &p, 1, bport))
		return TC_ACT_SHOT;
	lb_count(LB_STAT_DNAT);

	/* The client -> backend entry carries the rev-NAT index replies need. */
	t.daddr = baddr;
	t.dport = bport;
	e = ct_lookup(&t, &reply);
	if (e && !reply) {
		if (e->rev_nat != svc.rev_nat)
			e->rev_nat = svc.rev_nat;
		ct_account(e, p.l4_proto, p.tcp_flags, len, 0, now);
	} else {
		opts.flags = 0;
		opts.user = id;
		ct_create(&t, LB_CT_DIR, p.l4_proto == IPPROTO_TCP ? p.tcp_flags : 0, len, &opts, now);
	}
	if (hairpin) {
		union nb_addr h;

		if (lb_hairpin_addr(family, &h) || nb_skb_rewrite_addr(skb, &p, 0, &h))
			return TC_ACT_SHOT;
		return lb_hairpin_out(skb);
	}
	return TC_ACT_UNSPEC;
}

/*
 * lb_skb_replace writes size (2 or 4) bytes at off and folds the change into
 * the checksums at csum_off (an L4 checksum, with pseudo-header semantics if
 * pseudo) and, if l3_csum_off >= 0, an IPv4 header checksum.
 */
static __always_inline int lb_skb_replace(struct __sk_buff *skb, __u32 off, const void *from, const void *to, __u32 size,
					  int csum_off, int l3_csum_off)
{
	__u32 f = 0, t = 0;

	__builtin_memcpy(&f, from, size == 2 ? 2 : 4);
	__builtin_memcpy(&t, to, size == 2 ? 2 : 4);
	if (csum_off >= 0 && bpf_l4_csum_replace(skb, csum_off, f, t, size))
		return -1;
	if (l3_csum_off >= 0 && bpf_l3_csum_replace(skb, l3_csum_off, f, t, size))
		return -1;
	return bpf_skb_store_bytes(skb, off, to, size, 0);
}

/*
 * lb_revnat_icmp translates an ICMP error about a load-balanced connection
 * back: the packet it quotes went client -> backend, and must read client ->
 * frontend; if the backend itself sent the error, the outer source too.
 * Checksums fixed: the quoted IPv4 header's, the quoted UDP checksum (the
 * quote holds TCP's first 8 bytes only, without its checksum), and the ICMP
 * checksum over all of it.
 */
static __always_inline int lb_revnat_icmp(struct __sk_buff *skb, struct nb_pkt *p, const struct nb_pkt *q,
					  const struct lb_revnat *rn)
{
	int v6 = p->l3_proto == ETH_P_IPV6;
	int icmp_csum = p->l4_off + 2;
	int udp_csum = -1, ip_csum = -1;
	__u16 udp_old = 0, udp_new, ip_old = 0, ip_new;
	__u32 daddr_off;

	/* The outer source, if the backend itself sent the error (fixes the ICMPv6 pseudo-header sum too). */
	if (!__builtin_memcmp(&p->saddr, &q->daddr, sizeof(p->saddr)) && nb_skb_rewrite_addr(skb, p, 0, &rn->addr))
		return -1;

	/* Checksums inside the ICMP payload: their changes fold into the ICMP checksum at the end. */
	if (q->l4_proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, q->l4_off + 6, &udp_old, 2))
			return -1;
		if (udp_old)
			udp_csum = q->l4_off + 6;
	}
	if (!v6) {
		ip_csum = q->l3_off + offsetof(struct iphdr, check);
		if (bpf_skb_load_bytes(skb, ip_csum, &ip_old, 2))
			return -1;
	}

	/* The quoted destination address: backend -> frontend. */
	daddr_off = q->l3_off + (v6 ? offsetof(struct ipv6hdr, daddr) : offsetof(struct iphdr, daddr));
	for (int i = 0; i < (v6 ? 4 : 1); i++) {
		if (udp_csum >= 0 &&
		    bpf_l4_csum_replace(skb, udp_csum, q->daddr.v6[i], rn->addr.v6[i], BPF_F_PSEUDO_HDR | 4))
			return -1;
		if (lb_skb_replace(skb, daddr_off + 4 * i, &q->daddr.v6[i], &rn->addr.v6[i], 4, icmp_csum, ip_csum))
			return -1;
	}
	/* The quoted destination port. */
	if (udp_csum >= 0 && bpf_l4_csum_replace(skb, udp_csum, q->dport, rn->port, 2))
		return -1;
	if (lb_skb_replace(skb, q->l4_off + 2, &q->dport, &rn->port, 2, icmp_csum, -1))
		return -1;

	if (ip_csum >= 0) {
		if (bpf_skb_load_bytes(skb, ip_csum, &ip_new, 2) || bpf_l4_csum_replace(skb, icmp_csum, ip_old, ip_new, 2))
			return -1;
	}
	if (udp_csum >= 0) {
		if (bpf_skb_load_bytes(skb, udp_csum, &udp_new, 2) || bpf_l4_csum_replace(skb, icmp_csum, udp_old, udp_new, 2))
			return -1;
	}
	return 0;
}

SEC("tc")
int nb_lb_to_client(struct __sk_buff *skb)
{
	struct lb_revnat *rn;
	struct ct_entry *e;
	struct ct_tuple t;
	struct nb_frame f;
	struct nb_pkt p = {};
	__u32 idx;
	int reply;

	if (nb_frame_skb(&f, skb, NB_PULL_LEN) < 0)
		return TC_ACT_UNSPEC;
	if (nb_parse_skb(skb, &p) || !(p.layers & NB_LAYER_L4))
		return TC_ACT_UNSPEC;

	if (ct_pkt_is_icmp_error(&p)) {
		struct nb_pkt q = {};

		/* The quoted packet went client -> backend: its own direction. */
		if (nb_parse_ip_skb(skb, &q, p.l4_off + 8, NB_PARSE_QUOTED) || ct_tuple_from_pkt(&q, &t))
			return TC_ACT_UNSPEC;
		e = ct_lookup(&t, &reply);
		if (!e || reply || !e->rev_nat || (e->flags & CT_F_SERVICE))
			return TC_ACT_UNSPEC;
		idx = e->rev_nat;
		rn = bpf_map_lookup_elem(&nb_lb_revnat, &idx);
		if (!rn)
			return TC_ACT_UNSPEC;
		if (lb_revnat_icmp(skb, &p, &q, rn))
			return TC_ACT_SHOT;
		lb_count(LB_STAT_REVNAT_ICMP);
		return TC_ACT_UNSPEC;
	}

	if (p.l4_proto != IPPROTO_TCP && p.l4_proto != IPPROTO_UDP)
		return TC_ACT_UNSPEC;
	if (ct_tuple_from_pkt(&p, &t))
		return TC_ACT_UNSPEC;
	e = ct_lookup(&t, &reply);
	if (!e || !reply || !e->rev_nat || (e->flags & CT_F_SERVICE))
		return TC_ACT_UNSPEC; /* not a reply of a load-balanced connection */
	idx = e->rev_nat;
	rn = bpf_map_lookup_elem(&nb_lb_revnat, &idx);
	if (!rn)
		return TC_ACT_UNSPEC;
	ct_account(e, p.l4_proto, p.tcp_flags, NB_READ_CTX(skb, len), 1, bpf_ktime_get_ns());
	if (nb_skb_rewrite_addr(skb, &p, 0, &rn->addr) || nb_skb_rewrite_port(skb, &p, 0, rn->port))
		return TC_ACT_SHOT;
	lb_count(LB_STAT_REVNAT);
	return TC_ACT_UNSPEC;
}
