/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * conntrack.h: connection tracking in a BPF LRU hash map, for any netblocks
 * program to include. The Go package github.com/netblocks/netblocks/conntrack
 * creates, pins, dumps and garbage-collects the maps defined here; a program
 * that includes this header gets its own copies of the map definitions, which
 * the Go side replaces with the Table's maps at load time.
 *
 * One entry per connection, keyed by the tuple of its first packet (the
 * original direction). A packet whose tuple is found as-is belongs to the
 * original direction; one found reversed is a reply. ICMP and ICMPv6 echo use
 * the identifier as a port (request: source port, reply: destination port), so
 * a reply finds its request's entry reversed. An ICMP error is matched, through
 * the packet it quotes, to the flow it reports on: it is RELATED and changes
 * nothing.
 *
 * Counters are per direction of the flow: Rx counts packets that travel the way
 * an IN flow's first packet did, Tx the other way (for an OUT flow the
 * reverse). On one interface with the tracker on ingress and egress, Rx is what
 * came in and Tx what went out, as in Cilium's `ct list`.
 *
 * TCP state: NEW until the reply direction and a non-SYN packet have been seen
 * (ESTABLISHED); CLOSING once both directions sent FIN, or either sent RST. A
 * SYN (without ACK) in the original direction of a CLOSING entry starts a new
 * connection in its place. Non-TCP flows are NEW until a reply, then
 * ESTABLISHED. Each packet sets expires = now + the timeout of the state.
 */
#ifndef NB_CONNTRACK_H
#define NB_CONNTRACK_H

#include "nb_parse.h"

#ifndef NB_CT_MAX_ENTRIES
#define NB_CT_MAX_ENTRIES 262144 /* the Go side sets the real size at load */
#endif

/* Default timeouts, used where the config map holds zero. */
#define NB_CT_DEFAULT_TCP_ESTABLISHED (6ULL * 3600 * 1000000000ULL)
#define NB_CT_DEFAULT_TCP_SYN (60ULL * 1000000000ULL)
#define NB_CT_DEFAULT_TCP_CLOSING (10ULL * 1000000000ULL)
#define NB_CT_DEFAULT_NONTCP (60ULL * 1000000000ULL)

/* Direction of a flow's first packet through the hook (struct ct_entry.dir). */
enum {
	CT_DIR_IN = 0,	/* ingress */
	CT_DIR_OUT = 1,	/* egress */
};

/* Connection state (struct ct_entry.state). */
enum {
	CT_STATE_NEW = 0,
	CT_STATE_ESTABLISHED = 1,
	CT_STATE_CLOSING = 2,
};

/* Entry flags (struct ct_entry.flags). */
enum {
	CT_F_RX_CLOSING = 1 << 0,	/* FIN or RST seen in the Rx direction */
	CT_F_TX_CLOSING = 1 << 1,	/* FIN or RST seen in the Tx direction */
	CT_F_SEEN_NON_SYN = 1 << 2,	/* a TCP packet without SYN was seen */
	CT_F_SEEN_REPLY = 1 << 3,	/* a packet in the reply direction was seen */
	CT_F_SERVICE = 1 << 4,		/* a load balancer's client -> service entry (user holds the backend) */
};

/* What ct_process found (its return value). */
enum {
	CT_NEW = 1,		/* no entry: one was created */
	CT_ESTABLISHED = 2,	/* entry found, original direction */
	CT_REPLY = 3,		/* entry found, reply direction */
	CT_RELATED = 4,		/* ICMP error about a tracked flow */
	CT_UNTRACKED = 5,	/* not trackable: not IP, a later fragment, unparsed L4, an ICMP error about no known flow */
};

/* Per-CPU counters (nb_ct_stats), indexed by CT_NEW .. CT_UNTRACKED, plus: */
enum {
	CT_STAT_CREATE_FAILED = 6,	/* the map refused an update */
	CT_STAT_MAX = 8,
};

/* The key: a flow's tuple in its original direction. */
struct ct_tuple {
	union nb_addr saddr;
	union nb_addr daddr;
	__be16 sport;		/* network order; ICMP echo request: the identifier */
	__be16 dport;		/* network order; ICMP echo reply: the identifier */
	__u8 proto;		/* IPPROTO_* */
	__u8 family;		/* 4 or 6 */
	__u8 pad[2];
};

