/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * nb_parse.h: bounds-checked packet parsing shared by every netblocks program.
 *
 * One call, nb_parse_xdp() or nb_parse_skb(), walks Ethernet (with up to two 802.1Q/802.1ad tags),
 * IPv4 (options, fragments) or IPv6 (extension headers, fragments), and
 * TCP/UDP/ICMP/ICMPv6, and fills a struct nb_pkt. Frames without a link layer
 * (tc on an L3 device, the packet quoted in an ICMP error) use nb_parse_ip_xdp()
 * or nb_parse_ip_skb().
 *
 * Contract, which the tests in internal/bpf/parsetest check byte by byte:
 *  - A layer's fields are written only when that layer's whole header is
 *    inside the frame (IPv4 options, every IPv6 extension header, TCP options
 *    included), and then its bit is set in nb_pkt.layers. A layer that does not
 *    fit leaves its fields zero and nb_pkt.err says why parsing stopped.
 *  - So nothing reported ever lies beyond the frame:
 *      L2 => l3_off <= len; L3 => l4_off <= len; L4 => l4_off + l4_hdr_len <= len.
 *  - A later fragment (fragment offset > 0) carries no upper-layer header: L3 is
 *    reported, L4 is not, and err is NB_OK.
 *  - A frame that is not IP (ARP, LLDP), or an upper-layer protocol the parser
 *    does not know (SCTP, GRE, ESP), stops without error after the last layer it
 *    knows.
 */
#ifndef NB_PARSE_H
#define NB_PARSE_H

#include "nb_common.h"

/* Why nb_parse stopped (nb_pkt.err). */
enum {
	NB_OK = 0,		/* every layer present was parsed */
	NB_ERR_TRUNCATED = 1,	/* a header runs past the end of the frame */
	NB_ERR_MALFORMED = 2,	/* a header contradicts itself (IPv4 IHL < 5, TCP data offset < 5, ...) */
	NB_ERR_UNSUPPORTED = 3,	/* a valid frame beyond the parser's limits (3+ VLAN tags, 9+ IPv6 extension headers) */
};

/* Layers parsed completely (nb_pkt.layers). */
enum {
	NB_LAYER_L2 = 1 << 0,
	NB_LAYER_L3 = 1 << 1,
	NB_LAYER_L4 = 1 << 2,
};

/* Fragment state (nb_pkt.frag). */
enum {
	NB_FRAG_FRAGMENT = 1 << 0,	/* part of a fragmented datagram (more fragments, or offset > 0) */
	NB_FRAG_MORE = 1 << 1,		/* more fragments follow */
	NB_FRAG_DONT = 1 << 2,		/* IPv4 don't-fragment bit */
};

/* Flags of nb_parse_ip (and the nb_parse_ip_* entry points). */
enum {
	/*
	 * The packet is quoted in an ICMP error, which carries only the first 8
	 * bytes of its upper-layer header: parse TCP from those 8 (ports, no
	 * flags; l4_hdr_len 8) instead of requiring the whole header.
	 */
	NB_PARSE_QUOTED = 1 << 0,
	/* Stop after the network layer: no upper-layer header is looked for (a CIDR filter needs none). */
	NB_PARSE_NO_L4 = 1 << 1,
};

#define NB_MAX_VLAN 2		/* 802.1Q, or 802.1ad + 802.1Q (QinQ) */
#define NB_IPV6_MAX_EXT 8	/* extension headers walked before giving up */
#define NB_MAX_HDR_OFF 1024	/* no header is looked for beyond this offset */
#define NB_PULL_LEN 256		/* bytes nb_frame_skb makes linear for parsing */

/* An IPv4 or IPv6 address in network order; IPv4 uses the first 4 bytes. */
union nb_addr {
	__be32 v4;
	__be32 v6[4];
	__u8 bytes[16];
};

