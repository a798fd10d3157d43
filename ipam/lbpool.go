package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
)

// NewLBIPAM returns an LB IPAM on cfg.Store. The pools are in the store:
// set them with [LBIPAM.SetPool].
func NewLBIPAM(cfg LBConfig) (*LBIPAM, error) {
	name := cfg.Name
	if name == "" {
		name = "default"
	}
	if err := checkName("LB IPAM name", name); err != nil {
		return nil, fmt.Errorf("new LB IPAM: %w", err)
	}
	c, err := newCommon(cfg.Store, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("new LB IPAM: %w", err)
	}
	return &LBIPAM{common: c, name: name}, nil
}

// Close closes the store if the LB IPAM opened it (LBConfig.Store nil).
func (l *LBIPAM) Close() error { return l.close() }

func (l *LBIPAM) root() string                  { return "lb/" + l.name + "/" }
func (l *LBIPAM) poolsKey() string              { return l.root() + "pools" }
func (l *LBIPAM) poolPrefix(pool string) string { return l.root() + "pool/" + pool + "/" }
func (l *LBIPAM) svcPrefix() string             { return l.root() + "svc/" }
func (l *LBIPAM) svcKey(svc string) string      { return l.svcPrefix() + url.PathEscape(svc) }
func (l *LBIPAM) sharePrefix() string           { return l.root() + "share/" }
func (l *LBIPAM) shareKey(key string) string    { return l.sharePrefix() + url.PathEscape(key) }

func (l *LBIPAM) readPools(tx Txn) (lbPoolsDoc, error) {
	var d lbPoolsDoc
	_, err := getJSON(tx, l.poolsKey(), &d)
	return d, err
}

func (d *lbPoolsDoc) find(name string) *lbPoolEntry {
	for i := range d.Pools {
		if d.Pools[i].Name == name {
			return &d.Pools[i]
		}
	}
	return nil
}

// evalConflicts marks, in creation order, each pool that overlaps an earlier
// non-conflicting pool.
func (d *lbPoolsDoc) evalConflicts() {
	for i := range d.Pools {
		p := &d.Pools[i]
		p.Conflicting, p.ConflictReason = false, ""
		for j := range i {
			q := &d.Pools[j]
			if q.Conflicting {
				continue
			}
			var pairs []string
			for _, a := range p.Blocks {
				alo, ahi := LBBlock(a).bounds()
				for _, b := range q.Blocks {
					if blo, bhi := LBBlock(b).bounds(); overlaps(alo, ahi, blo, bhi) {
						pairs = append(pairs, fmt.Sprintf("%v overlaps %v", LBBlock(a), LBBlock(b)))
					}
				}
			}
			if len(pairs) > 0 {
				p.Conflicting = true
				p.ConflictReason = fmt.Sprintf("pool %q, created earlier, has overlapping blocks: %s", q.Name, strings.Join(pairs, ", "))
				break
			}
		}
	}
}

func (e *lbPoolEntry) eligible() bool { return !e.Disabled && !e.Conflicting }

func (e *lbPoolEntry) pool() LBPool {
	p := LBPool{Name: e.Name, ReserveFirstLastIPs: e.ReserveFirstLastIPs, Disabled: e.Disabled}
	for _, b := range e.Blocks {
		p.Blocks = append(p.Blocks, LBBlock(b))
	}
	return p
}

func (e *lbPoolEntry) has(v4 bool) bool {
	return slices.ContainsFunc(e.Blocks, func(b lbBlockRec) bool { lo, _ := LBBlock(b).bounds(); return lo.Is4() == v4 })
}

// An lbSpace is a block of a pool with its space: the block's addresses
// without the ones ReserveFirstLastIPs keeps out.
type lbSpace struct {
	block  LBBlock
	lo, hi netip.Addr
	sp     *space
}

