package ipam

import (
	"context"
	"net/netip"
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

// sortAddrs orders IPv4 before IPv6.
func familyIndex(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}