/* What nb_parse found in one frame. Offsets are from the start of the frame. */
struct nb_pkt {
	union nb_addr saddr;		/* L3: source address */
	union nb_addr daddr;		/* L3: destination address */
	__u32 frag_id;			/* L3: fragment identification (IPv4 ID, or IPv6 fragment header ID), host order */
	__u16 eth_proto;		/* L2: EtherType of the Ethernet header, host order */
	__u16 l3_proto;			/* L2: EtherType of the network layer after VLAN tags, host order */
	__u16 vlan_tci[NB_MAX_VLAN];	/* L2: TCI of the outer, then the inner tag, host order */
	__u16 l3_off;			/* L2: offset of the network header */
	__u16 l4_off;			/* L3: offset of the upper-layer header (after options and extension headers) */
	__u16 ip_len;			/* L3: datagram length the header declares (IPv4 total length; IPv6 40 + payload length) */
	__u16 frag_off;			/* L3: fragment offset in bytes */
	__be16 sport;			/* L4: TCP/UDP source port, network order */
	__be16 dport;			/* L4: TCP/UDP destination port, network order */
	__be16 icmp_id;			/* L4: ICMP/ICMPv6 echo identifier, network order */
	__u8 vlan_depth;		/* L2: number of VLAN tags */
	__u8 l4_proto;			/* L3: upper-layer protocol (IPPROTO_*), after extension headers */
	__u8 l4_hdr_len;		/* L4: upper-layer header length (TCP data offset * 4, UDP/ICMP 8) */
	__u8 ttl;			/* L3: TTL or hop limit */
	__u8 tos;			/* L3: TOS or traffic class */
	__u8 frag;			/* L3: NB_FRAG_* */
	__u8 tcp_flags;			/* L4: TCP flags byte, FIN 0x01 .. CWR 0x80 */
	__u8 icmp_type;			/* L4 */
	__u8 icmp_code;			/* L4 */
	__u8 ipv6_ext;			/* L3: IPv6 extension headers walked */
	__u8 layers;			/* NB_LAYER_* parsed completely */
	__u8 err;			/* NB_OK or why parsing stopped */
};

/* The bytes a program may read: [data, data_end). */
struct nb_frame {
	void *data;
	void *data_end;
};

struct nb_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* nb_frame_xdp points f at an XDP frame. */
static __always_inline void nb_frame_xdp(struct nb_frame *f, struct xdp_md *ctx)
{
	f->data = (void *)(long)NB_READ_CTX(ctx, data);
	f->data_end = (void *)(long)NB_READ_CTX(ctx, data_end);
}

/* nb_frame_skb_linear points f at the linear part of a tc frame, as it is. */
static __always_inline void nb_frame_skb_linear(struct nb_frame *f, struct __sk_buff *skb)
{
	f->data = (void *)(long)NB_READ_CTX(skb, data);
	f->data_end = (void *)(long)NB_READ_CTX(skb, data_end);
}

/*
 * nb_frame_skb points f at a tc frame, first making up to want bytes (at most
 * NB_PULL_LEN, at most the packet) linear and writable, because tc may see
 * non-linear skbs. Returns 0, or a negative error from bpf_skb_pull_data.
 * Helpers that change the packet invalidate f: call this again after them.
 */
static __always_inline int nb_frame_skb(struct nb_frame *f, struct __sk_buff *skb, __u32 want)
{
	__u32 len = NB_READ_CTX(skb, len);

	if (want > NB_PULL_LEN)
		want = NB_PULL_LEN;
	if (want > len)
		want = len;
	nb_frame_skb_linear(f, skb);
	if (f->data + want <= f->data_end)
		return 0;
	if (bpf_skb_pull_data(skb, want) < 0)
		return -1;
	nb_frame_skb_linear(f, skb);
	return 0;
}

/* nb_hdr returns a pointer to len bytes at off, or NULL when they are not all in the frame. */
static __always_inline void *nb_hdr(const struct nb_frame *f, __u32 off, __u32 len)
{
	void *p;

	if (off > NB_MAX_HDR_OFF)
		return NULL;
	p = f->data + off;
	if (p + len > f->data_end)
		return NULL;
	return p;
}

/* nb_fits reports whether len bytes (len <= 2048) at off are all in the frame. */
static __always_inline int nb_fits(const struct nb_frame *f, __u32 off, __u32 len)
{
	if (off > NB_MAX_HDR_OFF || len > 2048)
		return 0;
	return f->data + off + len <= f->data_end;
}

/* nb_parse_eth parses the Ethernet header and VLAN tags at the start of the frame. */
static __always_inline int nb_parse_eth(const struct nb_frame *f, struct nb_pkt *p)
{
	struct ethhdr *eth = nb_hdr(f, 0, sizeof(*eth));
	__u16 tci[NB_MAX_VLAN] = {};
	__u32 off = sizeof(*eth);
	__u16 proto;
	__u8 depth = 0;

	if (!eth)
		return NB_ERR_TRUNCATED;
	proto = bpf_ntohs(eth->h_proto);
#pragma unroll
	for (int i = 0; i < NB_MAX_VLAN; i++) {
		struct nb_vlan_hdr *vh;

		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		vh = nb_hdr(f, off, sizeof(*vh));
		if (!vh)
			return NB_ERR_TRUNCATED;
		tci[i] = bpf_ntohs(vh->tci);
		proto = bpf_ntohs(vh->proto);
		off += sizeof(*vh);
		depth++;
	}
	if (proto == ETH_P_8021Q || proto == ETH_P_8021AD)
		return NB_ERR_UNSUPPORTED;

	p->eth_proto = bpf_ntohs(eth->h_proto);
	p->vlan_tci[0] = tci[0];
	p->vlan_tci[1] = tci[1];
	p->vlan_depth = depth;
	p->l3_proto = proto;
	p->l3_off = off;
	p->layers |= NB_LAYER_L2;
	return NB_OK;
}