struct ct_entry {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 created;		/* bpf_ktime_get_ns of the first packet */
	__u64 expires;		/* bpf_ktime_get_ns after which the entry is stale */
	__u32 flags;		/* CT_F_* */
	__u32 rx_flags_seen;	/* TCP flags seen in the Rx direction */
	__u32 tx_flags_seen;	/* TCP flags seen in the Tx direction */
	__u32 user;		/* free for the program that creates the entry (a backend id, a mark) */
	__u32 rev_nat;		/* reverse-NAT index, 0 for none */
	__u8 state;		/* CT_STATE_* */
	__u8 dir;		/* CT_DIR_* of the first packet */
	__u16 pad;
};

/* Timeouts in nanoseconds; zero means the default. */
struct ct_config {
	__u64 tcp_established;
	__u64 tcp_syn;
	__u64 tcp_closing;
	__u64 nontcp;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NB_CT_MAX_ENTRIES);
	__type(key, struct ct_tuple);
	__type(value, struct ct_entry);
} nb_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_config);
} nb_ct_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nb_ct_stats SEC(".maps");

/* Options for an entry ct_process creates. */
struct ct_create_opts {
	__u32 rev_nat;
	__u32 user;
	__u32 flags;	/* CT_F_* to set from the start, e.g. CT_F_SERVICE */
};

static __always_inline void ct_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&nb_ct_stats, &stat);

	if (v)
		*v += 1; /* per-CPU: no atomic needed */
}

/* ct_tuple_reverse swaps source and destination. */
static __always_inline void ct_tuple_reverse(struct ct_tuple *t)
{
	union nb_addr a = t->saddr;
	__be16 port = t->sport;

	t->saddr = t->daddr;
	t->daddr = a;
	t->sport = t->dport;
	t->dport = port;
}

/* ct_is_icmp_error reports whether an ICMP/ICMPv6 type is an error that quotes a packet. */
static __always_inline int ct_is_icmp_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
	return proto == IPPROTO_ICMPV6 && type >= 1 && type <= 4;
}

/*
 * ct_tuple_from_pkt fills t from a parsed packet (for a packet quoted in an
 * ICMP error, parse it with NB_PARSE_QUOTED to get its ports). Returns 0, or
 * -1 when the packet has no trackable tuple: no IP header, a later fragment,
 * or a TCP/UDP/ICMP header that did not parse.
 */
static __always_inline int ct_tuple_from_pkt(const struct nb_pkt *p, struct ct_tuple *t)
{
	__u8 proto = p->l4_proto;

	__builtin_memset(t, 0, sizeof(*t));
	if (!(p->layers & NB_LAYER_L3) || p->frag_off)
		return -1;
	t->saddr = p->saddr;
	t->daddr = p->daddr;
	t->proto = proto;
	t->family = p->l3_proto == ETH_P_IPV6 ? 6 : 4;
	if (!(p->layers & NB_LAYER_L4))
		/* Other protocols are tracked by address; these need their header. */
		return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_ICMP ||
		       proto == IPPROTO_ICMPV6 ? -1 : 0;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		t->sport = p->sport;
		t->dport = p->dport;
	} else if (p->icmp_type == NB_ICMP_ECHO || p->icmp_type == ICMPV6_ECHO_REQUEST) {
		t->sport = p->icmp_id;
	} else if (p->icmp_type == NB_ICMP_ECHOREPLY || p->icmp_type == ICMPV6_ECHO_REPLY) {
		t->dport = p->icmp_id;
	}
	return 0;
}

/* ct_pkt_is_icmp_error reports whether p is an ICMP error, whose quoted packet ct_process wants. */
static __always_inline int ct_pkt_is_icmp_error(const struct nb_pkt *p)
{
	return (p->layers & NB_LAYER_L4) && ct_is_icmp_error(p->l4_proto, p->icmp_type);
}

/* ct_lookup finds t's entry as-is (*reply = 0) or reversed (*reply = 1). t is left reversed on a reply. */
static __always_inline struct ct_entry *ct_lookup(struct ct_tuple *t, int *reply)
{
	struct ct_entry *e = bpf_map_lookup_elem(&nb_ct, t);

	*reply = 0;
	if (e)
		return e;
	ct_tuple_reverse(t);
	e = bpf_map_lookup_elem(&nb_ct, t);
	if (e) {
		*reply = 1;
		return e;
	}
	ct_tuple_reverse(t);
	return NULL;
}

