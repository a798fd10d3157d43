//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The north-south load balancer, for tc ingress of a node's uplink: a packet
 * from outside to a NodePort, LoadBalancer or ExternalIP frontend is DNATed to
 * a backend chosen once per connection (kept in conntrack, as in lb.c). A
 * backend on this node gets the packet with the client's address (the stack
 * routes it; lb.c's nb_lb_to_client on the uplink's egress translates the
 * replies back). A backend on another node gets it SNATed to this node's
 * address and a NAT port (nb_lb_nat), sent straight out of the uplink
 * (bpf_redirect_neigh); its replies come back to that port, and are
 * translated to frontend -> client here and sent back out of the uplink.
 */
#include "nb_parse.h"
#include "nb_csum.h"
#include "conntrack.h"
#include "lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Set by the Go side at load: the SNAT addresses (all zero: none) and the NAT port range, host order. */
volatile const __be32 np_snat4 = 0;
volatile const __be32 np_snat6[4] = {};
volatile const __u16 np_port_min = 61000;
volatile const __u16 np_port_max = 65535;

/* Ports tried (in sequence from a hash of the connection) before a new connection is dropped. */
#define NP_NAT_TRIES 32

/* np_snat_addr fills *a with the SNAT address of family, or returns -1 if there is none. */
static __always_inline int np_snat_addr(__u8 family, union nb_addr *a)
{
	__builtin_memset(a, 0, sizeof(*a));
	if (family == 4) {
		a->v4 = np_snat4;
		return a->v4 ? 0 : -1;
	}
	a->v6[0] = np_snat6[0];
	a->v6[1] = np_snat6[1];
	a->v6[2] = np_snat6[2];
	a->v6[3] = np_snat6[3];
	return (a->v6[0] | a->v6[1] | a->v6[2] | a->v6[3]) ? 0 : -1;
}

static __always_inline void np_key(struct lb_nat_key *k, const union nb_addr *saddr, __be16 sport,
				   const union nb_addr *daddr, __be16 dport, __u8 proto, __u8 family)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = *saddr;
	k->daddr = *daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->family = family;
}

/*
 * np_nat_alloc gives the connection client -> backend (fwd, its tuple) a NAT
 * port on the SNAT address of its family, which it writes to *snat: the port
 * it has, or a free one from the range, claimed by inserting the reverse entry
 * with BPF_NOEXIST. Returns the port (network order), or 0 when there is no
 * SNAT address or every port tried is taken.
 */
static __attribute__((noinline)) __be16 np_nat_alloc(const struct lb_nat_key *fwd, union nb_addr *snat, __u32 rev_nat,
						     __u64 now)
{
	struct lb_nat *f;
	struct lb_nat v = {};
	struct lb_nat_key rk;
	__u32 range = (__u32)np_port_max - np_port_min + 1;
	__u32 h;

	if (!fwd || !snat || np_snat_addr(fwd->family, snat))
		return 0;
	f = bpf_map_lookup_elem(&nb_lb_nat, fwd);
	if (f && !__builtin_memcmp(&f->addr, snat, sizeof(*snat)))
		return f->port;
	h = lb_hash(&fwd->saddr, &fwd->daddr, fwd->sport, fwd->dport, fwd->proto);
	for (int i = 0; i < NP_NAT_TRIES; i++) {
		__be16 port;

		if ((__u32)i >= range)
			break;
		port = bpf_htons(np_port_min + (h + i) % range);
		np_key(&rk, &fwd->daddr, fwd->dport, snat, port, fwd->proto, fwd->family);
		v.addr = fwd->saddr;
		v.port = fwd->sport;
		v.flags = LB_NAT_F_REVERSE;
		v.rev_nat = rev_nat;
		v.created = now;
		if (bpf_map_update_elem(&nb_lb_nat, &rk, &v, BPF_NOEXIST))
			continue;
		v.addr = *snat;
		v.port = port;
		v.flags = 0;
		v.rev_nat = 0;
		if (bpf_map_update_elem(&nb_lb_nat, fwd, &v, BPF_ANY)) {
			bpf_map_delete_elem(&nb_lb_nat, &rk);
			return 0;
		}
		return port;
	}
	return 0;
}

