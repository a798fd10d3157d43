/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * nb_common.h: what every netblocks BPF program includes first.
 *
 * Kernel UAPI headers come from the system (Debian's linux-libc-dev) and libbpf's
 * helpers from Debian's libbpf-dev; nothing third-party is vendored here.
 */
#ifndef NB_COMMON_H
#define NB_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define nb_likely(x) __builtin_expect(!!(x), 1)
#define nb_unlikely(x) __builtin_expect(!!(x), 0)

/* Ethertypes not in every linux/if_ether.h. */
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/*
 * ICMP (v4) echo types. linux/icmp.h is not included: it pulls in libc
 * through linux/if.h. ICMP and ICMPv6 share the first 8 bytes' layout.
 */
#define NB_ICMP_ECHOREPLY 0
#define NB_ICMP_ECHO 8

struct nb_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;	/* echo identifier */
	__be16 seq;	/* echo sequence */
};

/* Mobility header: an upper-layer protocol as far as the parser is concerned. */
#ifndef IPPROTO_MH
#define IPPROTO_MH 135
#endif

/*
 * NB_READ_CTX loads a 32-bit context field, as a 64-bit value, with one load straight from the
 * context pointer. Clang may otherwise compute ctx+off into a register and load
 * through it, which the verifier rejects for __sk_buff after helpers such as
 * bpf_skb_pull_data have run.
 */
#define NB_READ_CTX(ctx, field)                                                \
	({                                                                     \
		__u64 __v;                                                     \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                          \
			     : "=r"(__v)                                       \
			     : "r"(ctx), "i"(__builtin_offsetof(typeof(*(ctx)), field))); \
		__v;                                                           \
	})

#endif /* NB_COMMON_H */