func (l *LBIPAM) blockSpace(pool string, b LBBlock, reserveFirstLast bool) lbSpace {
	lo, hi := b.bounds()
	first, last := lo, hi
	if reserveFirstLast && b.CIDR.IsValid() && b.CIDR.Bits() < lo.BitLen()-1 {
		first, last = lo.Next(), hi.Prev()
	}
	// The key has the block's bounds, not the space's, so that changing
	// ReserveFirstLastIPs keeps the block's state.
	key := l.poolPrefix(pool) + addrKey(lo) + "-" + addrKey(hi) + "/"
	return lbSpace{block: b, lo: lo, hi: hi, sp: newSpace(key, first, last, 0, nil)}
}

func (l *LBIPAM) spaces(e *lbPoolEntry) []lbSpace {
	out := make([]lbSpace, 0, len(e.Blocks))
	for _, b := range e.Blocks {
		out = append(out, l.blockSpace(e.Name, LBBlock(b), e.ReserveFirstLastIPs))
	}
	return out
}

// spaceOf returns the block of e whose bounds contain a.
func (l *LBIPAM) spaceOf(e *lbPoolEntry, a netip.Addr) (lbSpace, bool) {
	for _, s := range l.spaces(e) {
		if overlaps(s.lo, s.hi, a, a) {
			return s, true
		}
	}
	return lbSpace{}, false
}

// status returns e's status as of tx.
func (l *LBIPAM) status(tx Txn, e *lbPoolEntry) (LBPoolStatus, error) {
	st := LBPoolStatus{Pool: e.pool(), Conflicting: e.Conflicting, ConflictReason: e.ConflictReason}
	for _, s := range l.spaces(e) {
		used, err := s.sp.used(tx)
		if err != nil {
			return st, err
		}
		st.Total = satAdd(st.Total, s.sp.capacity())
		st.Used += used
	}
	st.Available = st.Total - min(st.Used, st.Total)
	return st, nil
}

func satAdd(a, b uint64) uint64 {
	if a+b < a {
		return ^uint64(0)
	}
	return a + b
}

// checkLBPool validates p and returns it with each range's Stop filled in.
func checkLBPool(p LBPool) (LBPool, error) {
	if err := checkName("pool name", p.Name); err != nil {
		return p, err
	}
	if len(p.Blocks) == 0 {
		return p, fmt.Errorf("pool %q: no blocks", p.Name)
	}
	out := p
	out.Blocks = make([]LBBlock, len(p.Blocks))
	for i, b := range p.Blocks {
		if err := checkLBBlock(&b); err != nil {
			return p, fmt.Errorf("pool %q: block %d: %w", p.Name, i, err)
		}
		out.Blocks[i] = b
	}
	for i, a := range out.Blocks {
		alo, ahi := a.bounds()
		for _, b := range out.Blocks[:i] {
			if blo, bhi := b.bounds(); overlaps(alo, ahi, blo, bhi) {
				return p, fmt.Errorf("pool %q: blocks %v and %v overlap", p.Name, b, a)
			}
		}
	}
	return out, nil
}

func checkLBBlock(b *LBBlock) error {
	cidrSet := b.CIDR != netip.Prefix{}
	switch {
	case cidrSet && (b.Start.IsValid() || b.Stop.IsValid()):
		return fmt.Errorf("both CIDR %v and Start-Stop %v-%v set; use one", b.CIDR, b.Start, b.Stop)
	case cidrSet:
		return checkPrefix("CIDR", b.CIDR)
	case !b.Start.IsValid() && b.Stop.IsValid():
		return fmt.Errorf("Stop %v without Start", b.Stop)
	case !b.Start.IsValid():
		return errors.New("neither CIDR nor Start set")
	}
	if !b.Stop.IsValid() {
		b.Stop = b.Start
	}
	for _, a := range []netip.Addr{b.Start, b.Stop} {
		if a.Zone() != "" || a.Is4In6() {
			return fmt.Errorf("address %v: zoned and IPv4-mapped addresses are not allowed", a)
		}
	}
	if b.Start.Is4() != b.Stop.Is4() {
		return fmt.Errorf("Start %v and Stop %v are of different families", b.Start, b.Stop)
	}
	if b.Start.Compare(b.Stop) > 0 {
		return fmt.Errorf("Start %v is after Stop %v", b.Start, b.Stop)
	}
	return nil
}

