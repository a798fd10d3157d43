package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"time"
)

// common is what every allocator has: a store, whether the allocator opened
// it (and so closes it), and a clock.
type common struct {
	store    Store
	ownStore bool
	now      func() time.Time
}

func newCommon(s Store, now func() time.Time) (common, error) {
	c := common{store: s, now: now}
	if c.now == nil {
		c.now = time.Now
	}
	if c.store == nil {
		st, err := OpenBolt("", BoltConfig{})
		if err != nil {
			return c, err
		}
		c.store, c.ownStore = st, true
	}
	return c, nil
}

func (c *common) clock() time.Time { return c.now().UTC() }

// close closes the store if the allocator opened it.
func (c *common) close() error {
	if c.ownStore {
		return c.store.Close()
	}
	return nil
}

func (c *common) update(ctx context.Context, fn func(Txn) error) error {
	return c.store.Update(ctx, fn)
}

func (c *common) view(ctx context.Context, fn func(Txn) error) error {
	return c.store.View(ctx, fn)
}

// familiesOf returns the address families among addrs, IPv4 (true) first.
func familiesOf(addrs []netip.Addr) []bool {
	var has4, has6 bool
	for _, a := range addrs {
		has4 = has4 || a.Is4()
		has6 = has6 || !a.Is4()
	}
	var fams []bool
	if has4 {
		fams = append(fams, true)
	}
	if has6 {
		fams = append(fams, false)
	}
	return fams
}

// familyIndex orders IPv4 before IPv6.
func familyIndex(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// gc releases every item that list returns whose key is not in valid, each
// in its own transaction (release), so that an allocation made while it
// runs is not lost, provided valid includes it. It returns what it
// released.
func gc[T any, K comparable](ctx context.Context, valid []K, list func(context.Context) ([]T, error),
	key func(T) K, release func(context.Context, K) (T, bool, error)) ([]T, error) {
	keep := make(map[K]bool, len(valid))
	for _, k := range valid {
		keep[k] = true
	}
	all, err := list(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	var released []T
	for _, item := range all {
		if keep[key(item)] {
			continue
		}
		got, ok, err := release(ctx, key(item))
		if err != nil {
			return released, fmt.Errorf("gc: %w", err)
		}
		if ok {
			released = append(released, got)
		}
	}
	return released, nil
}

// getOwner reads the record of owner under key in a read-only transaction;
// an owner without one is an error wrapping os.ErrNotExist.
func (c *common) getOwner(ctx context.Context, key string, owner Owner) (ownerRecord, error) {
	var rec ownerRecord
	var ok bool
	err := c.view(ctx, func(tx Txn) error {
		var err error
		ok, err = getJSON(tx, key, &rec)
		return err
	})
	if err != nil {
		return rec, fmt.Errorf("get allocation of %s: %w", owner, err)
	}
	if !ok {
		return rec, fmt.Errorf("get allocation of %s: %w", owner, os.ErrNotExist)
	}
	return rec, nil
}
