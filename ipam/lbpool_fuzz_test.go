package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/netblocks/netblocks/ipam"
)

// The fuzzed pools. a and c do not overlap; b overlaps both, so which of
// them conflicts depends on the order they were created in.
var lbFuzzPools = map[string][]ipam.LBBlock{
	"a": {lbCIDR("10.0.0.0/29"), lbCIDR("fd00::/126")},                    // 10.0.0.0-7, fd00::0-3
	"b": {lbRange("10.0.0.6", "10.0.0.9"), lbRange("fd00::2", "fd00::5")}, // overlaps a and c
	"c": {lbCIDR("10.0.0.8/30"), lbCIDR("fd00::4/126")},                   // 10.0.0.8-11, fd00::4-7
}

// lbFuzzAddrs are the addresses specific requests ask for.
var lbFuzzAddrs = func() []netip.Addr {
	var out []netip.Addr
	for i := range 13 {
		out = append(out, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
	}
	for i := range 9 {
		out = append(out, netip.MustParseAddr(fmt.Sprintf("fd00::%d", i)))
	}
	return out
}()

// lbModel is what the LB IPAM should hold.
type lbModel struct {
	pools []*lbModelPool // creation order
	held  map[netip.Addr]*lbModelHold
	svcs  map[string]*ipam.LBAllocation
}

type lbModelPool struct {
	ipam.LBPool
	conflicting bool
}

type lbModelHold struct {
	pool    string
	key     string   // "": held by services[0] alone
	members []string // services on the address
}

func (m *lbModel) find(name string) *lbModelPool {
	for _, p := range m.pools {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func lbBounds(b ipam.LBBlock) (lo, hi netip.Addr) {
	if !b.CIDR.IsValid() {
		return b.Start, b.Stop
	}
	lo = b.CIDR.Addr()
	hi = lo
	for n := lo; b.CIDR.Contains(n); n = n.Next() {
		hi = n
	}
	return lo, hi
}

func lbIn(a, lo, hi netip.Addr) bool {
	return a.Is4() == lo.Is4() && a.Compare(lo) >= 0 && a.Compare(hi) <= 0
}

func (m *lbModel) evalConflicts() {
	for i, p := range m.pools {
		p.conflicting = false
		for _, q := range m.pools[:i] {
			if q.conflicting {
				continue
			}
			for _, x := range p.Blocks {
				xlo, xhi := lbBounds(x)
				for _, y := range q.Blocks {
					ylo, yhi := lbBounds(y)
					if lbIn(xlo, ylo, yhi) || lbIn(ylo, xlo, xhi) {
						p.conflicting = true
					}
				}
			}
			if p.conflicting {
				break
			}
		}
	}
}

// usable returns the addresses of p that it hands out.
func (p *lbModelPool) usable(v4 bool) []netip.Addr {
	var out []netip.Addr
	for _, b := range p.Blocks {
		lo, hi := lbBounds(b)
		if lo.Is4() != v4 {
			continue
		}
		if p.ReserveFirstLastIPs && b.CIDR.IsValid() && b.CIDR.Bits() < lo.BitLen()-1 {
			lo, hi = lo.Next(), hi.Prev()
		}
		for a := lo; a.Compare(hi) <= 0; a = a.Next() {
			out = append(out, a)
		}
	}
	return out
}

func (p *lbModelPool) bounds(a netip.Addr) bool {
	return slices.ContainsFunc(p.Blocks, func(b ipam.LBBlock) bool { lo, hi := lbBounds(b); return lbIn(a, lo, hi) })
}

func (p *lbModelPool) has(v4 bool) bool {
	return slices.ContainsFunc(p.Blocks, func(b ipam.LBBlock) bool { lo, _ := lbBounds(b); return lo.Is4() == v4 })
}

// clashes reports whether a service on a shared address, other than self,
// has one of ports.
func (m *lbModel) clashes(h *lbModelHold, self string, ports []ipam.ServicePort) bool {
	for _, s := range h.members {
		if s == self {
			continue
		}
		for _, p := range m.svcs[s].Ports {
			if slices.Contains(ports, p) {
				return true
			}
		}
	}
	return false
}

func (m *lbModel) joinable(pool, key string, a netip.Addr, ports []ipam.ServicePort) bool {
	h := m.held[a]
	return h != nil && key != "" && h.key == key && h.pool == pool && !m.clashes(h, "", ports)
}

func (m *lbModel) release(svc string) {
	al := m.svcs[svc]
	for _, a := range al.Addrs {
		h := m.held[a]
		h.members = slices.DeleteFunc(h.members, func(s string) bool { return s == svc })
		if len(h.members) == 0 {
			delete(m.held, a)
		}
	}
	delete(m.svcs, svc)
}

func (m *lbModel) releasePool(name string) []ipam.LBAllocation {
	var out []ipam.LBAllocation
	for _, s := range slices.Sorted(maps.Keys(m.svcs)) {
		if m.svcs[s].Pool == name {
			out = append(out, *m.svcs[s])
			m.release(s)
		}
	}
	return out
}

// lbOutcome is what the model expects of an Allocate.
type lbOutcome struct {
	err     error // nil: success; errOther: some other error
	pool    string
	addrsOK func(fam int, a netip.Addr) bool // for success
	exact   []netip.Addr
}

var errOther = errors.New("an error")

// predict returns what Allocate(req) should do. req is normalized (Ports
// sorted, Addrs IPv4 first).
func (m *lbModel) predict(req ipam.LBRequest) lbOutcome {
	if cur := m.svcs[req.Service]; cur != nil {
		ok := (req.Pool == "" || req.Pool == cur.Pool) && req.SharingKey == cur.SharingKey
		if ok && len(req.Addrs) > 0 {
			ok = slices.Equal(req.Addrs, cur.Addrs)
		} else if ok {
			var fams []bool
			for _, a := range cur.Addrs {
				fams = append(fams, a.Is4())
			}
			switch req.Family {
			case ipam.FamilyIPv4:
				ok = slices.Equal(fams, []bool{true})
			case ipam.FamilyIPv6:
				ok = slices.Equal(fams, []bool{false})
			case ipam.FamilyDual:
				ok = slices.Equal(fams, []bool{true, false})
			}
		}
		if !ok {
			return lbOutcome{err: errOther}
		}
		if cur.SharingKey != "" && !slices.Equal(cur.Ports, req.Ports) {
			for _, a := range cur.Addrs {
				if m.clashes(m.held[a], cur.Service, req.Ports) {
					return lbOutcome{err: ipam.ErrInUse}
				}
			}
		}
		return lbOutcome{pool: cur.Pool, exact: cur.Addrs}
	}
	var pools []*lbModelPool
	if req.Pool != "" {
		p := m.find(req.Pool)
		if p == nil || p.Disabled || p.conflicting {
			return lbOutcome{err: errOther}
		}
		pools = []*lbModelPool{p}
	} else {
		for _, p := range m.pools {
			if !p.Disabled && !p.conflicting {
				pools = append(pools, p)
			}
		}
		if len(pools) == 0 {
			return lbOutcome{err: errOther}
		}
	}
	if len(req.Addrs) > 0 {
		var pool *lbModelPool
		for _, a := range req.Addrs {
			i := slices.IndexFunc(pools, func(p *lbModelPool) bool { return p.bounds(a) })
			if i < 0 || pool != nil && pool != pools[i] {
				return lbOutcome{err: errOther}
			}
			pool = pools[i]
			if !slices.Contains(pool.usable(a.Is4()), a) {
				return lbOutcome{err: errOther}
			}
			if m.held[a] != nil && !m.joinable(pool.Name, req.SharingKey, a, req.Ports) {
				return lbOutcome{err: ipam.ErrInUse}
			}
		}
		return lbOutcome{pool: pool.Name, exact: req.Addrs}
	}
	var fams []bool
	switch req.Family {
	case ipam.FamilyIPv4:
		fams = []bool{true}
	case ipam.FamilyIPv6:
		fams = []bool{false}
	case ipam.FamilyDual:
		fams = []bool{true, false}
	default:
		fams = []bool{slices.ContainsFunc(pools, func(p *lbModelPool) bool { return p.has(true) })}
	}
	joinIn := func(p *lbModelPool, v4 bool) bool {
		for _, a := range p.usable(v4) {
			if m.joinable(p.Name, req.SharingKey, a, req.Ports) {
				return true
			}
		}
		return false
	}
	freeIn := func(p *lbModelPool, v4 bool) bool {
		return slices.ContainsFunc(p.usable(v4), func(a netip.Addr) bool { return m.held[a] == nil })
	}
	if req.SharingKey != "" {
		for _, p := range pools {
			if !slices.ContainsFunc(fams, func(v4 bool) bool { return !joinIn(p, v4) }) {
				return lbOutcome{pool: p.Name, addrsOK: func(_ int, a netip.Addr) bool {
					return m.joinable(p.Name, req.SharingKey, a, req.Ports)
				}}
			}
		}
	}
	anyHas := false
	for _, p := range pools {
		if !p.has(fams[0]) || !p.has(fams[len(fams)-1]) {
			continue
		}
		anyHas = true
		fits := true
		for _, v4 := range fams {
			fits = fits && (joinIn(p, v4) || freeIn(p, v4))
		}
		if !fits {
			continue
		}
		return lbOutcome{pool: p.Name, addrsOK: func(i int, a netip.Addr) bool {
			if a.Is4() != fams[i] || !slices.Contains(p.usable(fams[i]), a) {
				return false
			}
			if joinIn(p, fams[i]) {
				return m.joinable(p.Name, req.SharingKey, a, req.Ports)
			}
			return m.held[a] == nil
		}}
	}
	if anyHas {
		return lbOutcome{err: ipam.ErrExhausted}
	}
	return lbOutcome{err: errOther}
}

// apply records a successful allocation.
func (m *lbModel) apply(al ipam.LBAllocation) {
	if cur := m.svcs[al.Service]; cur != nil {
		cur.Ports = al.Ports
		return
	}
	for _, a := range al.Addrs {
		h := m.held[a]
		if h == nil {
			h = &lbModelHold{pool: al.Pool, key: al.SharingKey}
			m.held[a] = h
		}
		h.members = append(h.members, al.Service)
	}
	m.svcs[al.Service] = &al
}

// FuzzLBIPAM runs a sequence of operations decoded from the input (allocate
// with or without a sharing key, ports or specific addresses; release; GC;
// toggle Disabled and ReserveFirstLastIPs; add and delete overlapping
// pools) against a model, checking after each one that Allocate succeeds or
// fails as the model says and hands out what it allows, that no address is
// held by two services that do not share it, that List and each pool's
// Used and Conflicting match the model, and that Check passes.
func FuzzLBIPAM(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 0, 0, 2, 0, 3, 1, 0})
	f.Add([]byte{1, 0x00, 0, 1, 0x01, 0, 1, 0x08, 0, 1, 0x12, 0, 3, 0, 0, 3, 1, 0})
	// c holds addresses b overlaps; deleting a makes b non-conflicting and
	// c conflicting: b must not hand c's addresses out.
	f.Add([]byte{7, 1, 0, 6, 0, 0, 7, 1, 0, 0, 0x60, 0, 0, 0x61, 0, 0, 0x62, 0, 7, 0, 0, 0, 0x03, 0, 0, 0x04, 0, 0, 0x05, 0, 0, 0x06, 0})
	f.Add([]byte{2, 0, 8, 2, 1, 0x12, 8, 0, 0, 5, 0, 0, 0, 2, 0, 5, 0, 0, 4, 0x05, 0})
	f.Add([]byte{1, 0x18, 3, 1, 0x19, 3, 1, 0x1a, 3, 2, 0x03, 0x13, 0, 0x1b, 0, 3, 0x18, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		l, err := ipam.NewLBIPAM(ipam.LBConfig{Store: ipam.NewMemoryStore()})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		m := &lbModel{held: map[netip.Addr]*lbModelHold{}, svcs: map[string]*ipam.LBAllocation{}}
		setPool := func(p ipam.LBPool) error {
			_, err := l.SetPool(ctx, p)
			if err != nil {
				return err
			}
			if mp := m.find(p.Name); mp != nil {
				mp.LBPool = p
			} else {
				m.pools = append(m.pools, &lbModelPool{LBPool: p})
			}
			m.evalConflicts()
			return nil
		}
		for _, name := range []string{"a", "c"} {
			if err := setPool(ipam.LBPool{Name: name, Blocks: lbFuzzPools[name], ReserveFirstLastIPs: name == "a"}); err != nil {
				t.Fatal(err)
			}
		}
		poolNames := []string{"", "a", "b", "c"}
		svc := func(b byte) string { return fmt.Sprintf("ns/s%d", b%8) }
		for step := 0; len(data) >= 3 && step < 64; step++ {
			op, x, y := data[0]%9, data[1], data[2]
			data = data[3:]
			var desc string
			switch op {
			case 0, 1, 2: // allocate
				req := ipam.LBRequest{Service: svc(x), Family: ipam.Family(x >> 3 % 4), Pool: poolNames[x>>5%4]}
				if op == 1 || op == 2 && y&0x80 != 0 {
					req.SharingKey = fmt.Sprintf("k%d", y%2)
					if port := y >> 1 % 4; port < 3 {
						req.Ports = []ipam.ServicePort{{Port: 80 + uint16(port), Protocol: "TCP"}}
					}
				}
				if op == 2 {
					req.Pool = poolNames[y>>3%2] // "" or "a"
					req.Addrs = []netip.Addr{lbFuzzAddrs[int(x>>3)%len(lbFuzzAddrs)]}
					if y&0x40 != 0 {
						a6 := lbFuzzAddrs[13+int(y>>4%4)]
						if req.Addrs[0].Is4() {
							req.Addrs = append(req.Addrs, a6)
						}
					}
				}
				desc = fmt.Sprintf("Allocate(%+v)", req)
				want := m.predict(req)
				al, err := l.Allocate(ctx, req)
				switch {
				case want.err == nil && err != nil:
					t.Fatalf("%s: %v, want success from %q", desc, err, want.pool)
				case want.err != nil && err == nil:
					t.Fatalf("%s = %+v, want an error (%v)", desc, al, want.err)
				case want.err != nil:
					if want.err != errOther && !errors.Is(err, want.err) {
						t.Fatalf("%s: %v, want %v", desc, err, want.err)
					}
					if want.err == errOther && (errors.Is(err, ipam.ErrExhausted) || errors.Is(err, ipam.ErrInUse)) {
						t.Fatalf("%s: %v, want neither ErrExhausted nor ErrInUse", desc, err)
					}
				default:
					if al.Pool != want.pool {
						t.Fatalf("%s = %+v, want pool %q", desc, al, want.pool)
					}
					if want.exact != nil && !slices.Equal(al.Addrs, want.exact) {
						t.Fatalf("%s = %v, want %v", desc, al.Addrs, want.exact)
					}
					if want.addrsOK != nil {
						for i, a := range al.Addrs {
							if !want.addrsOK(i, a) {
								t.Fatalf("%s = %v: %v is not one the model allows", desc, al.Addrs, a)
							}
						}
					}
					if want.exact == nil && len(al.Addrs) != map[bool]int{true: 2, false: 1}[req.Family == ipam.FamilyDual] {
						t.Fatalf("%s = %v: wrong number of addresses", desc, al.Addrs)
					}
					m.apply(al)
				}
			case 3: // release
				s := svc(x)
				desc = "Release(" + s + ")"
				al, ok, err := l.Release(ctx, s)
				if err != nil {
					t.Fatalf("%s: %v", desc, err)
				}
				want := m.svcs[s]
				if ok != (want != nil) || ok && !cmp.Equal(al, *want, lbCmp) {
					t.Fatalf("%s = %+v, %v; model %+v", desc, al, ok, want)
				}
				if ok {
					m.release(s)
				}
			case 4: // GC
				var valid []string
				for i := range 8 {
					if x&(1<<i) != 0 {
						valid = append(valid, svc(byte(i)))
					}
				}
				desc = fmt.Sprintf("GC(%v)", valid)
				got, err := l.GC(ctx, valid)
				if err != nil {
					t.Fatalf("%s: %v", desc, err)
				}
				var want []ipam.LBAllocation
				for _, s := range slices.Sorted(maps.Keys(m.svcs)) {
					if !slices.Contains(valid, s) {
						want = append(want, *m.svcs[s])
						m.release(s)
					}
				}
				if diff := cmp.Diff(want, got, lbCmp); diff != "" {
					t.Fatalf("%s (-model +got):\n%s", desc, diff)
				}
			case 5, 8: // toggle Disabled, ReserveFirstLastIPs
				mp := m.find(poolNames[1+int(x%3)])
				if mp == nil {
					continue
				}
				p := mp.LBPool
				p.Blocks = slices.Clone(p.Blocks)
				if op == 5 {
					p.Disabled = !p.Disabled
				} else {
					p.ReserveFirstLastIPs = !p.ReserveFirstLastIPs
				}
				desc = fmt.Sprintf("SetPool(%+v)", p)
				refuse := false
				for a, h := range m.held {
					if h.pool == p.Name && !slices.Contains((&lbModelPool{LBPool: p}).usable(a.Is4()), a) {
						refuse = true
					}
				}
				if err := setPool(p); (err != nil) != refuse {
					t.Fatalf("%s: %v, want refused %v", desc, err, refuse)
				}
			case 6, 7: // add or delete b (6), a or c (7)
				name := "b"
				if op == 7 {
					name = poolNames[1+2*int(x%2)]
				}
				if m.find(name) == nil {
					desc = "SetPool(" + name + ")"
					if err := setPool(ipam.LBPool{Name: name, Blocks: lbFuzzPools[name], ReserveFirstLastIPs: y%2 == 1}); err != nil {
						t.Fatalf("%s: %v", desc, err)
					}
					break
				}
				desc = "DeletePool(" + name + ")"
				got, err := l.DeletePool(ctx, name)
				if err != nil {
					t.Fatalf("%s: %v", desc, err)
				}
				want := m.releasePool(name)
				m.pools = slices.DeleteFunc(m.pools, func(p *lbModelPool) bool { return p.Name == name })
				m.evalConflicts()
				if diff := cmp.Diff(want, got, lbCmp); diff != "" {
					t.Fatalf("%s (-model +got):\n%s", desc, diff)
				}
			}
			t.Log(desc) // the history, shown when a later step fails
			lbFuzzCompare(t, l, m, desc)
		}
	})
}

// lbFuzzCompare checks the LB IPAM against the model after op.
func lbFuzzCompare(t *testing.T, l *ipam.LBIPAM, m *lbModel, op string) {
	t.Helper()
	ctx := context.Background()
	if err := l.Check(ctx); err != nil {
		t.Fatalf("after %s: %v", op, err)
	}
	list, err := l.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	holders := map[netip.Addr][]ipam.LBAllocation{}
	for _, al := range list {
		for _, a := range al.Addrs {
			for _, o := range holders[a] {
				if o.SharingKey == "" || o.SharingKey != al.SharingKey {
					t.Fatalf("after %s: %v is held by %s and %s, which do not share it", op, a, o.Service, al.Service)
				}
				if p, ok := lbPortClash(o.Ports, al.Ports); ok {
					t.Fatalf("after %s: %s and %s share %v with port %v", op, o.Service, al.Service, a, p)
				}
			}
			holders[a] = append(holders[a], al)
		}
	}
	var want []ipam.LBAllocation
	for _, s := range slices.Sorted(maps.Keys(m.svcs)) {
		want = append(want, *m.svcs[s])
	}
	if diff := cmp.Diff(want, list, lbCmp); diff != "" {
		t.Fatalf("after %s: List (-model +got):\n%s", op, diff)
	}
	pools, err := l.Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names, wantNames []string
	for _, p := range pools {
		names = append(names, p.Pool.Name)
		mp := m.find(p.Pool.Name)
		if mp == nil {
			continue
		}
		var used uint64
		for _, h := range m.held {
			if h.pool == p.Pool.Name {
				used++
			}
		}
		if p.Used != used || p.Conflicting != mp.conflicting || p.Pool.Disabled != mp.Disabled || p.Available != p.Total-p.Used {
			t.Fatalf("after %s: pool %s: Used %d, Conflicting %v (%s), Disabled %v; model %d, %v, %v", op, p.Pool.Name, p.Used, p.Conflicting, p.ConflictReason, p.Pool.Disabled, used, mp.conflicting, mp.Disabled)
		}
	}
	for _, p := range m.pools {
		wantNames = append(wantNames, p.Name)
	}
	if !slices.Equal(names, wantNames) {
		t.Fatalf("after %s: pools %s, model %s", op, strings.Join(names, ","), strings.Join(wantNames, ","))
	}
}

func lbPortClash(a, b []ipam.ServicePort) (ipam.ServicePort, bool) {
	for _, p := range a {
		if slices.Contains(b, p) {
			return p, true
		}
	}
	return ipam.ServicePort{}, false
}