// SetPool creates pool, or updates the pool of that name, and returns its
// status. The conflicts of every pool are evaluated again. An update that
// would leave held addresses out of the pool (by removing their block, or
// by ReserveFirstLastIPs) is refused with an error naming them; an update
// keeps the pool's place in creation order.
func (l *LBIPAM) SetPool(ctx context.Context, pool LBPool) (LBPoolStatus, error) {
	p, err := checkLBPool(pool)
	if err != nil {
		return LBPoolStatus{}, fmt.Errorf("set pool: %w", err)
	}
	entry := lbPoolEntry{Name: p.Name, ReserveFirstLastIPs: p.ReserveFirstLastIPs, Disabled: p.Disabled}
	for _, b := range p.Blocks {
		entry.Blocks = append(entry.Blocks, lbBlockRec(b))
	}
	var st LBPoolStatus
	err = l.update(ctx, func(tx Txn) error {
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		e := entry
		if old := doc.find(p.Name); old != nil {
			e.Seq = old.Seq
			if err := l.checkKept(tx, old, &e); err != nil {
				return err
			}
			*old = e
		} else {
			doc.Seq++
			e.Seq = doc.Seq
			doc.Pools = append(doc.Pools, e)
		}
		doc.evalConflicts()
		if err := putJSON(tx, l.poolsKey(), doc); err != nil {
			return err
		}
		st, err = l.status(tx, doc.find(p.Name))
		return err
	})
	if err != nil {
		return LBPoolStatus{}, fmt.Errorf("set pool %q: %w", p.Name, err)
	}
	return st, nil
}

// checkKept refuses an update of pool old to e that leaves held addresses
// out, and deletes the state of the blocks that e removes.
func (l *LBIPAM) checkKept(tx Txn, old, e *lbPoolEntry) error {
	next := map[string]lbSpace{}
	for _, s := range l.spaces(e) {
		next[s.sp.key] = s
	}
	for _, s := range l.spaces(old) {
		n, kept := next[s.sp.key]
		if kept && n.sp.first == s.sp.first && n.sp.last == s.sp.last {
			continue
		}
		used, err := s.sp.used(tx)
		if err != nil {
			return err
		}
		var out []netip.Addr
		if used > 0 {
			err := s.sp.each(tx, func(a netip.Addr, _ slotRecord) bool {
				if !kept || n.sp.contains(a) != nil {
					out = append(out, a)
				}
				return true
			})
			if err != nil {
				return err
			}
		}
		switch {
		case len(out) > 0 && kept:
			return fmt.Errorf("block %v: ReserveFirstLastIPs would leave out %v, which are held; release them first", s.block, out)
		case len(out) > 0:
			return fmt.Errorf("block %v still holds %v; release them first", s.block, out)
		case !kept:
			if err := deletePrefix(tx, s.sp.key); err != nil {
				return err
			}
		}
	}
	return nil
}