/* np_lookup is lb_lookup_service_scope for p's destination, as a function of its own (its stack apart). */
static __attribute__((noinline)) int np_lookup(const struct nb_pkt *p, __u8 family, __u8 scope, struct lb_svc_info *info)
{
	if (!p || !info)
		return 0;
	return lb_lookup_service_scope(&p->daddr, p->dport, p->l4_proto, family, scope, info);
}

/* np_allowed is lb_source_allowed for p's source, as a function of its own. */
static __attribute__((noinline)) int np_allowed(const struct lb_svc_info *svc, const struct nb_pkt *p, __u8 family)
{
	if (!svc || !p)
		return 0;
	return lb_source_allowed(svc, &p->saddr, family);
}

/* np_select is lb_select for a new connection of p, as a function of its own: returns the backend id or 0. */
static __attribute__((noinline)) __u32 np_select(const struct lb_svc_info *svc, const struct nb_pkt *p, __u8 family)
{
	struct lb_backend *b = NULL;

	if (!svc || !p)
		return 0;
	return lb_select(svc, &p->saddr, family, lb_hash(&p->saddr, &p->daddr, p->sport, p->dport, p->l4_proto), &b);
}

/*
 * np_redirect forwards the packet: it decrements the TTL (hop limit), as a
 * router does, and sends the packet out of the interface it came in by,
 * resolving the next hop's address. A packet whose TTL runs out is dropped.
 */
static __always_inline int np_redirect(struct __sk_buff *skb, const struct nb_pkt *p)
{
	__u32 off = p->l3_off + (p->l3_proto == ETH_P_IPV6 ? offsetof(struct ipv6hdr, hop_limit) : offsetof(struct iphdr, ttl));
	__u8 ttl;

	if (bpf_skb_load_bytes(skb, off, &ttl, 1) || ttl <= 1)
		return TC_ACT_SHOT;
	if (p->l3_proto != ETH_P_IPV6 &&
	    bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), bpf_htons((__u16)ttl << 8),
				bpf_htons((__u16)(ttl - 1) << 8), 2))
		return TC_ACT_SHOT;
	ttl--;
	if (bpf_skb_store_bytes(skb, off, &ttl, 1, 0))
		return TC_ACT_SHOT;
	return bpf_redirect_neigh(NB_READ_CTX(skb, ifindex), NULL, 0, 0);
}

/*
 * np_rev_snat translates a reply of an SNATed connection (backend -> node:NAT
 * port) to frontend -> client and sends it back out. Returns a verdict, or -1
 * if p is no such reply.
 */
static __attribute__((noinline)) int np_rev_snat(struct __sk_buff *skb, struct nb_pkt *p, __u8 family)
{
	struct lb_nat_key k;	/* the NAT key, then the conntrack tuple (the same layout) */
	struct lb_nat *n;
	struct lb_revnat *rn;
	struct ct_entry *e;
	union nb_addr a;
	__be16 cport;
	__u32 idx;
	int reply;

	if (!p || np_snat_addr(family, &a) || __builtin_memcmp(&p->daddr, &a, sizeof(a)))
		return -1;
	np_key(&k, &p->saddr, p->sport, &p->daddr, p->dport, p->l4_proto, family);
	n = bpf_map_lookup_elem(&nb_lb_nat, &k);
	if (!n || !(n->flags & LB_NAT_F_REVERSE))
		return -1;
	idx = n->rev_nat;
	a = n->addr;
	cport = n->port;

	/*
	 * The connection's conntrack entry (client -> backend) sees a reply. Its
	 * rev-NAT index is the latest service the tuple was load-balanced for
	 * (the same client port may reach one backend through two frontends).
	 */
	np_key(&k, &a, cport, &p->saddr, p->sport, p->l4_proto, family);
	e = ct_lookup((struct ct_tuple *)&k, &reply);
	if (e && !reply) {
		if (e->rev_nat)
			idx = e->rev_nat;
		ct_account(e, p->l4_proto, p->tcp_flags, NB_READ_CTX(skb, len), 1, bpf_ktime_get_ns());
	}
	rn = bpf_map_lookup_elem(&nb_lb_revnat, &idx);
	if (!rn)
		return TC_ACT_SHOT;

	if (nb_skb_rewrite_addr(skb, p, 1, &a) || nb_skb_rewrite_port(skb, p, 1, cport) ||
	    nb_skb_rewrite_addr(skb, p, 0, &rn->addr) || nb_skb_rewrite_port(skb, p, 0, rn->port))
		return TC_ACT_SHOT;
	lb_count(LB_STAT_REVSNAT);
	return np_redirect(skb, p);
}

