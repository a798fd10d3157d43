package ipam

import (
	"context"
	"errors"
)

// A Store keeps the allocators' state: a transactional map from string keys
// to byte values. Every allocator in this package works through one; several
// allocators (a cluster pool, node allocators, LB pools) may share a store,
// each under its own key prefix.
//
// This package has two implementations: [OpenBolt], one bbolt file that
// several processes may use at once (the default), and [NewMemoryStore], for
// tests. Package ipam/etcdstore has a third, on etcd, for allocators on
// several machines. Any implementation must pass the conformance tests in
// ipam/internal/storetest.
type Store interface {
	// Update runs fn in a read-write transaction and commits what it wrote
	// atomically. If fn returns an error, nothing it wrote is kept and Update
	// returns that error.
	//
	// A store may run transactions optimistically: if a key fn read with
	// [Txn.Get] changed before the commit, the commit fails and Update runs fn
	// again on fresh data. fn must therefore have no effect outside the Txn.
	// Keys seen only through [Txn.Scan] are not guarded this way: the
	// allocators guard a scan by reading, with Get, a key that every writer of
	// the scanned keys also writes.
	Update(ctx context.Context, fn func(tx Txn) error) error

	// View runs fn in a read-only transaction that sees one consistent state.
	// Put and Delete in it return [ErrReadOnly].
	View(ctx context.Context, fn func(tx Txn) error) error

	// Close releases what the store holds. Transactions after Close fail.
	Close() error
}

// A Txn is the view a transaction has of a [Store]. It is valid only during
// the function it was passed to. Reads see the transaction's own writes.
type Txn interface {
	// Get returns the value of key and whether it exists.
	Get(key string) (value []byte, ok bool, err error)
	// Put sets key to value. The store keeps value only after the
	// transaction commits; the caller must not change it afterwards.
	Put(key string, value []byte) error
	// Delete removes key. Deleting a key that does not exist is not an error.
	Delete(key string) error
	// Scan calls fn for each key with the given prefix that sorts at or after
	// start, in byte order, until fn returns false. An empty start means the
	// first key with the prefix. fn must not call Put or Delete.
	Scan(prefix, start string, fn func(key string, value []byte) bool) error
}

// Errors of stores.
var (
	// ErrReadOnly is returned by Put and Delete in a transaction of
	// [Store.View].
	ErrReadOnly = errors.New("read-only transaction")
	// ErrStoreClosed is returned by transactions on a closed store.
	ErrStoreClosed = errors.New("store closed")
)
