/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * nb_csum.h: checksum updates for address and port rewrites (NAT).
 *
 * Two flavours, because the two hooks own checksums differently:
 *  - nb_rewrite_addr / nb_rewrite_port write the packet directly and update
 *    the IPv4 header and L4 checksums incrementally (RFC 1624). For XDP, where
 *    the frame is plain bytes.
 *  - nb_skb_rewrite_addr / nb_skb_rewrite_port go through bpf_skb_store_bytes
 *    and bpf_l3/l4_csum_replace, which also keep the skb's checksum state
 *    (CHECKSUM_PARTIAL, CHECKSUM_COMPLETE) right. For tc: a direct write there
 *    would corrupt locally generated packets whose L4 checksum is offloaded.
 *
 * Both take a struct nb_pkt from the parser and keep it in step with the
 * rewrite. The L4 checksum is updated only where the L4 header is in this
 * packet: a later fragment carries none (its datagram's checksum travels in the
 * first fragment). A UDP checksum of zero (IPv4: "no checksum") stays zero, and
 * an update that yields zero writes 0xffff instead.
 */
#ifndef NB_CSUM_H
#define NB_CSUM_H

#include "nb_parse.h"

/* nb_csum_fold folds a 64-bit one's complement sum to 16 bits. */
static __always_inline __u16 nb_csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* nb_csum_diff16 is the checksum difference of replacing one 16-bit word. */
static __always_inline __u64 nb_csum_diff16(__be16 from, __be16 to)
{
	return (__u64)(__u16)~from + to;
}

/* nb_csum_diff32 is the checksum difference of replacing one 32-bit word. */
static __always_inline __u64 nb_csum_diff32(__be32 from, __be32 to)
{
	return (__u64)(__u32)~from + to;
}

/* nb_csum_diff_addr is the difference of replacing an address (4 or 16 bytes). */
static __always_inline __u64 nb_csum_diff_addr(const union nb_addr *from, const union nb_addr *to, int v6)
{
	__u64 d = nb_csum_diff32(from->v6[0], to->v6[0]);

	if (v6) {
		d += nb_csum_diff32(from->v6[1], to->v6[1]);
		d += nb_csum_diff32(from->v6[2], to->v6[2]);
		d += nb_csum_diff32(from->v6[3], to->v6[3]);
	}
	return d;
}

/* nb_csum_update applies a difference to a checksum field's value (HC' = ~(~HC + diff)). */
static __always_inline __sum16 nb_csum_update(__sum16 csum, __u64 diff)
{
	return (__sum16)~nb_csum_fold((__u64)(__u16)~csum + diff);
}

/* nb_l4_csum_off returns the offset of the upper-layer checksum from the L4 header, or -1. */
static __always_inline int nb_l4_csum_off(__u8 l4_proto)
{
	switch (l4_proto) {
	case IPPROTO_TCP:
		return 16;
	case IPPROTO_UDP:
		return 6;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return 2;
	}
	return -1;
}

/* nb_l4_has_pseudo reports whether the L4 checksum covers the IP addresses. */
static __always_inline int nb_l4_has_pseudo(__u8 l4_proto)
{
	return l4_proto == IPPROTO_TCP || l4_proto == IPPROTO_UDP || l4_proto == IPPROTO_ICMPV6;
}

/* nb_l4_csum_apply updates the L4 checksum in the frame, if p has one, by diff. */
static __always_inline int nb_l4_csum_apply(const struct nb_frame *f, const struct nb_pkt *p, __u64 diff)
{
	int off = nb_l4_csum_off(p->l4_proto);
	__sum16 *csum;

	if (!(p->layers & NB_LAYER_L4) || off < 0)
		return 0;
	csum = nb_hdr(f, p->l4_off + off, sizeof(*csum));
	if (!csum)
		return -1;
	if (p->l4_proto == IPPROTO_UDP) {
		if (*csum == 0 && p->l3_proto == ETH_P_IP)
			return 0; /* no checksum */
		*csum = nb_csum_update(*csum, diff);
		if (*csum == 0)
			*csum = 0xffff;
		return 0;
	}
	*csum = nb_csum_update(*csum, diff);
	return 0;
}

/*
 * nb_rewrite_addr replaces the source (dst == 0) or destination (dst != 0)
 * address of a parsed IPv4/IPv6 packet in place, and updates the IPv4 header
 * checksum and the L4 checksum. Direct packet access: XDP. Returns 0 or -1.
 */
static __always_inline int nb_rewrite_addr(const struct nb_frame *f, struct nb_pkt *p, int dst,
					   const union nb_addr *to)
{
	union nb_addr *cur = dst ? &p->daddr : &p->saddr;
	int v6 = p->l3_proto == ETH_P_IPV6;
	__u64 diff;

	if (!(p->layers & NB_LAYER_L3))
		return -1;
	diff = nb_csum_diff_addr(cur, to, v6);
	if (v6) {
		struct ipv6hdr *ip6 = nb_hdr(f, p->l3_off, sizeof(*ip6));

		if (!ip6)
			return -1;
		if (dst)
			__builtin_memcpy(&ip6->daddr, to->v6, 16);
		else
			__builtin_memcpy(&ip6->saddr, to->v6, 16);
		cur->v6[0] = to->v6[0];
		cur->v6[1] = to->v6[1];
		cur->v6[2] = to->v6[2];
		cur->v6[3] = to->v6[3];
	} else {
		struct iphdr *ip = nb_hdr(f, p->l3_off, sizeof(*ip));

		if (!ip)
			return -1;
		if (dst)
			ip->daddr = to->v4;
		else
			ip->saddr = to->v4;
		ip->check = nb_csum_update(ip->check, diff);
		cur->v4 = to->v4;
	}
	if (!nb_l4_has_pseudo(p->l4_proto))
		return 0;
	return nb_l4_csum_apply(f, p, diff);
}

