// Package lbmap load-balances services in BPF, as Cilium's kube-proxy
// replacement does: a packet to a service frontend (ClusterIP, NodePort,
// LoadBalancer, ExternalIP) is DNATed to a backend chosen once per connection,
// replies are translated back, and the cost per packet stays O(1) whatever the
// number of services.
//
// # Model
//
// A [Service] is a frontend (address, port, protocol), a [Type], its
// [Backend]s (with weight, [BackendState] and whether they run on this node),
// an [Algorithm] (random, or Maglev consistent hashing), optional session
// affinity and source ranges, and a [TrafficPolicy]. A [Table] holds services
// in BPF maps; [Table.Upsert], [Table.Delete] and [Table.Reconcile] change
// them, [Table.List] reads them back. Backend ids and rev-NAT indexes are
// allocated and freed by the Table; a backend shared by several services is
// stored once.
//
// New connections go to active backends with weight above 0; to terminating
// ones only when no backend is active (Kubernetes' rule); never to quarantined
// or maintenance ones. A service with no usable backend drops its packets and
// counts them ([Stats]). A connection keeps its backend, whatever the
// backend's state, until the backend is removed from the service.
//
// # Consistency
//
// Each service entry points at a complete backend set; a change writes a new
// set in full, then switches the service entry with one map update, so a
// packet sees the old set or the new one, never a mix. Service entries are
// updated in place under a BPF spin lock (BPF_F_LOCK) and read under it, and
// repeat their own key: a plain hash-map update recycles the replaced element
// at once, and a packet reading it could otherwise see another service's
// entry. A replaced set, a
// removed backend and a freed rev-NAT index stay in the maps for
// [Config.GracePeriod] before a later write deletes them, so a packet that
// read the old state never finds it freed. [Table.Reconcile] writes all its
// changes with batch operations, and undoes them if a step fails.
//
// # Datapath
//
// [Table.Attach] puts the datapath on tc ingress and egress of the interface
// facing the clients (a pod's host-side veth): ingress DNATs client packets to
// services, egress translates replies and ICMP errors about the connections
// back, with L3/L4 checksums kept right. Each connection's backend lives in a
// [conntrack.Table] (two entries per connection: client to frontend,
// remembering the backend, and client to backend, carrying the rev-NAT index).
// [Table.AttachCgroup] adds socket-level load balancing for a cgroup v2:
// connect and sendmsg go to a backend directly, recvmsg shows the frontend,
// with no per-packet NAT (Cilium's host-reachable services).
//
// Traffic from outside the node arriving on its uplink is the north-south
// datapath's ([Table.AttachUplink], below).
//
// # Hairpin
//
// A pod may reach a service (a ClusterIP, NodePort, LoadBalancer or
// ExternalIP frontend) whose backend chosen for the connection is the pod
// itself. DNAT alone would hand the pod a packet from its own address to its
// own address, which its kernel drops. So, as Cilium does, the datapath on
// the pod's interface also SNATs such a packet to the hairpin address and
// sends it straight back into the pod (bpf_redirect to the interface it came
// from, Ethernet addresses swapped), without the node's stack: the pod's
// server sees the hairpin address and the client's port. The pod answers the
// hairpin address by its default route, so the reply comes back to the same
// tc ingress, is translated to frontend -> client (the rev-NAT index comes
// from the connection's client -> backend conntrack entry, as for any reply)
// and sent back in too. TCP and UDP, IPv4 and IPv6; [Stats].Hairpin counts
// the packets both ways.
//
// The hairpin address must be no pod's or node's, and pods must route it to
// their gateway: [Config.HairpinAddr4] defaults to 169.254.42.1 (link-local,
// Cilium's choice); [Config.HairpinAddr6] to fd4e:6574:626c:6f6f::1, a unique
// local address, since an IPv6 link-local one is on-link in every pod (the
// pod would look for it by neighbour discovery rather than send it to its
// gateway). Not done: ICMP errors about hairpinned connections are not
// translated. Socket-level load balancing ([Table.AttachCgroup]) needs no
// hairpin: a connect translated to the pod's own address stays inside it.
//
// # North-south
//
// [Table.AttachUplink] puts a second datapath on a node's uplink, for
// clients outside the cluster: on tc ingress, a TCP or UDP packet (IPv4 or
// IPv6) to a NodePort, LoadBalancer or ExternalIP frontend of the table is
// DNATed to a backend chosen once per connection, as on the pod side.
// ClusterIP frontends are not served there, and every other packet passes
// untouched. A NodePort service is one [Service] per node address the
// NodePort answers on (Frontend is that address and the node port).
//
// A backend on this node ([Backend.NodeLocal]) gets the packet with the
// client's address, through the node's stack; tc egress of the uplink
// translates its replies back to the frontend. A backend on another node gets
// it SNATed to the node's uplink address ([UplinkConfig]) and a NAT port,
// sent straight back out of the uplink to the next hop (bpf_redirect_neigh:
// remote backends are reached through the uplink, native routing); its
// replies come back to that port, and are translated to frontend -> client
// and sent out the same way, so the client only ever sees the frontend.
//
// The NAT table, a BPF hash map beside the conntrack table, holds two entries
// per SNATed connection (client -> backend, and the reply tuple backend ->
// node:port). NAT ports come from [Config.NATPortMin]..[Config.NATPortMax],
// unique per backend address, port and protocol: the datapath tries ports
// in sequence from a hash of the connection, up to 32, and claims one by
// inserting its reply entry only if it does not exist, so two connections
// never share one. A connection that finds none is dropped and counted
// ([Stats].DropNATFull). The entries live as long as the connection's
// conntrack entry (client -> backend): [Table.GCNAT], run after the
// conntrack table's GC, deletes the others and frees their ports;
// [Table.NATEntries] lists them.
//
// Traffic policy Local: traffic from outside goes only to this node's
// backends, never SNATed (the backend sees the client's address); a node
// without one drops it and counts it ([Stats].DropNoBackend).
// [Table.HasLocalBackends] tells whether this node should attract a service's
// traffic (an l2announce caller announces a LoadBalancer address only where
// it is true). Source ranges apply as on the pod side: a client outside them
// is dropped and counted ([Stats].DropSourceRange).
//
// A pod reaching a LoadBalancer (or NodePort, ExternalIP) address of a
// service whose backend is itself is served on the pod's interface, not the
// uplink (see Hairpin above).
//
// # XDP
//
// With [UplinkConfig].XDP, an XDP program on the uplink takes the part where
// XDP pays: packets of connections to a backend on another node (DNAT and
// SNAT) and their replies (reverse translation) come in and go straight back
// out of the uplink, so it translates them, decrements the TTL (hop limit),
// writes the next hop's Ethernet addresses from bpf_fib_lookup and sends
// them back out with XDP_TX, before the kernel allocates an skb. It shares
// the service, conntrack and NAT maps with the tc program and writes the same
// entries, so the two agree on every connection whichever sees a packet.
// Everything else it passes unchanged (XDP_PASS) to the tc program, which
// handles it as if XDP were not there: local backends, traffic policy Local,
// ClusterIP and non-service traffic, VLAN-tagged frames, drops (source
// ranges, no backend, no NAT port: the tc program drops and counts them), and
// packets whose route does not lead back out of the uplink to a resolved
// neighbour (the tc program's bpf_redirect_neigh resolves it, so a
// connection's first packet often takes that path). [Stats].XDPForward and
// XDPReverse count what it forwarded (also counted in DNAT, SNAT and
// RevSNAT). XDPNative needs a driver with native XDP (veth has it; a veth
// delivers XDP_TX frames only to a peer that has an XDP program), XDPAuto
// falls back to generic mode, which saves the tc program's work but not the
// skb. The XDP program assumes complete checksums, as a NIC delivers them:
// a veth hands native XDP its peer's locally sent packets with partial ones
// (checksum offload), which XDP_TX sends on wrong; turn the sender's offload
// off (ethtool -K tx off) where tests send from the same machine.
//
// Measured with BPF_PROG_RUN (BenchmarkUplinkXDP, Linux 6.18, both in one run: an
// established connection to a remote backend, 200 runs per call, kernel
// time per run, three runs on a busy machine): the tc program 445-705 ns,
// the XDP program 610-665 ns, about the same. The XDP program does the
// route and neighbour lookup itself (bpf_fib_lookup), while bpf_redirect_neigh does it after the tc program,
// outside what BPF_PROG_RUN times, and the skb allocation and stack
// traversal up to tc that XDP saves are not in these figures at all: they
// show the program costs, not the gain, which needs a packet rate
// measurement on a NIC (not done yet).
//
// Not done yet: ICMP errors about
// SNATed connections (those about local backends' connections are
// translated), and remote backends reached through a device other than the
// uplink (an overlay). Packets sent straight back out of the uplink have
// their TTL or hop limit decremented, as a router's would.
//
// # Kernel requirements
//
// Linux 6.6 or later (TCX) with BTF; cgroup v2 for socket-level load
// balancing; bpf_redirect_neigh (5.10) for the north-south datapath. Root,
// or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN.
//
// # Limits
//
// Map sizes are in [Config]. A rev-NAT index freed by a deleted service can
// be reused by a later one after the grace period; connections of the deleted service that outlive it may then
// have replies translated to the new frontend, as in Cilium. Indexes and ids
// are allocated round-robin to make that rare. The tables are not pinned yet:
// a restarted process starts empty.
package lbmap