/* nb_parse_ipv4 parses the IPv4 header, options included, at p->l3_off. */
static __always_inline int nb_parse_ipv4(const struct nb_frame *f, struct nb_pkt *p)
{
	__u32 off = p->l3_off;
	struct iphdr *ip = nb_hdr(f, off, sizeof(*ip));
	__u32 hlen;
	__u16 fo;

	if (!ip)
		return NB_ERR_TRUNCATED;
	if (ip->version != 4)
		return NB_ERR_MALFORMED;
	hlen = ip->ihl * 4;
	if (hlen < sizeof(*ip) || bpf_ntohs(ip->tot_len) < hlen)
		return NB_ERR_MALFORMED;
	if (!nb_fits(f, off, hlen))
		return NB_ERR_TRUNCATED;

	p->saddr.v4 = ip->saddr;
	p->daddr.v4 = ip->daddr;
	p->ip_len = bpf_ntohs(ip->tot_len);
	p->ttl = ip->ttl;
	p->tos = ip->tos;
	p->l4_proto = ip->protocol;
	p->frag_id = bpf_ntohs(ip->id);
	fo = bpf_ntohs(ip->frag_off);
	p->frag_off = (fo & 0x1fff) * 8;
	if (fo & 0x2000)
		p->frag |= NB_FRAG_MORE;
	if (fo & 0x4000)
		p->frag |= NB_FRAG_DONT;
	if (fo & 0x3fff)
		p->frag |= NB_FRAG_FRAGMENT;
	p->l4_off = off + hlen;
	p->layers |= NB_LAYER_L3;
	return NB_OK;
}

struct nb_ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

/*
 * nb_parse_ipv6 parses the IPv6 header at p->l3_off and walks its extension
 * headers (hop-by-hop, routing, fragment, destination options, AH) to the
 * upper-layer header. After a later fragment's fragment header it stops: what
 * follows is data, not a header.
 */
static __always_inline int nb_parse_ipv6(const struct nb_frame *f, struct nb_pkt *p)
{
	__u32 off = p->l3_off;
	struct ipv6hdr *ip6 = nb_hdr(f, off, sizeof(*ip6));
	__u32 l4 = off + sizeof(*ip6);
	__u32 frag_id = 0;
	__u16 frag_off = 0;
	__u8 frag = 0, n = 0, nh;

	if (!ip6)
		return NB_ERR_TRUNCATED;
	if (ip6->version != 6)
		return NB_ERR_MALFORMED;
	nh = ip6->nexthdr;

	for (int i = 0; i <= NB_IPV6_MAX_EXT; i++) {
		__u8 *eh;
		__u32 len;

		if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS &&
		    nh != IPPROTO_AH && nh != IPPROTO_FRAGMENT)
			goto done;
		if (frag_off)
			goto done; /* a later fragment: the rest is data */
		if (i == NB_IPV6_MAX_EXT || l4 > NB_MAX_HDR_OFF)
			return NB_ERR_UNSUPPORTED;
		eh = nb_hdr(f, l4, 8); /* every extension header is at least 8 bytes */
		if (!eh)
			return NB_ERR_TRUNCATED;
		if (nh == IPPROTO_FRAGMENT) {
			struct nb_ipv6_frag_hdr *fh = (void *)eh;
			__u16 fo = bpf_ntohs(fh->frag_off);

			frag_off = fo & 0xfff8;
			frag_id = bpf_ntohl(fh->id);
			if (fo & 1)
				frag |= NB_FRAG_MORE;
			if (fo & 0xfff9)
				frag |= NB_FRAG_FRAGMENT;
			len = 8;
		} else if (nh == IPPROTO_AH) {
			len = ((__u32)eh[1] + 2) * 4;
		} else {
			len = ((__u32)eh[1] + 1) * 8;
		}
		if (!nb_fits(f, l4, len))
			return NB_ERR_TRUNCATED;
		nh = eh[0];
		l4 += len;
		n++;
	}
	return NB_ERR_UNSUPPORTED;