/*
 * nb_port_field finds what a port rewrite changes: the TCP/UDP source
 * (dst == 0) or destination port, or the ICMP/ICMPv6 echo identifier (dst
 * ignored). It sets *off to the field's offset in the L4 header and returns the
 * matching field of p, or NULL when p has no such field (no L4 header, not an
 * echo, another protocol).
 */
static __always_inline __be16 *nb_port_field(struct nb_pkt *p, int dst, __u32 *off)
{
	if (!(p->layers & NB_LAYER_L4))
		return NULL;
	if (p->l4_proto == IPPROTO_TCP || p->l4_proto == IPPROTO_UDP) {
		*off = dst ? 2 : 0;
		return dst ? &p->dport : &p->sport;
	}
	if (nb_is_echo(p->l4_proto, p->icmp_type)) {
		*off = 4;
		return &p->icmp_id;
	}
	return NULL;
}

/*
 * nb_rewrite_port replaces the TCP/UDP source (dst == 0) or destination port,
 * or the ICMP/ICMPv6 echo identifier (dst ignored), in place and updates the L4
 * checksum. The packet must have its L4 header. Direct packet access: XDP.
 * Returns 0 or -1.
 */
static __always_inline int nb_rewrite_port(const struct nb_frame *f, struct nb_pkt *p, int dst, __be16 to)
{
	__u32 off = 0;
	__be16 *field, *cur = nb_port_field(p, dst, &off);

	if (!cur)
		return -1;
	field = nb_hdr(f, p->l4_off + off, sizeof(*field));
	if (!field)
		return -1;
	if (nb_l4_csum_apply(f, p, nb_csum_diff16(*field, to)))
		return -1;
	*field = to;
	*cur = to;
	return 0;
}

/*
 * nb_skb_rewrite_addr is nb_rewrite_addr for tc: it writes with
 * bpf_skb_store_bytes and fixes checksums with bpf_l3_csum_replace and
 * bpf_l4_csum_replace. It invalidates every packet pointer (re-derive the
 * frame with nb_frame_skb before touching packet bytes again). Returns 0 or a
 * negative error from the kernel.
 */
static __always_inline int nb_skb_rewrite_addr(struct __sk_buff *skb, struct nb_pkt *p, int dst,
					       const union nb_addr *to)
{
	union nb_addr *cur = dst ? &p->daddr : &p->saddr;
	int v6 = p->l3_proto == ETH_P_IPV6;
	int csum_off = nb_l4_csum_off(p->l4_proto);
	__u64 l4flags = BPF_F_PSEUDO_HDR;
	int ret;

	if (!(p->layers & NB_LAYER_L3))
		return -1;
	if (p->l4_proto == IPPROTO_UDP)
		l4flags |= BPF_F_MARK_MANGLED_0;
	if (!(p->layers & NB_LAYER_L4) || !nb_l4_has_pseudo(p->l4_proto))
		csum_off = -1;

	if (v6) {
		__u32 off = p->l3_off + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
		__s64 diff = bpf_csum_diff(cur->v6, 16, (__be32 *)to->v6, 16, 0);

		if (diff < 0)
			return diff;
		if (csum_off >= 0) {
			ret = bpf_l4_csum_replace(skb, p->l4_off + csum_off, 0, diff, l4flags);
			if (ret)
				return ret;
		}
		ret = bpf_skb_store_bytes(skb, off, to->v6, 16, 0);
		if (ret)
			return ret;
		cur->v6[0] = to->v6[0];
		cur->v6[1] = to->v6[1];
		cur->v6[2] = to->v6[2];
		cur->v6[3] = to->v6[3];
		return 0;
	}

	__u32 off = p->l3_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

	if (csum_off >= 0) {
		ret = bpf_l4_csum_replace(skb, p->l4_off + csum_off, cur->v4, to->v4, l4flags | 4);
		if (ret)
			return ret;
	}
	ret = bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), cur->v4, to->v4, 4);
	if (ret)
		return ret;
	ret = bpf_skb_store_bytes(skb, off, &to->v4, 4, 0);
	if (ret)
		return ret;
	cur->v4 = to->v4;
	return 0;
}

/*
 * nb_skb_rewrite_port is nb_rewrite_port for tc (see nb_skb_rewrite_addr).
 * Returns 0 or a negative error.
 */
static __always_inline int nb_skb_rewrite_port(struct __sk_buff *skb, struct nb_pkt *p, int dst, __be16 to)
{
	__u32 off = 0;
	__be16 *cur = nb_port_field(p, dst, &off);
	__u64 flags = 2;
	int ret;

	if (!cur)
		return -1;
	if (p->l4_proto == IPPROTO_UDP)
		flags |= BPF_F_MARK_MANGLED_0;
	ret = bpf_l4_csum_replace(skb, p->l4_off + nb_l4_csum_off(p->l4_proto), *cur, to, flags);
	if (ret)
		return ret;
	ret = bpf_skb_store_bytes(skb, p->l4_off + off, &to, sizeof(to), 0);
	if (ret)
		return ret;
	*cur = to;
	return 0;
}

#endif /* NB_CSUM_H */
