// Package vxlan connects the pod networks of nodes: an overlay through a
// kernel VXLAN device (Cilium's tunnel mode, Calico's VXLAN mode, flannel's
// vxlan backend), host-L3 native routing over the node network, or Calico's
// cross-subnet mix of the two. [New] sets up a node's side, an [Overlay];
// [Overlay.Sync] makes the kernel reach exactly the set of [Peer] nodes it is
// given.
//
// # Modes
//
// In [Tunnel] mode every packet to another node's pods is encapsulated in
// VXLAN (UDP) and sent to that node's underlay address. In [Native] mode
// there is no device: each peer's pod CIDRs are routed via the peer's node
// address, which must be on this node's underlay subnet. [CrossSubnet] mode
// routes directly to peers on this node's subnet and encapsulates to all
// others, so traffic crosses routers between subnets encapsulated and stays
// plain where it can; in this mode a pod CIDR of the other family than the
// underlay (IPv6 pods over an IPv4 underlay) is always encapsulated, while
// Native mode refuses it.
//
// # Device
//
// The VXLAN device ([Config.Name], default "nb_vxlan") has the VNI (default
// 1) and UDP port (default 8472, the Linux and Cilium port; 4789 is the
// IANA one) of [Config], [Config.LocalAddr] as its source address, the
// underlay device as its lower device, and learning off: the kernel learns
// nothing from received packets, every FDB entry comes from Sync. A device
// that exists with the same VNI, port, local address, underlay and flags is
// adopted, and not touched at all when its MTU, MAC, addresses and offload
// setting also match, so an agent restart does not disturb traffic; one
// that differs in those fixed settings is deleted and created again.
//
// Each node has a VTEP address per family: the network address of its
// lowest pod CIDR of that family (10.244.1.0 for 10.244.1.0/24), as flannel
// does; the address is never a pod's. The device holds the node's own VTEP
// addresses as /32 and /128, so that traffic the node itself sends into the
// overlay has a source its peers route back.
//
// The device's MAC, the VTEP MAC, defaults to [DeriveMAC] of the node's
// underlay address: it is the same after every restart and every re-created
// device (a MAC that changes on reboot leaves peers' entries stale), and
// peers compute it themselves when [Peer.VTEPMAC] is unset.
//
// # Peers
//
// [Overlay.Sync] takes the full set of peers. For a peer reached through the
// tunnel it installs, in flannel's scheme, a route to each pod CIDR via the
// peer's VTEP address on the device with the onlink flag, a permanent
// neighbour entry from that VTEP address to the peer's VTEP MAC, and a
// permanent FDB entry from that MAC to the peer's node address. A peer
// reached directly gets a route to each pod CIDR via its node address on
// the underlay device, and nothing else.
//
// Routes carry a protocol number of their own ([Config.RouteProtocol],
// default 78: `ip route show proto 78`), so Sync recognises and removes only
// its own; neighbour and FDB entries live on the overlay's own device. A
// peer that leaves the set leaves no route, neighbour or FDB entry behind
// (flannel's stale FDB entries), and a Sync with an unchanged set changes
// nothing in the kernel: [Changes] counts what each Sync did.
//
// # MTU
//
// VXLAN adds 50 bytes to a packet over an IPv4 underlay (outer IPv4 20,
// UDP 8, VXLAN 8, inner Ethernet 14) and 70 over IPv6. The device's MTU
// defaults to the underlay's less that, and may be set lower, never higher.
// Pods must use the same MTU ([Overlay.MTU]): a pod interface with the
// underlay's MTU sends packets the tunnel cannot carry, and TCP over it
// stalls wherever path MTU discovery is blocked. In Native mode
// [Overlay.MTU] is the underlay's.
//
// # Checksum offload
//
// The "63 second delays" of flannel issue #1279, Calico issue #3145 and
// Kubernetes issue #88986, reported mostly from VMs (vmxnet3): when NAT
// rewrote the outer UDP header of VXLAN packets (kube-proxy's and the
// CNI's masquerade rules both matching them, SNAT with --random-fully), the
// kernel left a wrong UDP checksum in packets whose checksum the transmit
// offload of the VXLAN device was to complete. The receiving node dropped
// them, and a new TCP connection waited for its SYN to be retransmitted
// after 1, 2, 4, 8, 16 and 32 seconds: 63 s. Kubernetes stopped
// masquerading those packets twice (kubernetes PR #92035), but NAT of VXLAN
// traffic, a node behind NAT for instance, still corrupts checksums on some
// kernels (flannel's troubleshooting guide). The workaround flannel and
// Calico apply is to turn transmit checksum offload off on the VXLAN device
// (`ethtool -K flannel.1 tx-checksum-ip-generic off`), so that the kernel
// computes the checksums in software before encapsulation and NAT.
//
// [Config.DisableTxChecksum] does that, with the SIOCETHTOOL ioctl
// ETHTOOL_STXCSUM on a socket in the overlay's namespace. It is off by
// default because it is costly: TSO goes with checksum offload, and a TCP
// stream through the tunnel runs at about a fifth of its speed
// (BenchmarkPodToPodTCP). Set it where VXLAN packets are NATed between the
// nodes. New enforces the setting both ways.
//
// # Lifetime
//
// All kernel work goes through a netlink handle and a socket opened, when
// New runs, in the namespace of [Config.NetNS] (default the caller's); no
// thread switches namespace after that, so an Overlay for another namespace
// is safe to use from any goroutine. Netlink dumps interrupted by a
// concurrent change are retried.
//
// [Overlay.Close] releases the handle and leaves everything in place: the
// device, routes and entries keep forwarding while no process runs, and a
// restarted process's New with the same Config adopts them, then its Sync
// changes only what changed meanwhile. [Overlay.Delete] removes the routes
// and the device (its neighbour and FDB entries go with it), then closes.
//
// # Errors
//
// Bad configuration is refused by New before it touches anything, and bad
// peers by Sync before it changes anything; the error names the problem: a
// VNI out of range, a multicast or zero MAC, a pod CIDR with host bits set,
// a peer with this node's address, two peers with one address or VTEP MAC,
// overlapping pod CIDRs (between peers, or with this node's), a node address
// of the wrong family, and in Native mode a peer off this node's subnet. An
// existing route to a peer's pod CIDR that is not the overlay's is an error
// wrapping unix.EEXIST: Sync never takes over someone else's route.
//
// When a kernel operation fails part-way, New and Sync undo the changes they
// made before returning the error (a device New replaced stays deleted).
// Methods of a closed Overlay return errors wrapping os.ErrClosed.
//
// # Kernel requirements
//
// VXLAN (CONFIG_VXLAN), and for IPv6 pods or underlay, IPv6. Root, or
// CAP_NET_ADMIN. The nodes must forward (net.ipv4.ip_forward,
// net.ipv6.conf.all.forwarding): that is the caller's to set.
package vxlan