SEC("tc")
int nb_lb_uplink_in(struct __sk_buff *skb)
{
	struct ct_create_opts opts = {.flags = CT_F_SERVICE};
	struct ct_entry *svc_entry = NULL, *e;
	struct lb_backend *b = NULL;
	struct ct_tuple t;
	struct nb_frame f;
	struct nb_pkt p = {};
	struct lb_svc_info svc;
	union nb_addr baddr, snat;
	__be16 bport, nport = 0;
	__u32 id = 0, len;
	__u64 now;
	__u8 family;
	int reply, ret, local;

	if (nb_frame_skb(&f, skb, NB_PULL_LEN) < 0)
		return TC_ACT_UNSPEC;
	if (nb_parse_skb(skb, &p) || !(p.layers & NB_LAYER_L4) ||
	    (p.l4_proto != IPPROTO_TCP && p.l4_proto != IPPROTO_UDP) || p.frag_off)
		return TC_ACT_UNSPEC;
	family = p.l3_proto == ETH_P_IPV6 ? 6 : 4;

	/* A reply of an SNATed connection comes to the SNAT address. */
	ret = np_rev_snat(skb, &p, family);
	if (ret >= 0)
		return ret;

	if (!np_lookup(&p, family, LB_SCOPE_INTERNAL, &svc))
		return TC_ACT_UNSPEC; /* not a service: not ours */
	if (svc.type == LB_TYPE_CLUSTER_IP)
		return TC_ACT_UNSPEC; /* not reachable from outside */
	/* Traffic policy Local: the external scope holds only this node's backends. */
	if ((svc.flags & LB_F_LOCAL) &&
	    !np_lookup(&p, family, LB_SCOPE_EXTERNAL, &svc))
		return TC_ACT_UNSPEC;
	if (!np_allowed(&svc, &p, family)) {
		lb_count(LB_STAT_DROP_SOURCE_RANGE);
		return TC_ACT_SHOT;
	}
	len = NB_READ_CTX(skb, len);
	now = bpf_ktime_get_ns();
	opts.rev_nat = svc.rev_nat;

	/* The client -> frontend entry remembers the connection's backend. */
	if (ct_tuple_from_pkt(&p, &t))
		return TC_ACT_UNSPEC;
	svc_entry = ct_lookup(&t, &reply);
	if (svc_entry && !reply) {
		id = svc_entry->user;
		b = bpf_map_lookup_elem(&nb_lb_backends, &id);
		if (!b)
			id = 0;
	} else {
		svc_entry = NULL;
	}
	if (id) {
		ct_account(svc_entry, p.l4_proto, p.tcp_flags, len, 0, now);
	} else {
		if (svc_entry)
			lb_count(LB_STAT_RESELECT);
		id = np_select(&svc, &p, family);
		b = id ? bpf_map_lookup_elem(&nb_lb_backends, &id) : NULL;
		if (!b) {
			lb_count(LB_STAT_DROP_NO_BACKEND);
			return TC_ACT_SHOT;
		}
		opts.user = id;
		ct_create(&t, CT_DIR_IN, p.l4_proto == IPPROTO_TCP ? p.tcp_flags : 0, len, &opts, now);
	}
	baddr = b->addr;
	bport = b->port;
	local = (b->state & LB_BACKEND_F_LOCAL) || (svc.flags & LB_F_LOCAL);

	/* The client -> backend tuple: its conntrack entry carries the rev-NAT index. */
	t.daddr = baddr;
	t.dport = bport;

	/* A remote backend needs a NAT port (entries keyed by that tuple) before anything is rewritten. */
	if (!local) {
		nport = np_nat_alloc((struct lb_nat_key *)&t, &snat, svc.rev_nat, now);
		if (!nport) {
			lb_count(LB_STAT_DROP_NAT_EXHAUSTED);
			return TC_ACT_SHOT;
		}
	}
	e = ct_lookup(&t, &reply);
	if (e && !reply) {
		if (e->rev_nat != svc.rev_nat)
			e->rev_nat = svc.rev_nat;
		ct_account(e, p.l4_proto, p.tcp_flags, len, 0, now);
	} else {
		opts.flags = 0;
		opts.user = id;
		ct_create(&t, CT_DIR_IN, p.l4_proto == IPPROTO_TCP ? p.tcp_flags : 0, len, &opts, now);
	}

	/* DNAT to the backend. */
	if (nb_skb_rewrite_addr(skb, &p, 1, &baddr) || nb_skb_rewrite_port(skb, &p, 1, bport))
		return TC_ACT_SHOT;
	lb_count(LB_STAT_DNAT);
	if (local)
		return TC_ACT_UNSPEC;

	/* SNAT to the node, and out of the uplink again. */
	if (nb_skb_rewrite_addr(skb, &p, 0, &snat) || nb_skb_rewrite_port(skb, &p, 0, nport))
		return TC_ACT_SHOT;
	lb_count(LB_STAT_SNAT);
	return np_redirect(skb, &p);
}

