// Package ipam hands out addresses: node pod CIDRs from a cluster pool, pod
// addresses on a node, Calico-style blocks with node affinity, and
// LoadBalancer service addresses from pools. Every allocator keeps its state
// in a [Store], so that it survives restarts and crashes and can be shared by
// several processes, or several machines, without ever handing one address
// out twice.
//
// # Allocators
//
//   - [ClusterPool] carves node CIDRs (default /24 and /120) out of one or
//     more cluster CIDRs, one per family per node, as Cilium's cluster-pool
//     mode does.
//   - [NodeAllocator] hands out pod addresses from a node's ranges, one per
//     family per [Owner] (container ID and interface name, as CNI names
//     them), reserving the network, gateway and broadcast addresses as
//     configured, as CNI's host-local plugin does.
//   - [BlockPool] splits IP pools into blocks (default /26 and /122) that
//     nodes claim, as Calico does: a node hands out addresses from its own
//     blocks, claims another when they are full and, unless strict affinity
//     is set, borrows from other nodes' blocks when the pool has none left.
//   - [LBIPAM] hands out LoadBalancer addresses from pools of CIDRs and
//     ranges, as Cilium's LB-IPAM does, with disabled and conflicting pools,
//     requested addresses and sharing keys.
//
// Every allocation is idempotent (asking again for an owner returns what it
// holds) and every release is too (releasing what is not held is not an
// error). Each allocator has a Check method that verifies its stored state,
// a GC method that takes the set of valid owners (CNI's GC
// valid-attachments, say) and releases everything else, and a Usage method
// whose rows [WriteUsage] prints in the shape of `calicoctl ipam show
// --show-blocks`.
//
// # Address reuse
//
// Addresses are handed out round robin: the search for a free address
// starts after the last one handed out, so a released address comes back
// last. On top of that, a [NodeAllocator] or [BlockPool] keeps a released
// address out of use for a cooldown (default [DefaultCooldown]) unless every
// other address is held, so that traffic still in flight for a deleted pod
// does not reach the next one.
//
// # Stores
//
// [OpenBolt] keeps state in one bbolt file (the default, at
// [DefaultBoltPath]): every transaction is committed and fsync'd, or not at
// all, so a process killed with SIGKILL leaves the file as of its last
// commit. Several processes may use the file at once, as CNI plugins are
// invoked: a transaction takes a lock on a file beside it, which the kernel
// releases when a process dies. [NewMemoryStore] is for tests. Package
// ipam/etcdstore keeps state in etcd, for allocators on several machines:
// transactions there are optimistic, committed with compare-and-swap and
// retried when they lose a race. Importing ipam does not pull in etcd.
//
// Every change an allocator makes is one transaction that reads, with
// [Txn.Get], a key that every competing change also writes (the head of the
// range it allocates from, the owner's record): on an optimistic store two
// such transactions cannot both commit, so two nodes never receive one CIDR
// or address.
//
// # Errors
//
// Bad input (overlapping CIDRs, a node CIDR size larger than its cluster
// CIDR, an address outside every range, a malformed owner or name) is an
// error that names the problem, and changes nothing. An allocator that has
// nothing left returns an error wrapping [ErrExhausted]; a requested address
// that someone else holds, one wrapping [ErrInUse]. Lookups of owners that
// hold nothing return errors wrapping os.ErrNotExist. A failed operation
// writes nothing: an allocation that needs two families and finds one full
// hands out neither.
package ipam
