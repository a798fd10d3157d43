/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb.h: service load balancing maps and backend selection, shared by the tc
 * datapath (lb.c) and the socket-level programs (sock.c). The Go package
 * github.com/netblocks/netblocks/lbmap owns the maps: this header only reads
 * them (and writes affinity).
 *
 * A service entry (nb_lb_svc) names a backend set by id; the set's slots
 * (nb_lb_slots: {set, slot} -> backend id) are written in full before the
 * service entry switches to it, and a replaced set, a removed backend and a
 * freed rev-NAT index are deleted only after a grace period, so a packet never
 * sees a half-written set or a freed backend.
 */
#ifndef NB_LB_H
#define NB_LB_H

#include "nb_parse.h"

/* Service types (struct lb_svc_info.type). */
enum {
	LB_TYPE_CLUSTER_IP = 0,
	LB_TYPE_NODE_PORT = 1,
	LB_TYPE_LOAD_BALANCER = 2,
	LB_TYPE_EXTERNAL_IP = 3,
};

/* Key scopes: traffic from inside the cluster, or from outside (for Local traffic policy). */
enum {
	LB_SCOPE_INTERNAL = 0,
	LB_SCOPE_EXTERNAL = 1,
};

/* Service flags (struct lb_svc_info.flags). */
enum {
	LB_F_SOURCE_RANGES = 1 << 0,	/* only clients in nb_lb_src_range may use it */
	LB_F_LOCAL = 1 << 1,		/* traffic policy Local */
};

/* Per-CPU counters (nb_lb_stats). */
enum {
	LB_STAT_DNAT = 0,		/* packets translated to a backend */
	LB_STAT_REVNAT = 1,		/* replies translated back to the frontend */
	LB_STAT_REVNAT_ICMP = 2,	/* ICMP errors translated back */
	LB_STAT_DROP_NO_BACKEND = 3,	/* packets to a service with no usable backend */
	LB_STAT_DROP_SOURCE_RANGE = 4,	/* packets from a client outside the service's source ranges */
	LB_STAT_SOCK_XLATE = 5,		/* socket connects/sends translated */
	LB_STAT_RESELECT = 6,		/* connections whose backend went away, moved to another */
	LB_STAT_SNAT = 7,		/* uplink: packets to a remote backend SNATed to the node */
	LB_STAT_REVSNAT = 8,		/* uplink: replies of SNATed connections translated back */
	LB_STAT_DROP_NAT_EXHAUSTED = 9,	/* uplink: new connections without a free NAT port, dropped */
	LB_STAT_HAIRPIN = 10,		/* packets of a client reaching itself, sent back into its interface */
	LB_STAT_XDP_FWD = 11,		/* uplink XDP: packets to a remote backend translated and sent back out (XDP_TX) */
	LB_STAT_XDP_REV = 12,		/* uplink XDP: replies of SNATed connections translated and sent back out */
	LB_STAT_MAX = 16,
};

struct lb_svc_key {
	union nb_addr addr;	/* frontend address */
	__be16 port;		/* frontend port, network order */
	__u8 proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;		/* 4 or 6 */
	__u8 scope;		/* LB_SCOPE_* */
	__u8 pad[3];
};

/* What a service entry says; programs work on a copy (lb_lookup_service). */
struct lb_svc_info {
	__u32 set_id;		/* backend set in nb_lb_slots */
	__u32 count;		/* slots of the set (random); 0: no usable backend */
	__u32 maglev_size;	/* 0: random selection; else Maglev, with this many slots */
	__u32 affinity_timeout;	/* seconds a client keeps its backend; 0: no affinity */
	__u32 rev_nat;		/* rev-NAT index */
	__u8 type;		/* LB_TYPE_* */
	__u8 flags;		/* LB_F_* */
	__u16 pad;
};

/*
 * A service entry. A hash map update normally swaps in a new element and
 * recycles the old one at once, so a packet that looked the service up just
 * before could read another service's entry. So the Go side updates existing
 * entries in place under the lock (BPF_F_LOCK), readers copy the entry out
 * under the lock, and the entry repeats its own key: a reader whose element
 * was deleted and reused for another service sees a key that is not the one it
 * looked up.
 */