/* ct_timeout is the lifetime of a state. */
static __always_inline __u64 ct_timeout(__u8 proto, __u8 state)
{
	__u32 k = 0;
	struct ct_config *cfg = bpf_map_lookup_elem(&nb_ct_config, &k);
	__u64 t = 0;

	if (proto != IPPROTO_TCP) {
		if (cfg)
			t = cfg->nontcp;
		return t ? t : NB_CT_DEFAULT_NONTCP;
	}
	switch (state) {
	case CT_STATE_ESTABLISHED:
		if (cfg)
			t = cfg->tcp_established;
		return t ? t : NB_CT_DEFAULT_TCP_ESTABLISHED;
	case CT_STATE_CLOSING:
		if (cfg)
			t = cfg->tcp_closing;
		return t ? t : NB_CT_DEFAULT_TCP_CLOSING;
	}
	if (cfg)
		t = cfg->tcp_syn;
	return t ? t : NB_CT_DEFAULT_TCP_SYN;
}

/* ct_state derives the state from an entry's flags. */
static __always_inline __u8 ct_state(__u8 proto, __u32 flags)
{
	if (proto != IPPROTO_TCP)
		return (flags & CT_F_SEEN_REPLY) ? CT_STATE_ESTABLISHED : CT_STATE_NEW;
	if ((flags & (CT_F_RX_CLOSING | CT_F_TX_CLOSING)) == (CT_F_RX_CLOSING | CT_F_TX_CLOSING))
		return CT_STATE_CLOSING;
	if ((flags & (CT_F_SEEN_REPLY | CT_F_SEEN_NON_SYN)) == (CT_F_SEEN_REPLY | CT_F_SEEN_NON_SYN))
		return CT_STATE_ESTABLISHED;
	return CT_STATE_NEW;
}

/* ct_flags_for is what one packet adds to an entry's flags. */
static __always_inline __u32 ct_flags_for(__u8 proto, __u8 tcp_flags, int rx, int reply)
{
	__u32 add = reply ? CT_F_SEEN_REPLY : 0;

	if (proto != IPPROTO_TCP)
		return add;
	if (!(tcp_flags & 0x02)) /* SYN */
		add |= CT_F_SEEN_NON_SYN;
	if (tcp_flags & 0x04) /* RST closes both ways */
		add |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
	else if (tcp_flags & 0x01) /* FIN closes its direction */
		add |= rx ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
	return add;
}

/* ct_account adds one packet of len bytes to e. */
static __always_inline void ct_account(struct ct_entry *e, __u8 proto, __u8 tcp_flags, __u32 len, int reply, __u64 now)
{
	int rx = (e->dir == CT_DIR_IN) != reply;
	__u32 add = ct_flags_for(proto, tcp_flags, rx, reply);
	__u32 flags;
	__u8 state;

	/* Locked ORs only when they change something: on an established flow they rarely do. */
	if (rx) {
		__sync_fetch_and_add(&e->rx_packets, 1);
		__sync_fetch_and_add(&e->rx_bytes, len);
		if ((e->rx_flags_seen & tcp_flags) != tcp_flags)
			__sync_fetch_and_or(&e->rx_flags_seen, tcp_flags);
	} else {
		__sync_fetch_and_add(&e->tx_packets, 1);
		__sync_fetch_and_add(&e->tx_bytes, len);
		if ((e->tx_flags_seen & tcp_flags) != tcp_flags)
			__sync_fetch_and_or(&e->tx_flags_seen, tcp_flags);
	}
	flags = e->flags;
	if ((flags & add) != add)
		flags = __sync_fetch_and_or(&e->flags, add) | add;
	state = ct_state(proto, flags);
	if (e->state != state)
		e->state = state;
	e->expires = now + ct_timeout(proto, state);
}

/* ct_create adds an entry for t, whose first packet went dir and had len bytes. */
static __always_inline int ct_create(const struct ct_tuple *t, __u8 dir, __u8 tcp_flags, __u32 len,
				     const struct ct_create_opts *opts, __u64 now)
{
	struct ct_entry e = {};

	e.dir = dir;
	e.created = now;
	/* The first packet always travels the flow's own direction: Rx for IN, Tx for OUT. */
	e.flags = ct_flags_for(t->proto, tcp_flags, dir == CT_DIR_IN, 0);
	if (opts) {
		e.rev_nat = opts->rev_nat;
		e.user = opts->user;
		e.flags |= opts->flags;
	}
	if (dir == CT_DIR_IN) {
		e.rx_packets = 1;
		e.rx_bytes = len;
		e.rx_flags_seen = tcp_flags;
	} else {
		e.tx_packets = 1;
		e.tx_bytes = len;
		e.tx_flags_seen = tcp_flags;
	}
	e.state = ct_state(t->proto, e.flags);
	e.expires = now + ct_timeout(t->proto, e.state);
	if (bpf_map_update_elem(&nb_ct, t, &e, BPF_ANY)) {
		ct_count(CT_STAT_CREATE_FAILED);
		return -1;
	}
	return 0;
}