done:
	__builtin_memcpy(p->saddr.v6, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr.v6, &ip6->daddr, 16);
	p->ip_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	p->ttl = ip6->hop_limit;
	p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	p->l4_proto = nh;
	p->frag_id = frag_id;
	p->frag_off = frag_off;
	p->frag = frag;
	p->ipv6_ext = n;
	p->l4_off = l4;
	p->layers |= NB_LAYER_L3;
	return NB_OK;
}

/* nb_is_echo reports whether an ICMP/ICMPv6 type is an echo request or reply (which carry an id). */
static __always_inline int nb_is_echo(__u8 l4_proto, __u8 type)
{
	if (l4_proto == IPPROTO_ICMP)
		return type == NB_ICMP_ECHO || type == NB_ICMP_ECHOREPLY;
	return type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY;
}

/* nb_parse_l4 parses the TCP, UDP, ICMP or ICMPv6 header at p->l4_off. */
static __always_inline int nb_parse_l4(const struct nb_frame *f, struct nb_pkt *p, __u32 flags)
{
	__u32 off = p->l4_off;
	__u8 proto = p->l4_proto;

	if (proto == IPPROTO_TCP && (flags & NB_PARSE_QUOTED)) {
		__be16 *ports = nb_hdr(f, off, 8);

		if (!ports)
			return NB_ERR_TRUNCATED;
		p->sport = ports[0];
		p->dport = ports[1];
		p->l4_hdr_len = 8;
	} else if (proto == IPPROTO_TCP) {
		struct tcphdr *th = nb_hdr(f, off, sizeof(*th));
		__u32 len;

		if (!th)
			return NB_ERR_TRUNCATED;
		len = th->doff * 4;
		if (len < sizeof(*th))
			return NB_ERR_MALFORMED;
		if (!nb_fits(f, off, len))
			return NB_ERR_TRUNCATED;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		p->l4_hdr_len = len;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = nb_hdr(f, off, sizeof(*uh));

		if (!uh)
			return NB_ERR_TRUNCATED;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->l4_hdr_len = sizeof(*uh);
	} else if ((proto == IPPROTO_ICMP && p->l3_proto == ETH_P_IP) ||
		   (proto == IPPROTO_ICMPV6 && p->l3_proto == ETH_P_IPV6)) {
		/* ICMP and ICMPv6 share the layout of the first 8 bytes. */
		struct nb_icmphdr *ih = nb_hdr(f, off, sizeof(*ih));

		if (!ih)
			return NB_ERR_TRUNCATED;
		p->icmp_type = ih->type;
		p->icmp_code = ih->code;
		if (nb_is_echo(proto, ih->type))
			p->icmp_id = ih->id;
		p->l4_hdr_len = sizeof(*ih);
	} else {
		return NB_OK; /* an upper layer the parser does not know */
	}
	p->layers |= NB_LAYER_L4;
	return NB_OK;
}

/* nb_parse_l3 parses the network layer named by p->l3_proto at p->l3_off, then the upper layer. */
static __always_inline int nb_parse_l3(const struct nb_frame *f, struct nb_pkt *p, __u32 flags)
{
	int err;

	if (p->l3_proto == ETH_P_IP)
		err = nb_parse_ipv4(f, p);
	else if (p->l3_proto == ETH_P_IPV6)
		err = nb_parse_ipv6(f, p);
	else
		return NB_OK; /* not IP: ARP, LLDP, ... */
	if (err)
		return err;
	if (p->frag_off || (flags & NB_PARSE_NO_L4))
		return NB_OK; /* a later fragment has no upper-layer header */
	return nb_parse_l4(f, p, flags);
}

/*
 * The entry points programs call. They are global BPF functions, not inlined:
 * the verifier checks each once, on its own, instead of again at every call
 * site and along every path that reaches it (one per VLAN depth, one for an
 * ICMP error's quoted packet), which keeps programs that include several
 * blocks far from the verifier's limits. They only read the packet; in tc,
 * call nb_frame_skb first so that the headers are linear, and re-derive any
 * packet pointers after the call. p may not be NULL (they return
 * NB_ERR_MALFORMED if it is).
 */

/* nb_parse_l3_xdp parses the network layer named by p->l3_proto at p->l3_off, and the upper layer. */
__attribute__((noinline)) int nb_parse_l3_xdp(struct xdp_md *ctx, struct nb_pkt *p, __u32 flags)
{
	struct nb_frame f;

	if (!p)
		return NB_ERR_MALFORMED;
	nb_frame_xdp(&f, ctx);
	return nb_parse_l3(&f, p, flags);
}