struct lb_svc {
	struct bpf_spin_lock lock;
	struct lb_svc_info info;
	struct lb_svc_key key;
};

struct lb_slot_key {
	__u32 set_id;
	__u32 slot;
};

/* Set in struct lb_backend.state for a backend on this node. */
#define LB_BACKEND_F_LOCAL 0x80

struct lb_backend {
	union nb_addr addr;
	__be16 port;		/* network order */
	__u8 family;		/* 4 or 6 */
	__u8 state;		/* informational (the Go side puts only usable backends in sets), | LB_BACKEND_F_LOCAL */
};

struct lb_revnat {
	union nb_addr addr;	/* the frontend replies appear to come from */
	__be16 port;
	__u8 family;
	__u8 pad;
};

struct lb_affinity_key {
	union nb_addr client;
	__u32 rev_nat;
	__u8 family;
	__u8 pad[3];
};

struct lb_affinity {
	__u64 last_used;	/* bpf_ktime_get_ns */
	__u32 backend_id;
	__u32 pad;
};

/* LPM key: rev_nat, family and pad (64 bits), then the client prefix. */
struct lb_src_range_key {
	__u32 prefixlen;
	__be32 rev_nat;
	__u8 family;
	__u8 pad[3];
	union nb_addr addr;
};

/*
 * NAT entries of the uplink datapath (nodeport.c), two per SNATed connection,
 * both keyed by a struct lb_nat_key (a conntrack tuple): the forward one by the connection's tuple
 * after DNAT (client -> backend, the key of its conntrack entry), holding the
 * node address and port it is SNATed to; the reverse one by the replies'
 * tuple (backend -> node address and NAT port), holding the client's address
 * and port and the rev-NAT index. Reverse entries are inserted with
 * BPF_NOEXIST, so two connections never share a NAT port; the Go side deletes
 * both once the conntrack entry is gone.
 */
enum {
	LB_NAT_F_REVERSE = 1 << 0,
};

/* The layout of conntrack.h's struct ct_tuple. */
struct lb_nat_key {
	union nb_addr saddr;
	union nb_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct lb_nat {
	union nb_addr addr;	/* forward: the SNAT address; reverse: the client's */
	__be16 port;		/* forward: the NAT port; reverse: the client's port */
	__u8 flags;		/* LB_NAT_F_* */
	__u8 pad;
	__u32 rev_nat;		/* reverse: the service's rev-NAT index */
	__u64 created;		/* bpf_ktime_get_ns */
};

#ifndef LB_MAX_SERVICES
#define LB_MAX_SERVICES 65536
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_svc_key);
	__type(value, struct lb_svc);
} nb_lb_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_slot_key);
	__type(value, __u32);
} nb_lb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct lb_backend);
} nb_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct lb_revnat);
} nb_lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
} nb_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_src_range_key);
	__type(value, __u8);
} nb_lb_src_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_nat_key);
	__type(value, struct lb_nat);
} nb_lb_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nb_lb_stats SEC(".maps");

static __always_inline void lb_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&nb_lb_stats, &stat);

	if (v)
		*v += 1;
}

/*
 * lb_lookup_service_scope finds the service of a destination, in scope
 * (LB_SCOPE_*), and copies what its entry says into *info. Returns 1 if found,
 * 0 if not (or if the entry was replaced by another service's while it was
 * read).
 */
static __always_inline int lb_lookup_service_scope(const union nb_addr *addr, __be16 port, __u8 proto, __u8 family,
						   __u8 scope, struct lb_svc_info *info)
{
	struct lb_svc_key k = {}, seen;
	struct lb_svc *v;

	k.addr = *addr;
	k.port = port;
	k.proto = proto;
	k.family = family;
	k.scope = scope;
	v = bpf_map_lookup_elem(&nb_lb_svc, &k);
	if (!v)
		return 0;
	bpf_spin_lock(&v->lock);
	*info = v->info;
	seen = v->key;
	bpf_spin_unlock(&v->lock);
	return !__builtin_memcmp(&seen, &k, sizeof(k));
}

