package ipam

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Get returns what service holds, or an error wrapping os.ErrNotExist.
func (l *LBIPAM) Get(ctx context.Context, service string) (LBAllocation, error) {
	if err := checkService(service); err != nil {
		return LBAllocation{}, fmt.Errorf("get allocation: %w", err)
	}
	var rec lbSvcRecord
	var ok bool
	err := l.view(ctx, func(tx Txn) error {
		var err error
		ok, err = getJSON(tx, l.svcKey(service), &rec)
		return err
	})
	if err != nil {
		return LBAllocation{}, fmt.Errorf("get allocation of %s: %w", service, err)
	}
	if !ok {
		return LBAllocation{}, fmt.Errorf("get allocation of %s: %w", service, os.ErrNotExist)
	}
	return rec.allocation(), nil
}

// Release frees what service holds and returns it; a shared address is
// freed when its last service leaves it. Releasing a service that holds
// nothing is not an error: it returns false.
func (l *LBIPAM) Release(ctx context.Context, service string) (LBAllocation, bool, error) {
	if err := checkService(service); err != nil {
		return LBAllocation{}, false, fmt.Errorf("release: %w", err)
	}
	var rec lbSvcRecord
	var ok bool
	err := l.update(ctx, func(tx Txn) error {
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		rec = lbSvcRecord{}
		if ok, err = getJSON(tx, l.svcKey(service), &rec); err != nil || !ok {
			return err
		}
		return l.releaseService(tx, &doc, rec)
	})
	if err != nil {
		return LBAllocation{}, false, fmt.Errorf("release %s: %w", service, err)
	}
	return rec.allocation(), ok, nil
}

// releaseService takes rec's service off its addresses and deletes its
// record.
func (l *LBIPAM) releaseService(tx Txn, doc *lbPoolsDoc, rec lbSvcRecord) error {
	now := l.clock()
	share, err := l.readShare(tx, rec.SharingKey)
	if err != nil {
		return err
	}
	shareChanged := false
	e := doc.find(rec.Pool)
	for _, a := range rec.Addrs {
		if e == nil {
			break
		}
		s, ok := l.spaceOf(e, a)
		if !ok {
			continue
		}
		r, held, err := s.sp.get(tx, a)
		if err != nil {
			return err
		}
		switch {
		case !held:
		case rec.SharingKey != "" && r.Owner == lbSharePrefix+rec.SharingKey:
			ms, err := decodeMembers(a, r)
			if err != nil {
				return err
			}
			ms = slices.DeleteFunc(ms, func(m lbMember) bool { return m.Service == rec.Service })
			if len(ms) > 0 {
				if r.Data, err = json.Marshal(ms); err != nil {
					return err
				}
				if err := s.sp.update(tx, a, r); err != nil {
					return err
				}
				continue
			}
			if _, _, err := s.sp.release(tx, a, now, 0); err != nil {
				return err
			}
			share = slices.DeleteFunc(share, func(sh lbShareRec) bool { return sh.Addr == a && sh.Pool == rec.Pool })
			shareChanged = true
		case r.Owner == rec.Service:
			if _, _, err := s.sp.release(tx, a, now, 0); err != nil {
				return err
			}
		}
	}
	switch {
	case !shareChanged:
	case len(share) == 0:
		if err := tx.Delete(l.shareKey(rec.SharingKey)); err != nil {
			return err
		}
	default:
		if err := putJSON(tx, l.shareKey(rec.SharingKey), share); err != nil {
			return err
		}
	}
	return tx.Delete(l.svcKey(rec.Service))
}

// List returns every allocation, ordered by service.
func (l *LBIPAM) List(ctx context.Context) ([]LBAllocation, error) {
	var out []LBAllocation
	err := l.view(ctx, func(tx Txn) error {
		out = out[:0]
		return l.scanServices(tx, func(_ string, rec lbSvcRecord) error {
			out = append(out, rec.allocation())
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list allocations: %w", err)
	}
	slices.SortFunc(out, func(a, b LBAllocation) int { return strings.Compare(a.Service, b.Service) })
	return out, nil
}

func (l *LBIPAM) scanServices(tx Txn, fn func(key string, rec lbSvcRecord) error) error {
	var ferr error
	err := tx.Scan(l.svcPrefix(), "", func(k string, v []byte) bool {
		var rec lbSvcRecord
		if ferr = unmarshal(k, v, &rec); ferr != nil {
			return false
		}
		ferr = fn(k, rec)
		return ferr == nil
	})
	if err != nil {
		return err
	}
	return ferr
}

// GC releases every allocation whose service is not in valid and returns
// what it released, ordered by service. Each service is released in its
// own transaction, so an allocation made while GC runs is not lost,
// provided valid includes it.
func (l *LBIPAM) GC(ctx context.Context, valid []string) ([]LBAllocation, error) {
	return gc(ctx, valid, l.List, func(al LBAllocation) string { return al.Service }, l.Release)
}

// Usage returns one "LB Pool" row per block of every pool, in creation
// order: the block (a CIDR or "start-stop"), its addresses and how many are
// held.
func (l *LBIPAM) Usage(ctx context.Context) ([]Usage, error) {
	var out []Usage
	err := l.view(ctx, func(tx Txn) error {
		out = out[:0]
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		for i := range doc.Pools {
			for _, s := range l.spaces(&doc.Pools[i]) {
				used, err := s.sp.used(tx)
				if err != nil {
					return err
				}
				out = append(out, Usage{Grouping: "LB Pool", CIDR: s.block.String(), Total: s.sp.capacity(), InUse: used})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return out, nil
}