/*
 * The XDP variant, for the case where it pays: packets of connections to a
 * backend on another node, and their replies, come in and go back out of the
 * uplink, so XDP translates them (with the same conntrack and NAT entries as
 * the tc program) and sends them back out with XDP_TX, before the kernel
 * allocates an skb. It finishes a packet only when nothing can go wrong that
 * the tc program would handle: everything else (local backends, traffic
 * policy Local, other traffic, new connections it cannot give a NAT port, a
 * next hop that is not resolved or not out of the uplink, an expiring TTL)
 * it passes unchanged, having changed no map (but, for a new connection to a
 * service with session affinity, the client's affinity entry, which the tc
 * program then follows), and the tc program handles it as if XDP were not
 * there.
 */

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/*
 * The route of a translated packet: its addresses and ports (in), and the
 * Ethernet addresses of its next hop (out).
 */
struct npx_hop {
	union nb_addr saddr;
	union nb_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

/*
 * npx_fib looks up the route of a translated packet (p after translation to
 * h's addresses and ports) arriving on the uplink and fills in h's next hop.
 * Returns 0 only when the route leads back out of the uplink to a resolved
 * neighbour (what XDP_TX needs); else -1.
 */
static __attribute__((noinline)) int npx_fib(struct xdp_md *ctx, const struct nb_pkt *p, struct npx_hop *h)
{
	struct bpf_fib_lookup fib = {};
	__u32 ifindex = NB_READ_CTX(ctx, ingress_ifindex);
	long ret;

	if (!p || !h)
		return -1;
	fib.ifindex = ifindex;
	fib.l4_protocol = p->l4_proto;
	fib.sport = h->sport;
	fib.dport = h->dport;
	fib.tot_len = p->ip_len;
	if (p->l3_proto == ETH_P_IPV6) {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, h->saddr.v6, 16);
		__builtin_memcpy(fib.ipv6_dst, h->daddr.v6, 16);
	} else {
		fib.family = AF_INET;
		fib.tos = p->tos;
		fib.ipv4_src = h->saddr.v4;
		fib.ipv4_dst = h->daddr.v4;
	}
	ret = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != ifindex)
		return -1;
	__builtin_memcpy(h->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(h->smac, fib.smac, ETH_ALEN);
	return 0;
}

/*
 * npx_forward finishes a translated packet as a router does: it decrements
 * the TTL (hop limit), fixing the IPv4 header checksum, writes the next hop's
 * Ethernet addresses and returns XDP_TX (XDP_ABORTED if the frame shrank
 * under it, which cannot happen).
 */