/* lb_lookup_service is lb_lookup_service_scope in the internal scope. */
static __always_inline int lb_lookup_service(const union nb_addr *addr, __be16 port, __u8 proto, __u8 family,
					     struct lb_svc_info *info)
{
	return lb_lookup_service_scope(addr, port, proto, family, LB_SCOPE_INTERNAL, info);
}

/* lb_source_allowed reports whether client may use svc (always, without source ranges). */
static __always_inline int lb_source_allowed(const struct lb_svc_info *svc, const union nb_addr *client, __u8 family)
{
	struct lb_src_range_key k = {};

	if (!(svc->flags & LB_F_SOURCE_RANGES))
		return 1;
	k.prefixlen = 64 + (family == 6 ? 128 : 32);
	k.rev_nat = bpf_htonl(svc->rev_nat);
	k.family = family;
	k.addr = *client;
	return bpf_map_lookup_elem(&nb_lb_src_range, &k) != NULL;
}

/* lb_hash mixes a flow's tuple into 32 bits, the same on every node (Maglev needs that). */
static __always_inline __u32 lb_hash(const union nb_addr *saddr, const union nb_addr *daddr, __be16 sport, __be16 dport,
				     __u8 proto)
{
	__u64 h = 0x9e3779b97f4a7c15ULL ^ proto;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		h ^= saddr->v6[i];
		h *= 0xff51afd7ed558ccdULL;
		h ^= (__u64)daddr->v6[i] << 32;
		h *= 0xc4ceb9fe1a85ec53ULL;
		h ^= h >> 29;
	}
	h ^= ((__u64)sport << 16) | dport;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 32;
	return (__u32)h;
}

/* lb_slot_backend returns the backend id in a set's slot, or 0. */
static __always_inline __u32 lb_slot_backend(__u32 set_id, __u32 slot)
{
	struct lb_slot_key k = {.set_id = set_id, .slot = slot};
	__u32 *id = bpf_map_lookup_elem(&nb_lb_slots, &k);

	return id ? *id : 0;
}

/*
 * lb_select picks a backend for a new connection of client to svc: the
 * client's affinity backend if it is still in use, else by the service's
 * algorithm. Returns the backend id and fills *b, or returns 0 when the service
 * has no usable backend.
 */
static __always_inline __u32 lb_select(const struct lb_svc_info *svc, const union nb_addr *client, __u8 family, __u32 hash,
				       struct lb_backend **b)
{
	struct lb_affinity_key ak = {};
	struct lb_affinity *aff = NULL, na = {};
	__u64 now = 0;
	__u32 id = 0;

	if (svc->count == 0)
		return 0;
	if (svc->affinity_timeout) {
		ak.client = *client;
		ak.rev_nat = svc->rev_nat;
		ak.family = family;
		now = bpf_ktime_get_ns();
		aff = bpf_map_lookup_elem(&nb_lb_affinity, &ak);
		if (aff && now - aff->last_used <= (__u64)svc->affinity_timeout * 1000000000ULL) {
			id = aff->backend_id;
			*b = bpf_map_lookup_elem(&nb_lb_backends, &id);
			if (!*b)
				id = 0; /* the backend went away: choose again */
		}
	}
	if (!id) {
		__u32 slot = svc->maglev_size ? hash % svc->maglev_size : bpf_get_prandom_u32() % svc->count;

		id = lb_slot_backend(svc->set_id, slot);
		if (!id)
			return 0;
		*b = bpf_map_lookup_elem(&nb_lb_backends, &id);
		if (!*b)
			return 0;
	}
	if (svc->affinity_timeout) {
		na.backend_id = id;
		na.last_used = now;
		bpf_map_update_elem(&nb_lb_affinity, &ak, &na, BPF_ANY);
	}
	return id;
}

#endif /* NB_LB_H */