func deletePrefix(tx Txn, prefix string) error {
	var keys []string
	if err := tx.Scan(prefix, "", func(k string, _ []byte) bool { keys = append(keys, k); return true }); err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// DeletePool deletes a pool, releases what its services hold and returns
// those allocations, ordered by service. The conflicts of the other pools
// are evaluated again: a pool that conflicted only with this one no longer
// does. A pool that does not exist is an error wrapping os.ErrNotExist.
//
// It works in steps, so that no transaction grows with the number of
// services (etcd bounds a transaction's size): it disables the pool, so
// nothing new comes from it, releases each service in its own transaction,
// then deletes the pool and anything allocated meanwhile in one last
// transaction. If it fails part way, the pool is left disabled; calling it
// again finishes the job.
func (l *LBIPAM) DeletePool(ctx context.Context, name string) ([]LBAllocation, error) {
	pools, err := l.Pools(ctx)
	if err != nil {
		return nil, fmt.Errorf("delete pool %q: %w", name, err)
	}
	i := slices.IndexFunc(pools, func(p LBPoolStatus) bool { return p.Pool.Name == name })
	if i < 0 {
		return nil, fmt.Errorf("delete pool %q: %w", name, os.ErrNotExist)
	}
	if p := pools[i].Pool; !p.Disabled {
		p.Disabled = true
		if _, err := l.SetPool(ctx, p); err != nil {
			return nil, fmt.Errorf("delete pool %q: disable it: %w", name, err)
		}
	}
	all, err := l.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("delete pool %q: %w", name, err)
	}
	var released []LBAllocation
	for _, al := range all {
		if al.Pool != name {
			continue
		}
		got, ok, err := l.Release(ctx, al.Service)
		if err != nil {
			return released, fmt.Errorf("delete pool %q: %w", name, err)
		}
		if ok {
			released = append(released, got)
		}
	}
	rest, err := l.deletePool(ctx, name)
	released = append(released, rest...)
	slices.SortFunc(released, func(a, b LBAllocation) int { return strings.Compare(a.Service, b.Service) })
	return released, err
}

// deletePool is the last step of DeletePool.
func (l *LBIPAM) deletePool(ctx context.Context, name string) ([]LBAllocation, error) {
	var released []LBAllocation
	err := l.update(ctx, func(tx Txn) error {
		released = released[:0]
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		e := doc.find(name)
		if e == nil {
			return os.ErrNotExist
		}
		seen := map[string]bool{}
		for _, s := range l.spaces(e) {
			if _, err := s.sp.used(tx); err != nil { // guards the scan
				return err
			}
			var svcs []string
			err := s.sp.each(tx, func(_ netip.Addr, r slotRecord) bool {
				for _, m := range slotServices(r) {
					if !seen[m] {
						seen[m] = true
						svcs = append(svcs, m)
					}
				}
				return true
			})
			if err != nil {
				return err
			}
			for _, svc := range svcs {
				var rec lbSvcRecord
				ok, err := getJSON(tx, l.svcKey(svc), &rec)
				if err != nil {
					return err
				}
				if !ok || rec.Pool != name {
					continue
				}
				if err := l.releaseService(tx, &doc, rec); err != nil {
					return err
				}
				released = append(released, rec.allocation())
			}
		}
		if err := deletePrefix(tx, l.poolPrefix(name)); err != nil {
			return err
		}
		doc.Pools = slices.DeleteFunc(doc.Pools, func(p lbPoolEntry) bool { return p.Name == name })
		doc.evalConflicts()
		return putJSON(tx, l.poolsKey(), doc)
	})
	if err != nil {
		return nil, fmt.Errorf("delete pool %q: %w", name, err)
	}
	slices.SortFunc(released, func(a, b LBAllocation) int { return strings.Compare(a.Service, b.Service) })
	return released, nil
}

// slotServices returns the services on a slot: its owner, or the members of
// a shared address. A shared slot with bad data yields none.
func slotServices(r slotRecord) []string {
	if !strings.HasPrefix(r.Owner, lbSharePrefix) {
		return []string{r.Owner}
	}
	var ms []lbMember
	if json.Unmarshal(r.Data, &ms) != nil {
		return nil
	}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Service)
	}
	return out
}

// Pools returns the status of every pool, in creation order.
func (l *LBIPAM) Pools(ctx context.Context) ([]LBPoolStatus, error) {
	var out []LBPoolStatus
	err := l.view(ctx, func(tx Txn) error {
		out = out[:0]
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		for i := range doc.Pools {
			st, err := l.status(tx, &doc.Pools[i])
			if err != nil {
				return err
			}
			out = append(out, st)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	return out, nil
}
