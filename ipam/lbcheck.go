package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
)

// Check verifies that the stored state is consistent: the pools are valid
// and their conflicts right; every held address is held once, within its
// block, by a service that lists it or by services sharing it without a
// port clash; every service's addresses are held for it; the sharing index
// matches; each block's count of held addresses is right; and no state is
// left of a deleted block. It returns an error listing what is wrong.
func (l *LBIPAM) Check(ctx context.Context) error {
	var problems []string
	err := l.view(ctx, func(tx Txn) error {
		problems = problems[:0]
		bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		names := map[string]bool{}
		for _, e := range doc.Pools {
			if names[e.Name] {
				bad("pool %q is listed twice", e.Name)
			}
			names[e.Name] = true
			if _, err := checkLBPool(e.pool()); err != nil {
				bad("%v", err)
			}
			if e.Seq == 0 || e.Seq > doc.Seq {
				bad("pool %q has sequence number %d, outside 1-%d", e.Name, e.Seq, doc.Seq)
			}
		}
		re := lbPoolsDoc{Pools: slices.Clone(doc.Pools)}
		re.evalConflicts()
		for i, e := range doc.Pools {
			if c := re.Pools[i]; e.Conflicting != c.Conflicting || e.ConflictReason != c.ConflictReason {
				bad("pool %q: stored conflict (%v, %q) is not what its blocks give (%v, %q)", e.Name, e.Conflicting, e.ConflictReason, c.Conflicting, c.ConflictReason)
			}
		}
		svcs := map[string]lbSvcRecord{}
		err = l.scanServices(tx, func(k string, rec lbSvcRecord) error {
			if k != l.svcKey(rec.Service) {
				bad("key %s holds the allocation of %q", k, rec.Service)
			}
			svcs[rec.Service] = rec
			return nil
		})
		if err != nil {
			return err
		}
		shares := map[string][]lbShareRec{}
		var serr error
		err = tx.Scan(l.sharePrefix(), "", func(k string, v []byte) bool {
			key, err := url.PathUnescape(strings.TrimPrefix(k, l.sharePrefix()))
			if err != nil {
				bad("key %s: %v", k, err)
				return true
			}
			var list []lbShareRec
			if serr = unmarshal(k, v, &list); serr != nil {
				return false
			}
			shares[key] = list
			return true
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return err
		}
		holder := map[netip.Addr]string{}
		var live []string
		for i := range doc.Pools {
			e := &doc.Pools[i]
			for _, s := range l.spaces(e) {
				live = append(live, s.sp.key)
				var n uint64
				err := s.sp.each(tx, func(a netip.Addr, r slotRecord) bool {
					n++
					if err := s.sp.contains(a); err != nil {
						bad("pool %q: held %v", e.Name, err)
					}
					if p, dup := holder[a]; dup {
						bad("%v is held in pools %q and %q", a, p, e.Name)
					}
					holder[a] = e.Name
					l.checkSlot(e.Name, a, r, svcs, shares, bad)
					return true
				})
				if err != nil {
					return err
				}
				used, err := s.sp.used(tx)
				if err != nil {
					return err
				}
				if used != n {
					bad("pool %q: block %v counts %d held, has %d", e.Name, s.block, used, n)
				}
			}
		}
		for _, rec := range svcs {
			if err := l.checkAllocation(tx, &doc, rec); err != nil {
				bad("%v", err)
			}
		}
		for key, list := range shares {
			if len(list) == 0 {
				bad("sharing key %q has an empty list", key)
			}
			for _, sh := range list {
				e := doc.find(sh.Pool)
				if e == nil {
					bad("sharing key %q lists %v in pool %q, which does not exist", key, sh.Addr, sh.Pool)
					continue
				}
				s, ok := l.spaceOf(e, sh.Addr)
				if !ok {
					bad("sharing key %q lists %v in pool %q, which has no block with it", key, sh.Addr, sh.Pool)
					continue
				}
				r, held, err := s.sp.get(tx, sh.Addr)
				if err != nil {
					return err
				}
				if !held || r.Owner != lbSharePrefix+key {
					bad("sharing key %q lists %v in pool %q, which that key does not hold", key, sh.Addr, sh.Pool)
				}
			}
		}
		return tx.Scan(l.root()+"pool/", "", func(k string, _ []byte) bool {
			if !slices.ContainsFunc(live, func(p string) bool { return strings.HasPrefix(k, p) }) {
				bad("stray key %s", k)
			}
			return true
		})
	})
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return fmt.Errorf("check: %d problems: %s", len(problems), strings.Join(problems, "; "))
	}
	return nil
}