/*
 * ct_process tracks one parsed packet of len bytes that went dir (CT_DIR_*):
 * it finds the flow's entry and accounts the packet to it, or creates the entry
 * (with opts, which may be NULL). For an ICMP error (ct_pkt_is_icmp_error),
 * pass the packet it quotes, parsed with NB_PARSE_QUOTED at p->l4_off + 8, as
 * quoted; otherwise quoted may be NULL. Returns CT_NEW, CT_ESTABLISHED,
 * CT_REPLY, CT_RELATED or CT_UNTRACKED, and fills *tuple with the entry's key
 * (original direction) unless the packet was untracked. It never touches the
 * packet.
 */
static __always_inline int ct_process(const struct nb_pkt *p, const struct nb_pkt *quoted, __u32 len, __u8 dir,
				      const struct ct_create_opts *opts, struct ct_tuple *tuple)
{
	struct ct_entry *e;
	__u64 now;
	int reply, ret;

	if (ct_tuple_from_pkt(p, tuple)) {
		ct_count(CT_UNTRACKED);
		return CT_UNTRACKED;
	}

	if (ct_pkt_is_icmp_error(p)) {
		if (quoted && ct_tuple_from_pkt(quoted, tuple) == 0 && ct_lookup(tuple, &reply)) {
			if (reply)
				ct_tuple_reverse(tuple);
			ct_count(CT_RELATED);
			return CT_RELATED;
		}
		ct_count(CT_UNTRACKED);
		return CT_UNTRACKED;
	}

	now = bpf_ktime_get_ns();
	e = ct_lookup(tuple, &reply);
	if (e) {
		/* A new SYN on a closed connection's tuple starts it afresh. */
		if (!reply && e->state == CT_STATE_CLOSING && p->l4_proto == IPPROTO_TCP &&
		    (p->tcp_flags & 0x12) == 0x02)
			goto create;
		ct_account(e, p->l4_proto, p->tcp_flags, len, reply, now);
		if (reply) {
			ct_tuple_reverse(tuple);
			ret = CT_REPLY;
		} else {
			ret = CT_ESTABLISHED;
		}
		ct_count(ret);
		return ret;
	}
create:
	ct_create(tuple, dir, p->l4_proto == IPPROTO_TCP ? p->tcp_flags : 0, len, opts, now);
	ct_count(CT_NEW);
	return CT_NEW;
}

/*
 * ct_track_skb tracks a tc packet whose parse is p (from nb_parse_skb): it
 * parses the quoted packet of an ICMP error itself. len is the packet's
 * length (skb->len). See ct_process for the rest.
 */
static __always_inline int ct_track_skb(struct __sk_buff *skb, const struct nb_pkt *p, __u8 dir,
					const struct ct_create_opts *opts, struct ct_tuple *tuple)
{
	if (ct_pkt_is_icmp_error(p)) {
		struct nb_pkt quoted = {};

		nb_parse_ip_skb(skb, &quoted, p->l4_off + 8, NB_PARSE_QUOTED);
		return ct_process(p, &quoted, NB_READ_CTX(skb, len), dir, opts, tuple);
	}
	return ct_process(p, NULL, NB_READ_CTX(skb, len), dir, opts, tuple);
}

/* ct_track_xdp is ct_track_skb for XDP; len is the frame's length. */
static __always_inline int ct_track_xdp(struct xdp_md *ctx, const struct nb_pkt *p, __u8 dir,
					const struct ct_create_opts *opts, struct ct_tuple *tuple)
{
	__u32 len = NB_READ_CTX(ctx, data_end) - NB_READ_CTX(ctx, data);

	if (ct_pkt_is_icmp_error(p)) {
		struct nb_pkt quoted = {};

		nb_parse_ip_xdp(ctx, &quoted, p->l4_off + 8, NB_PARSE_QUOTED);
		return ct_process(p, &quoted, len, dir, opts, tuple);
	}
	return ct_process(p, NULL, len, dir, opts, tuple);
}

#endif /* NB_CONNTRACK_H */
