//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket-level load balancing (Cilium's "socket LB", host-reachable
 * services): cgroup v2 sock_addr programs that translate a service frontend to
 * a backend in the connect(2) and sendmsg(2) system calls, before the kernel
 * routes anything, so the packets leave with the backend's address and need
 * no per-packet NAT.
 *
 *  - connect4/6: TCP and UDP connects to a frontend go to a backend instead.
 *  - sendmsg4/6: likewise for each datagram of an unconnected UDP socket; the
 *    translation is remembered in nb_lb_sock_revnat.
 *  - recvmsg4/6: a datagram from a backend that the socket's translation
 *    remembers is reported as coming from the frontend, so the application
 *    sees replies from the address it sent to.
 *
 * The service maps are lbmap's (lb.h); nb_lb_sock_revnat is this program's.
 *
 * Choices, see lbmap/socklb.go for the Go side:
 *  - No usable backend: connect and sendmsg fail with ECONNREFUSED (set with
 *    bpf_set_retval, Linux 5.18+), as a kube-proxy REJECT rule does, and
 *    LB_STAT_DROP_NO_BACKEND counts it. Without bpf_set_retval the caller
 *    would see EPERM, which reads as a permission problem.
 *  - Source ranges: the client's address is not known at connect time (the
 *    kernel picks it when routing, after this program). A service with source
 *    ranges is left untranslated, so its packets go out to the frontend
 *    address where the tc datapath, which sees the client's address, enforces
 *    the ranges: socket LB never widens who may reach a service.
 *  - Backend choice: TCP connects choose at random (or by Maglev on a hash of
 *    the socket cookie); a UDP socket hashes its cookie instead of drawing a
 *    random number, so all its datagrams to one service go to one backend (a
 *    request and its retransmission meet the same server). The 5-tuple is not
 *    known yet, so Maglev gives no cross-node consistency here.
 *  - Session affinity: the client is the socket's network namespace (its
 *    netns cookie, stored with family LB_SOCK_AFFINITY_FAMILY so it never
 *    collides with the tc datapath's entries keyed by client address).
 *  - IPv4-mapped IPv6 addresses (dual-stack sockets using IPv4) are looked
 *    up as IPv4 services by connect6 and recvmsg6. A datagram sent to one
 *    never reaches sendmsg6: udpv6_sendmsg hands it to udp_sendmsg, which
 *    runs sendmsg4 with the plain IPv4 address.
 *
 * Verifier rules for struct bpf_sock_addr: user_ip4, each user_ip6 word and
 * user_port are read and written as whole u32s; user_port holds the port in
 * network order in its low 16 bits.
 */
#include <linux/errno.h>
#include "lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Return values of sock_addr programs. */
#define SYS_REJECT 0
#define SYS_PROCEED 1

/* The errno connect and sendmsg fail with when a service has no usable backend. */
#define LB_SOCK_NO_BACKEND_ERRNO ECONNREFUSED

/* Family of socket-LB affinity keys (client = netns cookie); never 4 or 6. */
#define LB_SOCK_AFFINITY_FAMILY 0

#ifndef LB_SOCK_REVNAT_MAX
#define LB_SOCK_REVNAT_MAX 65536
#endif

/* A backend a socket sent to: the key of nb_lb_sock_revnat. */
struct lb_sock_revnat_key {
	__u64 cookie;		/* bpf_get_socket_cookie */
	union nb_addr addr;	/* backend address (IPv4 in the first word) */
	__be16 port;		/* backend port, network order */
	__u8 family;		/* 4 or 6 */
	__u8 pad[5];
};

/* Socket + backend -> the frontend the application sent to (struct lb_revnat). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_SOCK_REVNAT_MAX);
	__type(key, struct lb_sock_revnat_key);
	__type(value, struct lb_revnat);
} nb_lb_sock_revnat SEC(".maps");

/* Outcomes of sock_xlate_fwd. */
enum {
	SOCK_PASS = 0,		/* not a service, or one left to the tc datapath: unchanged */
	SOCK_XLATED = 1,	/* the destination now is a backend */
	SOCK_NO_BACKEND = 2,	/* a service without a usable backend */
	SOCK_NO_MEM = 3,	/* the translation could not be remembered */
};

/* sock_u64_addr spreads v over the first two words of an address-shaped key. */
static __always_inline void sock_u64_addr(union nb_addr *a, __u64 v)
{
	a->v6[0] = (__u32)v;
	a->v6[1] = (__u32)(v >> 32);
}

/*
 * sock_select picks a backend like lb_select, except that a UDP socket
 * (sticky) of a random service without affinity takes the slot its cookie
 * hashes to, so its datagrams keep to one backend.
 */
static __always_inline __u32 sock_select(const struct lb_svc_info *svc, const union nb_addr *client, __u32 hash, int sticky,
					 struct lb_backend **b)
{
	__u32 id;

