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
// Traffic from outside the node (NodePort and LoadBalancer arriving on an
// uplink) is not handled yet; the service map already has an external scope,
// written for non-ClusterIP services with traffic policy Local (only local
// backends), for that datapath to use.
//
// # Kernel requirements
//
// Linux 6.6 or later (TCX) with BTF; cgroup v2 for socket-level load
// balancing. Root, or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN.
//
// # Limits
//
// Map sizes are in [Config]. A rev-NAT index freed by a deleted service can
// be reused by a later one after the grace period; connections of the deleted service that outlive it may then
// have replies translated to the new frontend, as in Cilium. Indexes and ids
// are allocated round-robin to make that rare. The tables are not pinned yet:
// a restarted process starts empty.
package lbmap
