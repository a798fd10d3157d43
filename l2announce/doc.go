// Package l2announce makes service VIPs reachable on a LAN without BGP, as
// Cilium's L2 announcements, MetalLB's L2 mode and kube-vip do: for each VIP,
// one node at a time answers ARP requests (IPv4) and neighbour solicitations
// (IPv6) with the MAC address of its interface, so that the LAN sends the
// VIP's traffic to that node. When the node dies or loses its link, another
// node takes the VIP over and tells the LAN at once with gratuitous ARP and
// unsolicited neighbour advertisements.
//
// # Responder
//
// A [Responder] ([New], then [Responder.SetVIPs] and [Responder.Run])
// announces on the interfaces whose names match [Config.Interfaces], while
// they are up. On each it reads frames from two packet connections (raw
// AF_PACKET sockets from mdlayher/packet by default, or whatever
// [Config.Listen] returns: the net.PacketConn seam of mdlayher/arp), one for
// ARP and one for IPv6 with a BPF filter that keeps neighbour discovery.
//
//   - An ARP request for a VIP this node holds gets an ARP reply from the
//     interface's MAC address (built with mdlayher/arp), sent to the
//     requester; so does an RFC 5227 probe (sender 0.0.0.0).
//   - A neighbour solicitation for a held IPv6 VIP, valid by RFC 4861
//     section 7.1.1 (hop limit 255, code 0, right checksum, consistent
//     addresses; parsed with mdlayher/ndp), gets a solicited advertisement
//     with the override flag and the interface's MAC as target link-layer
//     address; duplicate address detection gets an advertisement to all
//     nodes.
//   - Nothing else gets an answer: requests for VIPs the node does not hold,
//     for any other address, gratuitous ARP, replies, other protocols,
//     VLAN-tagged frames (select the VLAN's interface instead) and the
//     node's own frames.
//
// The VIPs are not assigned to the interface, and the node needs no address
// on it: answers carry the VIP as their sender. Answers go out only while
// the node holds the VIP's lease, checked against the clock for every frame
// just before it is sent.
//
// Every frame is parsed with bounds checks; one that is truncated, has
// inconsistent lengths or fields, or a bad checksum is counted in
// [Stats.Malformed] and gets no reply, and no frame and no read error stops
// the Responder. A requester that asks more than [Config.MaxReplyRate] times
// a second on an interface gets no more answers in that second; others still
// do. Another station that claims a held VIP (a gratuitous ARP or an
// advertisement from another MAC) is counted in [Stats.Conflicts] and
// logged.
//
// When the node takes a VIP over, it sends [Config.GratuitousCount]
// announcements (default 3, 100ms apart) on every interface of the VIP's
// segment: a gratuitous ARP request (the announcement of RFC 5227) and a
// gratuitous ARP reply whose target hardware address is its own (the form
// Linux accepts as gratuitous), or an unsolicited neighbour advertisement
// with the override flag to all nodes. [Config.RefreshInterval] repeats them
// while the VIP is held, for switches whose forwarding tables aged out.
// Linux updates existing neighbour entries from announcements; it creates
// entries from them only with arp_accept set (IPv4), and on routers with
// accept_untracked_na set (IPv6).
//
// The Responder follows the interfaces of [Config.NetNS] through a netlink
// subscription bound to that namespace. An interface that goes down
// (administratively, or loses its carrier) or disappears is no longer
// answered on; when no interface of a segment is up any more, the node ends
// its campaigns for the segment's VIPs, which releases their leases so that
// another node takes them over. When the interface comes back, the node
// campaigns again.
//
// # Election
//
// Which node answers is decided per [Key], a VIP on an L2 segment: one lease
// per Key. A segment is by default the interface's name ([Config.Segment]),
// so nodes must name the interfaces on one LAN alike, or map them to one
// segment name: nodes that disagree compete for different Keys and would
// all answer. An [Elector] runs one campaign per Key and tells the
// Responder until when it may answer; the Responder answers only before that
// moment, so an elector that stalls cannot make it answer too long.
// [LocalElector] makes its node hold every Key: for a single node. Package
// l2announce/etcdelect elects one node per Key through etcd leases; it lives
// apart so that importing l2announce does not pull in etcd and gRPC.
//
// Which node may announce which VIP is the caller's policy:
// [Config.Eligible], asked for every VIP and segment (the node and service
// selectors of Cilium's policies). Among eligible nodes, the elector spreads
// VIPs: etcdelect ranks candidates by rendezvous hashing.
//
// # Failover timing
//
// A node that leaves in order (Run's context canceled, its link down, the
// VIP withdrawn) stops answering first and then releases its leases: another
// node takes over as soon as it learns of the release, within milliseconds
// with etcdelect. A node that crashes, or is cut off from its elector,
// stops answering by itself at its lease's renew deadline, and another node
// takes over once the lease's duration has passed; etcdelect's package
// documentation has the arithmetic, which keeps any two nodes from answering
// at once.
//
// # Lifetime
//
// [New] checks the configuration and opens nothing. [Responder.Run] opens the
// namespace, sockets and subscriptions, and may be called once. Its sockets
// are opened inside [Config.NetNS] on a locked thread that is moved back
// afterwards; no goroutine of the caller changes namespace. When Run's
// context is done, the Responder stops answering at once, before anything
// else, then closes its sockets and ends its campaigns, which release their
// leases; Run returns the context's error when all of that is done.
// [Responder.SetVIPs] may be called before and while Run runs. The package
// has no global state.
//
// # Kernel requirements
//
// Linux, with AF_PACKET sockets (CAP_NET_RAW) and rtnetlink; CAP_SYS_ADMIN
// to enter another namespace. Frames the host sends itself are ignored in
// the kernel from Linux 4.20 (PACKET_IGNORE_OUTGOING), and by their source
// address before that.
//
// # Errors
//
// New returns an error naming an invalid field (a pattern that does not
// compile, a negative interval). SetVIPs refuses, and changes nothing for,
// an address that is not unicast, is unspecified or loopback, or has a zone.
// Run returns an error at once only if it cannot start (the namespace cannot
// be opened, or Run already ran). Failures while it runs are logged to
// [Config.Logger] and retried, and never end it: an interface whose sockets
// cannot be opened is tried again after a second, a campaign that fails is
// started again after a pause that doubles from 100ms to 5s. Errors wrap
// their cause.
package l2announce