	if (!sticky || svc->affinity_timeout || svc->maglev_size)
		return lb_select(svc, client, LB_SOCK_AFFINITY_FAMILY, hash, b);
	if (svc->count == 0)
		return 0;
	id = lb_slot_backend(svc->set_id, hash % svc->count);
	if (!id)
		return 0;
	*b = bpf_map_lookup_elem(&nb_lb_backends, &id);
	return *b ? id : 0;
}

/* sock_remember records that the socket's datagrams from backend b come from the frontend. */
static __always_inline int sock_remember(__u64 cookie, const struct lb_backend *b, const union nb_addr *faddr,
					 __be16 fport, __u8 family)
{
	struct lb_sock_revnat_key k = {};
	struct lb_revnat v = {}, *old;

	k.cookie = cookie;
	k.addr = b->addr;
	k.port = b->port;
	k.family = family;
	v.addr = *faddr;
	v.port = fport;
	v.family = family;
	old = bpf_map_lookup_elem(&nb_lb_sock_revnat, &k);
	if (old && !__builtin_memcmp(old, &v, sizeof(v)))
		return 0; /* already known: spare the write on every datagram */
	return bpf_map_update_elem(&nb_lb_sock_revnat, &k, &v, BPF_ANY);
}

/*
 * sock_xlate_fwd translates a destination (*addr, *port) of family 4 or 6 to a
 * backend if it is a service frontend. remember records the translation for
 * recvmsg (UDP). Returns SOCK_*.
 */
static __always_inline int sock_xlate_fwd(struct bpf_sock_addr *ctx, union nb_addr *addr, __be16 *port, __u8 family,
					  __u8 proto, int remember)
{
	struct lb_backend *b = NULL;
	union nb_addr client = {}, sock = {};
	struct lb_svc_info svc;
	__u64 cookie;
	__u32 id;

	if (!lb_lookup_service(addr, *port, proto, family, &svc))
		return SOCK_PASS;
	if (svc.flags & LB_F_SOURCE_RANGES)
		return SOCK_PASS; /* the client's address is unknown here: the tc datapath checks the ranges */
	cookie = bpf_get_socket_cookie(ctx);
	sock_u64_addr(&sock, cookie);
	sock_u64_addr(&client, bpf_get_netns_cookie(ctx));
	id = sock_select(&svc, &client, lb_hash(&sock, addr, 0, *port, proto), proto == IPPROTO_UDP, &b);
	if (!id || !b) {
		lb_count(LB_STAT_DROP_NO_BACKEND);
		return SOCK_NO_BACKEND;
	}
	if (b->family != family)
		return SOCK_PASS; /* lbmap never mixes families; be safe */
	if (remember && sock_remember(cookie, b, addr, *port, family))
		return SOCK_NO_MEM;
	*addr = b->addr;
	*port = b->port;
	lb_count(LB_STAT_SOCK_XLATE);
	return SOCK_XLATED;
}

/* sock_verdict turns an outcome of sock_xlate_fwd into the program's return value. */
static __always_inline int sock_verdict(int res)
{
	switch (res) {
	case SOCK_NO_BACKEND:
		bpf_set_retval(-LB_SOCK_NO_BACKEND_ERRNO);
		return SYS_REJECT;
	case SOCK_NO_MEM:
		bpf_set_retval(-ENOMEM);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

/* sock_proto returns the socket's protocol if socket LB handles it (TCP, UDP), else 0. */
static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;

	return proto == IPPROTO_TCP || proto == IPPROTO_UDP ? proto : 0;
}

/* sock4_fwd translates ctx's IPv4 destination; remember as for sock_xlate_fwd. */
static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx, __u8 proto, int remember)
{
	union nb_addr addr = {};
	__be16 port = (__be16)ctx->user_port;
	int res;

	addr.v4 = ctx->user_ip4;
	res = sock_xlate_fwd(ctx, &addr, &port, 4, proto, remember);
	if (res == SOCK_XLATED) {
		ctx->user_ip4 = addr.v4;
		ctx->user_port = port;
	}
	return sock_verdict(res);
}

/* sock6_is_v4mapped reports whether a is ::ffff:a.b.c.d. */
static __always_inline int sock6_is_v4mapped(const union nb_addr *a)
{
	return a->v6[0] == 0 && a->v6[1] == 0 && a->v6[2] == bpf_htonl(0xffff);
}

/* sock6_addr reads ctx's IPv6 address (user_ip6) word by word. */
static __always_inline void sock6_addr(struct bpf_sock_addr *ctx, union nb_addr *a)
{
	a->v6[0] = ctx->user_ip6[0];
	a->v6[1] = ctx->user_ip6[1];
	a->v6[2] = ctx->user_ip6[2];
	a->v6[3] = ctx->user_ip6[3];
}