// checkSlot checks a held slot against the services and sharing index.
func (l *LBIPAM) checkSlot(pool string, a netip.Addr, r slotRecord, svcs map[string]lbSvcRecord, shares map[string][]lbShareRec, bad func(string, ...any)) {
	key, shared := strings.CutPrefix(r.Owner, lbSharePrefix)
	if !shared {
		rec, ok := svcs[r.Owner]
		switch {
		case !ok:
			bad("%v is held by %q, which has no allocation", a, r.Owner)
		case rec.Pool != pool || rec.SharingKey != "" || !slices.Contains(rec.Addrs, a):
			bad("%v is held in pool %q by %s, whose allocation is %v from %q with sharing key %q", a, pool, r.Owner, rec.Addrs, rec.Pool, rec.SharingKey)
		}
		return
	}
	if !slices.Contains(shares[key], lbShareRec{Addr: a, Pool: pool}) {
		bad("%v is held by sharing key %q, whose index does not list it", a, key)
	}
	ms, err := decodeMembers(a, r)
	if err != nil {
		bad("%v", err)
		return
	}
	if len(ms) == 0 {
		bad("%v is held by sharing key %q with no service", a, key)
	}
	for i, m := range ms {
		if err := memberClash(ms[:i], "", m.Ports, a); err != nil {
			bad("%s on %v: %v", m.Service, a, err)
		}
		rec, ok := svcs[m.Service]
		switch {
		case !ok:
			bad("%v is shared by %q, which has no allocation", a, m.Service)
		case rec.Pool != pool || rec.SharingKey != key || !slices.Contains(rec.Addrs, a) || !slices.Equal(rec.Ports, m.Ports):
			bad("%v is shared in pool %q by %s with key %q, ports %v, whose allocation is %v from %q with key %q, ports %v", a, pool, m.Service, key, m.Ports, rec.Addrs, rec.Pool, rec.SharingKey, rec.Ports)
		}
	}
}

// checkAllocation checks that a service's addresses are held for it.
func (l *LBIPAM) checkAllocation(tx Txn, doc *lbPoolsDoc, rec lbSvcRecord) error {
	if err := checkService(rec.Service); err != nil {
		return err
	}
	e := doc.find(rec.Pool)
	if e == nil {
		return fmt.Errorf("%s holds %v from pool %q, which does not exist", rec.Service, rec.Addrs, rec.Pool)
	}
	if len(rec.Addrs) == 0 || len(rec.Addrs) > 2 || len(rec.Addrs) == 2 && (!rec.Addrs[0].Is4() || rec.Addrs[1].Is4()) {
		return fmt.Errorf("%s holds %v; want one address per family, IPv4 first", rec.Service, rec.Addrs)
	}
	for _, a := range rec.Addrs {
		s, ok := l.spaceOf(e, a)
		if !ok {
			return fmt.Errorf("%s holds %v, which is in no block of pool %q", rec.Service, a, rec.Pool)
		}
		r, held, err := s.sp.get(tx, a)
		if err != nil {
			return err
		}
		owner := rec.Service
		if rec.SharingKey != "" {
			owner = lbSharePrefix + rec.SharingKey
		}
		if !held || r.Owner != owner {
			return fmt.Errorf("%s lists %v, which is held by %q", rec.Service, a, r.Owner)
		}
		if rec.SharingKey != "" {
			ms, err := decodeMembers(a, r)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(ms, func(m lbMember) bool { return m.Service == rec.Service }) {
				return fmt.Errorf("%s lists %v, whose sharing services do not include it", rec.Service, a)
			}
		}
	}
	return nil
}