static __always_inline int npx_forward(struct xdp_md *ctx, const struct nb_pkt *p, const struct npx_hop *h)
{
	struct nb_frame f;
	struct ethhdr *eth;

	nb_frame_xdp(&f, ctx);
	eth = nb_hdr(&f, 0, sizeof(*eth));
	if (!eth)
		return XDP_ABORTED;
	if (p->l3_proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = nb_hdr(&f, p->l3_off, sizeof(*ip6));

		if (!ip6)
			return XDP_ABORTED;
		ip6->hop_limit--;
	} else {
		struct iphdr *ip = nb_hdr(&f, p->l3_off, sizeof(*ip));
		__be16 *w, old;

		if (!ip)
			return XDP_ABORTED;
		w = (__be16 *)&ip->ttl; /* TTL and protocol: one 16-bit word of the checksum */
		old = *w;
		ip->ttl--;
		ip->check = nb_csum_update(ip->check, nb_csum_diff16(old, *w));
	}
	__builtin_memcpy(eth->h_dest, h->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, h->smac, ETH_ALEN);
	return XDP_TX;
}

/*
 * npx_translate rewrites p to h's addresses (source port sport, destination
 * port h->dport), counts it (fwd: as DNAT and SNAT; else as a reverse SNAT)
 * and forwards it. Returns XDP_TX, or XDP_ABORTED if the frame shrank under
 * it (which cannot happen).
 */
static __always_inline int npx_translate(struct xdp_md *ctx, struct nb_pkt *p, const struct npx_hop *h, __be16 sport,
					 int fwd)
{
	struct nb_frame f;

	nb_frame_xdp(&f, ctx);
	if (nb_rewrite_addr(&f, p, 1, &h->daddr) || nb_rewrite_port(&f, p, 1, h->dport) ||
	    nb_rewrite_addr(&f, p, 0, &h->saddr) || nb_rewrite_port(&f, p, 0, sport))
		return XDP_ABORTED;
	if (fwd) {
		lb_count(LB_STAT_DNAT);
		lb_count(LB_STAT_SNAT);
		lb_count(LB_STAT_XDP_FWD);
	} else {
		lb_count(LB_STAT_REVSNAT);
		lb_count(LB_STAT_XDP_REV);
	}
	return npx_forward(ctx, p, h);
}

/*
 * npx_rev_snat is np_rev_snat for XDP. Returns a verdict (XDP_TX), XDP_PASS
 * for a reply it leaves to the tc program, or -1 if p is no such reply.
 */
static __attribute__((noinline)) int npx_rev_snat(struct xdp_md *ctx, struct nb_pkt *p, __u8 family)
{
	struct lb_nat_key k;	/* the NAT key, then the conntrack tuple (the same layout) */
	struct lb_nat *n;
	struct lb_revnat *rn;
	struct ct_entry *e;
	struct npx_hop h;	/* the reply after translation: frontend -> client */
	__u32 idx;
	int reply;

	if (!p || np_snat_addr(family, &h.daddr) || __builtin_memcmp(&p->daddr, &h.daddr, sizeof(h.daddr)))
		return -1;
	np_key(&k, &p->saddr, p->sport, &p->daddr, p->dport, p->l4_proto, family);
	n = bpf_map_lookup_elem(&nb_lb_nat, &k);
	if (!n || !(n->flags & LB_NAT_F_REVERSE))
		return -1;
	idx = n->rev_nat;
	h.daddr = n->addr;
	h.dport = n->port;

	np_key(&k, &h.daddr, h.dport, &p->saddr, p->sport, p->l4_proto, family);
	e = ct_lookup((struct ct_tuple *)&k, &reply);
	if (e && !reply && e->rev_nat)
		idx = e->rev_nat;
	rn = bpf_map_lookup_elem(&nb_lb_revnat, &idx);
	if (!rn)
		return XDP_PASS; /* the tc program drops it */
	h.saddr = rn->addr;
	h.sport = rn->port;
	if (npx_fib(ctx, p, &h))
		return XDP_PASS;
	if (e && !reply)
		ct_account(e, p->l4_proto, p->tcp_flags, NB_READ_CTX(ctx, data_end) - NB_READ_CTX(ctx, data), 1,
			   bpf_ktime_get_ns());
	return npx_translate(ctx, p, &h, h.sport, 0);
}

/* npx_ct_create is ct_create of an inbound connection, as a function of its own (its stack apart). */
static __attribute__((noinline)) int npx_ct_create(const struct ct_tuple *t, __u8 tcp_flags, __u32 len,
						   const struct ct_create_opts *opts, __u64 now)
{
	if (!t || !opts)
		return -1;
	return ct_create(t, CT_DIR_IN, tcp_flags, len, opts, now);
}