/* sock6_set_addr writes a to ctx's IPv6 address word by word. */
static __always_inline void sock6_set_addr(struct bpf_sock_addr *ctx, const union nb_addr *a)
{
	ctx->user_ip6[0] = a->v6[0];
	ctx->user_ip6[1] = a->v6[1];
	ctx->user_ip6[2] = a->v6[2];
	ctx->user_ip6[3] = a->v6[3];
}

/*
 * sock6_fwd translates ctx's IPv6 destination, an IPv4-mapped one as an IPv4
 * service (keeping it mapped); remember as for sock_xlate_fwd.
 */
static __always_inline int sock6_fwd(struct bpf_sock_addr *ctx, __u8 proto, int remember)
{
	union nb_addr addr = {}, v4 = {};
	__be16 port = (__be16)ctx->user_port;
	int res;

	sock6_addr(ctx, &addr);
	if (sock6_is_v4mapped(&addr)) {
		v4.v4 = addr.v6[3];
		res = sock_xlate_fwd(ctx, &v4, &port, 4, proto, remember);
		if (res == SOCK_XLATED) {
			ctx->user_ip6[3] = v4.v4;
			ctx->user_port = port;
		}
		return sock_verdict(res);
	}
	res = sock_xlate_fwd(ctx, &addr, &port, 6, proto, remember);
	if (res == SOCK_XLATED) {
		sock6_set_addr(ctx, &addr);
		ctx->user_port = port;
	}
	return sock_verdict(res);
}

/*
 * sock_xlate_rev looks up a datagram's source (*addr, *port, family) in the
 * socket's remembered translations and replaces it by the frontend. Returns 1
 * if it did. An entry whose service is gone is deleted and not used.
 */
static __always_inline int sock_xlate_rev(struct bpf_sock_addr *ctx, union nb_addr *addr, __be16 *port, __u8 family)
{
	struct lb_sock_revnat_key k = {};
	struct lb_svc_info svc;
	struct lb_revnat *rn;
	__u8 proto = sock_proto(ctx);

	if (proto != IPPROTO_UDP)
		return 0;
	k.cookie = bpf_get_socket_cookie(ctx);
	k.addr = *addr;
	k.port = *port;
	k.family = family;
	rn = bpf_map_lookup_elem(&nb_lb_sock_revnat, &k);
	if (!rn)
		return 0;
	if (!lb_lookup_service(&rn->addr, rn->port, proto, family, &svc)) {
		bpf_map_delete_elem(&nb_lb_sock_revnat, &k);
		return 0;
	}
	*addr = rn->addr;
	*port = rn->port;
	return 1;
}

SEC("cgroup/connect4")
int nb_sock4_connect(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);

	if (!proto)
		return SYS_PROCEED;
	/* A connected UDP socket's replies are reported through recvmsg too. */
	return sock4_fwd(ctx, proto, proto == IPPROTO_UDP);
}

SEC("cgroup/connect6")
int nb_sock6_connect(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);

	if (!proto)
		return SYS_PROCEED;
	return sock6_fwd(ctx, proto, proto == IPPROTO_UDP);
}

SEC("cgroup/sendmsg4")
int nb_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	if (sock_proto(ctx) != IPPROTO_UDP)
		return SYS_PROCEED;
	return sock4_fwd(ctx, IPPROTO_UDP, 1);
}

SEC("cgroup/sendmsg6")
int nb_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	if (sock_proto(ctx) != IPPROTO_UDP)
		return SYS_PROCEED;
	return sock6_fwd(ctx, IPPROTO_UDP, 1);
}

SEC("cgroup/recvmsg4")
int nb_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	union nb_addr addr = {};
	__be16 port = (__be16)ctx->user_port;

	addr.v4 = ctx->user_ip4;
	if (sock_xlate_rev(ctx, &addr, &port, 4)) {
		ctx->user_ip4 = addr.v4;
		ctx->user_port = port;
	}
	return SYS_PROCEED; /* recvmsg programs must return 1 */
}

SEC("cgroup/recvmsg6")
int nb_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	union nb_addr addr = {}, v4 = {};
	__be16 port = (__be16)ctx->user_port;

	sock6_addr(ctx, &addr);
	if (sock6_is_v4mapped(&addr)) {
		v4.v4 = addr.v6[3];
		if (sock_xlate_rev(ctx, &v4, &port, 4)) {
			ctx->user_ip6[3] = v4.v4;
			ctx->user_port = port;
		}
		return SYS_PROCEED;
	}
	if (sock_xlate_rev(ctx, &addr, &port, 6)) {
		sock6_set_addr(ctx, &addr);
		ctx->user_port = port;
	}
	return SYS_PROCEED;
}