/* nb_parse_l3_skb is nb_parse_l3_xdp for tc. */
__attribute__((noinline)) int nb_parse_l3_skb(struct __sk_buff *skb, struct nb_pkt *p, __u32 flags)
{
	struct nb_frame f;

	if (!p)
		return NB_ERR_MALFORMED;
	nb_frame_skb_linear(&f, skb);
	return nb_parse_l3(&f, p, flags);
}

/* nb_parse_xdp zeroes p and parses an Ethernet frame into it. Returns p->err. */
__attribute__((noinline)) int nb_parse_xdp(struct xdp_md *ctx, struct nb_pkt *p)
{
	struct nb_frame f;
	int err;

	if (!p)
		return NB_ERR_MALFORMED;
	nb_frame_xdp(&f, ctx);
	__builtin_memset(p, 0, sizeof(*p));
	err = nb_parse_eth(&f, p);
	if (!err)
		err = nb_parse_l3_xdp(ctx, p, 0);
	p->err = err;
	return err;
}

/* nb_parse_skb zeroes p and parses a tc frame (Ethernet) into it. Returns p->err. */
__attribute__((noinline)) int nb_parse_skb(struct __sk_buff *skb, struct nb_pkt *p)
{
	struct nb_frame f;
	int err;

	if (!p)
		return NB_ERR_MALFORMED;
	nb_frame_skb_linear(&f, skb);
	__builtin_memset(p, 0, sizeof(*p));
	err = nb_parse_eth(&f, p);
	if (!err)
		err = nb_parse_l3_skb(skb, p, 0);
	p->err = err;
	return err;
}

/*
 * nb_parse_ip_begin starts parsing an IP packet at off: it zeroes p and sets
 * p->l3_proto from the version nibble. Returns NB_OK to go on with
 * nb_parse_l3_*, or the error that ends the parse.
 */
static __always_inline int nb_parse_ip_begin(const struct nb_frame *f, struct nb_pkt *p, __u32 off)
{
	__u8 *v;

	__builtin_memset(p, 0, sizeof(*p));
	v = nb_hdr(f, off, 1);
	if (!v)
		return NB_ERR_TRUNCATED;
	switch (*v >> 4) {
	case 4:
		p->l3_proto = ETH_P_IP;
		break;
	case 6:
		p->l3_proto = ETH_P_IPV6;
		break;
	default:
		return NB_ERR_MALFORMED;
	}
	p->l3_off = off;
	return NB_OK;
}

/* nb_parse_ip_end records err, clearing the start nb_parse_ip_begin made if no IP header was parsed. */
static __always_inline int nb_parse_ip_end(struct nb_pkt *p, int err)
{
	if (err && !(p->layers & NB_LAYER_L3)) {
		p->l3_proto = 0;
		p->l3_off = 0;
	}
	p->err = err;
	return err;
}

/*
 * nb_parse_ip_xdp zeroes p and parses an IP packet that starts at off of an
 * XDP frame (a frame with no link layer, or a packet quoted in an ICMP error),
 * with NB_PARSE_* flags. The IP version nibble picks the family and sets
 * p->l3_proto to the matching EtherType; NB_LAYER_L2 is never set. Returns
 * p->err.
 */
__attribute__((noinline)) int nb_parse_ip_xdp(struct xdp_md *ctx, struct nb_pkt *p, __u32 off, __u32 flags)
{
	struct nb_frame f;
	int err;

	if (!p)
		return NB_ERR_MALFORMED;
	nb_frame_xdp(&f, ctx);
	err = nb_parse_ip_begin(&f, p, off);
	if (!err)
		err = nb_parse_l3_xdp(ctx, p, flags);
	return nb_parse_ip_end(p, err);
}

/* nb_parse_ip_skb is nb_parse_ip_xdp for tc. */
__attribute__((noinline)) int nb_parse_ip_skb(struct __sk_buff *skb, struct nb_pkt *p, __u32 off, __u32 flags)
{
	struct nb_frame f;
	int err;

	if (!p)
		return NB_ERR_MALFORMED;
	nb_frame_skb_linear(&f, skb);
	err = nb_parse_ip_begin(&f, p, off);
	if (!err)
		err = nb_parse_l3_skb(skb, p, flags);
	return nb_parse_ip_end(p, err);
}

#endif /* NB_PARSE_H */