/*
 * npx_svc load-balances p, a packet to a frontend, when its backend is on
 * another node (as a function of its own: its stack apart). Returns a
 * verdict: XDP_TX, or XDP_PASS for anything it leaves to the tc program.
 */
static __attribute__((noinline)) int npx_svc(struct xdp_md *ctx, struct nb_pkt *p, __u8 family)
{
	struct ct_create_opts opts = {.flags = CT_F_SERVICE};
	struct ct_entry *svc_entry, *e;
	struct lb_backend *b = NULL;
	struct ct_tuple t;
	struct lb_svc_info svc;
	struct npx_hop h;
	__be16 nport;
	__u32 id = 0, len;
	__u64 now;
	int reply;

	if (!p)
		return XDP_PASS;
	if (!np_lookup(p, family, LB_SCOPE_INTERNAL, &svc) || svc.type == LB_TYPE_CLUSTER_IP ||
	    (svc.flags & LB_F_LOCAL))
		return XDP_PASS;
	if (!np_allowed(&svc, p, family))
		return XDP_PASS; /* the tc program drops and counts it */
	if (ct_tuple_from_pkt(p, &t))
		return XDP_PASS;
	svc_entry = ct_lookup(&t, &reply);
	if (svc_entry) {
		if (reply)
			return XDP_PASS;
		id = svc_entry->user;
		b = bpf_map_lookup_elem(&nb_lb_backends, &id);
		if (!b)
			return XDP_PASS; /* the tc program chooses another backend */
	} else {
		id = np_select(&svc, p, family);
		b = id ? bpf_map_lookup_elem(&nb_lb_backends, &id) : NULL;
		if (!b)
			return XDP_PASS; /* the tc program drops and counts it */
	}
	if (b->state & LB_BACKEND_F_LOCAL)
		return XDP_PASS;
	h.daddr = b->addr;
	h.dport = b->port;
	h.sport = 0; /* the NAT port is not chosen yet: the route does not depend on it */
	if (np_snat_addr(family, &h.saddr) || npx_fib(ctx, p, &h))
		return XDP_PASS;

	len = NB_READ_CTX(ctx, data_end) - NB_READ_CTX(ctx, data);
	now = bpf_ktime_get_ns();
	opts.rev_nat = svc.rev_nat;
	if (svc_entry) {
		ct_account(svc_entry, p->l4_proto, p->tcp_flags, len, 0, now);
	} else {
		opts.user = id;
		npx_ct_create(&t, p->l4_proto == IPPROTO_TCP ? p->tcp_flags : 0, len, &opts, now);
	}

	/* The client -> backend tuple: its conntrack entry carries the rev-NAT index. */
	t.daddr = h.daddr;
	t.dport = h.dport;
	nport = np_nat_alloc((struct lb_nat_key *)&t, &h.saddr, svc.rev_nat, now);
	if (!nport)
		return XDP_PASS; /* the tc program drops and counts it */
	e = ct_lookup(&t, &reply);
	if (e && !reply) {
		if (e->rev_nat != svc.rev_nat)
			e->rev_nat = svc.rev_nat;
		ct_account(e, p->l4_proto, p->tcp_flags, len, 0, now);
	} else {
		opts.flags = 0;
		opts.user = id;
		npx_ct_create(&t, p->l4_proto == IPPROTO_TCP ? p->tcp_flags : 0, len, &opts, now);
	}
	return npx_translate(ctx, p, &h, nport, 1);
}

SEC("xdp")
int nb_lb_uplink_xdp(struct xdp_md *ctx)
{
	struct nb_pkt p = {};
	__u8 family;
	int ret;

	if (nb_parse_xdp(ctx, &p) || !(p.layers & NB_LAYER_L4) ||
	    (p.l4_proto != IPPROTO_TCP && p.l4_proto != IPPROTO_UDP) || p.frag_off || p.vlan_depth)
		return XDP_PASS;
	if (p.ttl <= 1)
		return XDP_PASS; /* the tc program drops it */
	family = p.l3_proto == ETH_P_IPV6 ? 6 : 4;
	ret = npx_rev_snat(ctx, &p, family);
	if (ret >= 0)
		return ret;
	return npx_svc(ctx, &p, family);
}
