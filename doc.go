// Package netblocks is a library of container-networking building blocks: the
// parts Cilium and Calico are built from, each an independent package another
// Go project can import on its own.
//
// This root package holds no code; it is the map of the blocks.
//
// # Blocks
//
//   - conntrack: connection tracking in a BPF LRU map, with TCP state,
//     timeouts, dump, GC and stats, and a C header other programs include.
//   - lbmap: service load balancing in BPF (ClusterIP, NodePort, LoadBalancer,
//     ExternalIP), random and Maglev backend selection, session affinity,
//     reverse NAT through conntrack.
//   - xdpfilter: an XDP prefilter that drops, or only admits, traffic by CIDR.
//   - vxlan: the overlay between nodes, and host-L3 routing.
//   - wireguard: node-to-node encryption with the kernel module or an embedded
//     wireguard-go.
//   - l2announce: ARP/NDP answers for service VIPs on the node holding a lease.
//   - ipam: node pod CIDRs, pod IPs and LB IP pools, in bbolt or etcd.
//
// The blocks land one at a time; a block listed here may not exist yet in the
// version you have. See the README for which have landed.
//
// # How they compose
//
// Blocks compose through shared BPF maps and ordered attachment, not through a
// framework. A block that needs another block's state takes it as a value
// (lbmap takes a *conntrack.Table and its program uses that map). Several
// programs on one hook are ordered with TCX, or combined in one program that
// includes several blocks' C headers. Long-running parts (GC loops,
// responders, leader electors) are Run(ctx) methods the caller owns; nothing
// runs at import time and no package keeps global state.
//
// # The BPF side
//
// Every BPF program is written in C next to the Go package that owns it, in
// <package>/bpf/, compiled by bpf2go with a pinned clang (see the README), and
// the compiled objects are committed, so users need no compiler. The programs
// share one set of bounds-checked packet parsing and checksum helpers
// (internal/bpf/include): Ethernet with 802.1Q/802.1ad, IPv4 with options and
// fragments, IPv6 with extension headers, TCP, UDP, ICMP and ICMPv6, and
// incremental checksum updates for address and port rewrites in XDP and tc.
//
// # Kernel requirements
//
// Linux 6.6 or later with BTF (tc programs attach with TCX; XDP and tc links
// need bpf_link support), run as root or with CAP_BPF, CAP_NET_ADMIN and
// CAP_SYS_ADMIN. Where a block needs a kernel feature that is missing, its
// error names the feature.
package netblocks
