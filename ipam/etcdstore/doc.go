// Package etcdstore implements [ipam.Store] on etcd, so that allocators on
// several machines can share one pool of CIDRs and addresses.
//
// It lives apart from package ipam so that programs that import ipam alone,
// with its bbolt and memory stores, do not pull in the etcd client and gRPC.
//
// # Transactions
//
// Update runs optimistically, as etcd's concurrency.STM does. The first read
// of an attempt fixes an etcd revision, and every later Get and Scan of the
// attempt reads at that revision, so the attempt sees one snapshot. Put and
// Delete are buffered, and Get and Scan see them. At the end the attempt
// commits in one etcd transaction that compares the modification revision of
// every key read with Get against the one it saw (0 for a missing key) and,
// if none changed, applies all writes. An attempt that wrote nothing commits
// nothing.
//
// If another writer changed a key the attempt read, the commit fails and
// Update runs the function again, from scratch and on fresh data, after a
// short random pause that grows with each attempt, up to
// [Config.MaxAttempts] times. The function must therefore have no effect
// outside its transaction.
//
// Keys seen only through Scan are not compared. That is enough for the
// allocators in package ipam: every allocator transaction reads, with Get, a
// key that every competing writer also writes: the head of the space it
// allocates from, which every change to a slot of that space rewrites. Two transactions that would hand out the
// same CIDR or address both read that key, and only the first to commit
// keeps its revision, so the second runs again and sees the first's claim.
// Two nodes therefore never receive the same CIDR or address.
//
// View reads at one revision in the same way and never writes; its Put and
// Delete return [ipam.ErrReadOnly].
//
// # Limits
//
// etcd refuses transactions with more than 128 compares or more than 128
// writes (its default --max-txn-ops). Update returns an error naming the
// counts for a transaction that exceeds either limit, rather than split it
// and lose atomicity. Scan pages through etcd a few hundred keys at a time
// and is not limited.
//
// # Errors and lifetime
//
// An error of the function passed to Update or View is returned as it is,
// and nothing is written. Errors from etcd are wrapped, so a canceled or
// expired context is recognised with [errors.Is] and [context.Canceled] or
// [context.DeadlineExceeded]. Update gives up with an error once
// [Config.MaxAttempts] attempts have failed to commit.
//
// Close marks the store closed: later transactions return
// [ipam.ErrStoreClosed]. It does not close the etcd client, which belongs to
// the caller.
package etcdstore
