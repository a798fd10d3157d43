package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/netblocks/netblocks/ipam"
)

// lbCmp makes go-cmp compare netip values by value.
var lbCmp = cmp.Options{
	cmp.Comparer(func(x, y netip.Addr) bool { return x == y }),
	cmp.Comparer(func(x, y netip.Prefix) bool { return x == y }),
}

func lbAddrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func lbCIDR(s string) ipam.LBBlock { return ipam.LBBlock{CIDR: netip.MustParsePrefix(s)} }

func lbRange(start, stop string) ipam.LBBlock {
	b := ipam.LBBlock{Start: netip.MustParseAddr(start)}
	if stop != "" {
		b.Stop = netip.MustParseAddr(stop)
	}
	return b
}

func lbSvc(i int) string { return fmt.Sprintf("ns/svc-%d", i) }

// lbEnv runs LB IPAM operations that must succeed, and checks the stored
// state after each change.
type lbEnv struct {
	t testing.TB
	l *ipam.LBIPAM
}

func newLBEnv(t testing.TB, s ipam.Store) lbEnv {
	t.Helper()
	if s == nil {
		s = ipam.NewMemoryStore()
		t.Cleanup(func() { s.Close() })
	}
	l, err := ipam.NewLBIPAM(ipam.LBConfig{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return lbEnv{t, l}
}

func (e lbEnv) check() {
	e.t.Helper()
	if err := e.l.Check(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

func (e lbEnv) setPool(p ipam.LBPool) ipam.LBPoolStatus {
	e.t.Helper()
	st, err := e.l.SetPool(context.Background(), p)
	if err != nil {
		e.t.Fatal(err)
	}
	e.check()
	return st
}

func (e lbEnv) deletePool(name string) []ipam.LBAllocation {
	e.t.Helper()
	got, err := e.l.DeletePool(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.check()
	return got
}

func (e lbEnv) alloc(req ipam.LBRequest) ipam.LBAllocation {
	e.t.Helper()
	al, err := e.l.Allocate(context.Background(), req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.check()
	return al
}

// allocErr runs a request that must fail, and checks that it changed
// nothing.
func (e lbEnv) allocErr(req ipam.LBRequest) error {
	e.t.Helper()
	before := e.state()
	al, err := e.l.Allocate(context.Background(), req)
	if err == nil {
		e.t.Fatalf("Allocate(%+v) = %+v, want an error", req, al)
	}
	if diff := cmp.Diff(before, e.state(), lbCmp); diff != "" {
		e.t.Fatalf("failed Allocate(%+v) changed the state (-before +after):\n%s", req, diff)
	}
	e.check()
	return err
}

func (e lbEnv) release(svc string) ipam.LBAllocation {
	e.t.Helper()
	al, ok, err := e.l.Release(context.Background(), svc)
	if err != nil || !ok {
		e.t.Fatalf("Release(%s) = %v, %v", svc, ok, err)
	}
	e.check()
	return al
}

func (e lbEnv) pools() []ipam.LBPoolStatus {
	e.t.Helper()
	ps, err := e.l.Pools(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return ps
}

func (e lbEnv) pool(name string) ipam.LBPoolStatus {
	e.t.Helper()
	for _, p := range e.pools() {
		if p.Pool.Name == name {
			return p
		}
	}
	e.t.Fatalf("no pool %q", name)
	return ipam.LBPoolStatus{}
}

func (e lbEnv) list() []ipam.LBAllocation {
	e.t.Helper()
	al, err := e.l.List(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return al
}

type lbState struct {
	Pools []ipam.LBPoolStatus
	List  []ipam.LBAllocation
}

func (e lbEnv) state() lbState { return lbState{e.pools(), e.list()} }

func TestLBPoolTotals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		blocks []ipam.LBBlock
		rfl    bool
		want   uint64
	}{
		{"29Reserved", []ipam.LBBlock{lbCIDR("10.0.0.0/29")}, true, 6},
		{"29", []ipam.LBBlock{lbCIDR("10.0.0.0/29")}, false, 8},
		{"Range", []ipam.LBBlock{lbRange("10.0.10.100", "10.0.10.200")}, false, 101},
		{"RangeReserved", []ipam.LBBlock{lbRange("10.0.10.100", "10.0.10.200")}, true, 101},
		{"OneAddress", []ipam.LBBlock{lbRange("10.0.10.1", "")}, false, 1},
		{"32Reserved", []ipam.LBBlock{lbCIDR("10.0.0.1/32")}, true, 1},
		{"31Reserved", []ipam.LBBlock{lbCIDR("10.0.0.0/31")}, true, 2},
		{"30Reserved", []ipam.LBBlock{lbCIDR("10.0.0.0/30")}, true, 2},
		{"125", []ipam.LBBlock{lbCIDR("fd00::/125")}, false, 8},
		{"125Reserved", []ipam.LBBlock{lbCIDR("fd00::/125")}, true, 6},
		{"128Reserved", []ipam.LBBlock{lbCIDR("fd00::1/128")}, true, 1},
		{"Huge", []ipam.LBBlock{lbCIDR("fd00::/56")}, false, 1<<64 - 1},
		{"Several", []ipam.LBBlock{lbCIDR("10.0.0.0/29"), lbRange("10.0.1.1", "10.0.1.2"), lbCIDR("fd00::/126")}, true, 6 + 2 + 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLBEnv(t, nil)
			st := e.setPool(ipam.LBPool{Name: "p", Blocks: tc.blocks, ReserveFirstLastIPs: tc.rfl})
			if st.Total != tc.want || st.Used != 0 || st.Available != tc.want {
				t.Errorf("Total, Used, Available = %d, %d, %d; want %d, 0, %d", st.Total, st.Used, st.Available, tc.want, tc.want)
			}
			if diff := cmp.Diff([]ipam.LBPoolStatus{st}, e.pools(), lbCmp); diff != "" {
				t.Errorf("Pools differs from SetPool's status (-set +pools):\n%s", diff)
			}
		})
	}
}

func TestLBExhaustion(t *testing.T) {
	ctx := context.Background()
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29")}, ReserveFirstLastIPs: true})
	seen := map[netip.Addr]string{}
	for i := range 6 {
		al := e.alloc(ipam.LBRequest{Service: lbSvc(i)})
		if len(al.Addrs) != 1 || al.Pool != "p" {
			t.Fatalf("allocation %+v", al)
		}
		a := al.Addrs[0]
		if a == netip.MustParseAddr("10.0.0.0") || a == netip.MustParseAddr("10.0.0.7") {
			t.Errorf("%s got %v, which ReserveFirstLastIPs keeps out", lbSvc(i), a)
		}
		if s, dup := seen[a]; dup {
			t.Errorf("%v handed to %s and %s", a, s, lbSvc(i))
		}
		seen[a] = lbSvc(i)
	}
	if err := e.allocErr(ipam.LBRequest{Service: lbSvc(6)}); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("7th allocation: %v, want ErrExhausted", err)
	}
	if st := e.pool("p"); st.Used != 6 || st.Available != 0 {
		t.Errorf("Used, Available = %d, %d; want 6, 0", st.Used, st.Available)
	}
	freed := e.release(lbSvc(2))
	if got := e.alloc(ipam.LBRequest{Service: lbSvc(6)}); !slices.Equal(got.Addrs, freed.Addrs) {
		t.Errorf("after release of %v, got %v", freed.Addrs, got.Addrs)
	}
	if _, ok, err := e.l.Release(ctx, lbSvc(2)); ok || err != nil {
		t.Errorf("second Release = %v, %v; want false, nil", ok, err)
	}
	if _, err := e.l.Get(ctx, lbSvc(2)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Get of released service: %v, want os.ErrNotExist", err)
	}
	usage, err := e.l.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []ipam.Usage{{Grouping: "LB Pool", CIDR: "10.0.0.0/29", Total: 6, InUse: 6}}
	if diff := cmp.Diff(want, usage); diff != "" {
		t.Errorf("Usage (-want +got):\n%s", diff)
	}
}

func TestLBIdempotent(t *testing.T) {
	ctx := context.Background()
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "a", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29"), lbCIDR("fd00::/125")}})
	e.setPool(ipam.LBPool{Name: "b", Blocks: []ipam.LBBlock{lbCIDR("10.0.1.0/29")}})
	first := e.alloc(ipam.LBRequest{Service: "ns/a", Ports: []ipam.ServicePort{{Port: 80, Protocol: "TCP"}}})
	for _, req := range []ipam.LBRequest{
		{Service: "ns/a"},
		{Service: "ns/a", Pool: "a", Family: ipam.FamilyIPv4},
		{Service: "ns/a", Addrs: first.Addrs},
	} {
		got := e.alloc(req)
		if !slices.Equal(got.Addrs, first.Addrs) || got.Pool != "a" {
			t.Errorf("Allocate(%+v) = %+v, want %v from a", req, got, first.Addrs)
		}
	}
	if got := e.alloc(ipam.LBRequest{Service: "ns/a", Ports: []ipam.ServicePort{{Port: 443, Protocol: "TCP"}, {Port: 80, Protocol: "TCP"}}}); !cmp.Equal(got.Ports, []ipam.ServicePort{{Port: 80, Protocol: "TCP"}, {Port: 443, Protocol: "TCP"}}) {
		t.Errorf("ports after update: %v", got.Ports)
	}
	for _, req := range []ipam.LBRequest{
		{Service: "ns/a", Pool: "b"},
		{Service: "ns/a", Family: ipam.FamilyIPv6},
		{Service: "ns/a", Family: ipam.FamilyDual},
		{Service: "ns/a", Addrs: lbAddrs("10.0.0.5")},
		{Service: "ns/a", SharingKey: "k"},
	} {
		if err := e.allocErr(req); !strings.Contains(err.Error(), "release it first") {
			t.Errorf("Allocate(%+v): %v, want an error saying to release first", req, err)
		}
	}
	got, err := e.l.Get(ctx, "ns/a")
	if err != nil {
		t.Fatal(err)
	}
	want := ipam.LBAllocation{Service: "ns/a", Pool: "a", Addrs: first.Addrs, Ports: []ipam.ServicePort{{Port: 80, Protocol: "TCP"}, {Port: 443, Protocol: "TCP"}}}
	if diff := cmp.Diff(want, got, lbCmp); diff != "" {
		t.Errorf("Get (-want +got):\n%s", diff)
	}
}

func TestLBDisabled(t *testing.T) {
	e := newLBEnv(t, nil)
	p := ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/30")}}
	e.setPool(p)
	held := e.alloc(ipam.LBRequest{Service: "ns/a"})
	p.Disabled = true
	if st := e.setPool(p); !st.Pool.Disabled || st.Used != 1 {
		t.Fatalf("status after disabling: %+v", st)
	}
	e.allocErr(ipam.LBRequest{Service: "ns/b"})
	e.allocErr(ipam.LBRequest{Service: "ns/b", Pool: "p"})
	e.allocErr(ipam.LBRequest{Service: "ns/b", Addrs: lbAddrs("10.0.0.3")})
	if got := e.alloc(ipam.LBRequest{Service: "ns/a"}); !slices.Equal(got.Addrs, held.Addrs) {
		t.Errorf("existing allocation in a disabled pool: %v, want %v", got.Addrs, held.Addrs)
	}
	p.Disabled = false
	e.setPool(p)
	if got := e.alloc(ipam.LBRequest{Service: "ns/b"}); got.Pool != "p" {
		t.Errorf("after re-enabling: %+v", got)
	}
}

func TestLBConflicts(t *testing.T) {
	ctx := context.Background()
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "a", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29")}})
	stB := e.setPool(ipam.LBPool{Name: "b", Blocks: []ipam.LBBlock{lbCIDR("10.0.1.0/30"), lbRange("10.0.0.6", "10.0.0.9")}})
	if !stB.Conflicting || !strings.Contains(stB.ConflictReason, `"a"`) || !strings.Contains(stB.ConflictReason, "10.0.0.6-10.0.0.9") || !strings.Contains(stB.ConflictReason, "10.0.0.0/29") {
		t.Errorf("b: Conflicting %v, reason %q; want it naming pool a and the blocks", stB.Conflicting, stB.ConflictReason)
	}
	// c overlaps only b, which is conflicting: c is not.
	if st := e.setPool(ipam.LBPool{Name: "c", Blocks: []ipam.LBBlock{lbCIDR("10.0.1.0/31")}}); st.Conflicting {
		t.Errorf("c conflicting: %s", st.ConflictReason)
	}
	if st := e.pool("a"); st.Conflicting {
		t.Errorf("a, the earlier pool, is conflicting: %s", st.ConflictReason)
	}
	if err := e.allocErr(ipam.LBRequest{Service: "ns/x", Pool: "b"}); !strings.Contains(err.Error(), "conflicting") {
		t.Errorf("allocate from b: %v", err)
	}
	e.allocErr(ipam.LBRequest{Service: "ns/x", Addrs: lbAddrs("10.0.0.9")})
	e.allocErr(ipam.LBRequest{Service: "ns/x", Addrs: lbAddrs("10.0.1.3")})
	a := netip.MustParsePrefix("10.0.0.0/29")
	c := netip.MustParsePrefix("10.0.1.0/31")
	for i := range 10 {
		al := e.alloc(ipam.LBRequest{Service: lbSvc(i)})
		if !a.Contains(al.Addrs[0]) && !c.Contains(al.Addrs[0]) {
			t.Errorf("%s got %v from %s, outside a and c", lbSvc(i), al.Addrs[0], al.Pool)
		}
	}
	e.allocErr(ipam.LBRequest{Service: "ns/x"})

	// Deleting a releases its services and clears b's conflict; c, created
	// after b, now conflicts with it.
	released := e.deletePool("a")
	if len(released) != 8 {
		t.Errorf("DeletePool released %d allocations, want 8", len(released))
	}
	for _, al := range released {
		if al.Pool != "a" {
			t.Errorf("DeletePool released %+v", al)
		}
	}
	if st := e.pool("b"); st.Conflicting {
		t.Errorf("b still conflicting after a was deleted: %s", st.ConflictReason)
	}
	if st := e.pool("c"); !st.Conflicting || !strings.Contains(st.ConflictReason, `"b"`) {
		t.Errorf("c: Conflicting %v, reason %q; want it conflicting with b", st.Conflicting, st.ConflictReason)
	}
	// c's two addresses are still held: b must not hand them out.
	stC := e.pool("c")
	if stC.Used != 2 {
		t.Fatalf("c uses %d, want 2", stC.Used)
	}
	seen := map[netip.Addr]bool{}
	for _, al := range e.list() {
		seen[al.Addrs[0]] = true
	}
	for i := 10; ; i++ {
		al, err := e.l.Allocate(ctx, ipam.LBRequest{Service: lbSvc(i)})
		if errors.Is(err, ipam.ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		e.check()
		if al.Pool != "b" || seen[al.Addrs[0]] {
			t.Fatalf("%s got %v from %s", lbSvc(i), al.Addrs, al.Pool)
		}
		seen[al.Addrs[0]] = true
	}
	if st := e.pool("b"); st.Used != 6 || st.Total != 8 {
		t.Errorf("b: Used %d, Total %d; want 6 of 8 (two are c's)", st.Used, st.Total)
	}
	if _, err := e.l.DeletePool(ctx, "a"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DeletePool of a missing pool: %v, want os.ErrNotExist", err)
	}
}

// An update of an earlier pool that overlaps addresses a later pool holds
// makes the later one conflicting; the earlier one must not hand those
// addresses out.
func TestLBConflictKeepsHeld(t *testing.T) {
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "a", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/30")}})
	e.setPool(ipam.LBPool{Name: "b", Blocks: []ipam.LBBlock{lbCIDR("10.0.1.0/30")}})
	held := e.alloc(ipam.LBRequest{Service: "ns/b", Addrs: lbAddrs("10.0.1.1")})
	st := e.setPool(ipam.LBPool{Name: "a", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/30"), lbCIDR("10.0.1.0/31")}})
	if st.Conflicting || !e.pool("b").Conflicting {
		t.Fatalf("a conflicting %v, b conflicting %v; want b only", st.Conflicting, e.pool("b").Conflicting)
	}
	if err := e.allocErr(ipam.LBRequest{Service: "ns/x", Addrs: held.Addrs}); !errors.Is(err, ipam.ErrInUse) {
		t.Errorf("asking a for b's address: %v, want ErrInUse", err)
	}
	for i := range 5 {
		al := e.alloc(ipam.LBRequest{Service: lbSvc(i)})
		if al.Addrs[0] == held.Addrs[0] {
			t.Fatalf("%s got %v, held by ns/b", lbSvc(i), al.Addrs[0])
		}
	}
	if err := e.allocErr(ipam.LBRequest{Service: "ns/x"}); !errors.Is(err, ipam.ErrExhausted) {
		t.Errorf("a full: %v, want ErrExhausted", err)
	}
	e.release("ns/b")
	if got := e.alloc(ipam.LBRequest{Service: "ns/x"}); got.Addrs[0] != held.Addrs[0] {
		t.Errorf("after ns/b's release, got %v, want %v", got.Addrs, held.Addrs)
	}
}

func TestLBSetPoolUpdate(t *testing.T) {
	e := newLBEnv(t, nil)
	p := ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29"), lbRange("10.0.1.5", "10.0.1.6")}}
	e.setPool(p)
	e.setPool(ipam.LBPool{Name: "q", Blocks: []ipam.LBBlock{lbCIDR("10.0.2.0/29")}})
	e.alloc(ipam.LBRequest{Service: "ns/a", Addrs: lbAddrs("10.0.1.6")})
	e.alloc(ipam.LBRequest{Service: "ns/b", Addrs: lbAddrs("10.0.0.7")})
	for _, tc := range []struct {
		name string
		pool ipam.LBPool
		want string
	}{
		{"RemoveHeldBlock", ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29")}}, "10.0.1.6"},
		{"ShrinkHeldBlock", ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29"), lbRange("10.0.1.5", "")}}, "10.0.1.6"},
		{"ReserveHeld", ipam.LBPool{Name: "p", Blocks: p.Blocks, ReserveFirstLastIPs: true}, "10.0.0.7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.state()
			_, err := e.l.SetPool(context.Background(), tc.pool)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("SetPool: %v, want an error naming %s", err, tc.want)
			}
			if diff := cmp.Diff(before, e.state(), lbCmp); diff != "" {
				t.Errorf("failed SetPool changed the state (-before +after):\n%s", diff)
			}
			e.check()
		})
	}
	e.release("ns/b")
	if st := e.setPool(ipam.LBPool{Name: "p", Blocks: p.Blocks, ReserveFirstLastIPs: true}); st.Total != 8 || st.Used != 1 {
		t.Errorf("with ReserveFirstLastIPs: %+v", st)
	}
	// The /29 removed (it holds nothing), a new block added: the held
	// address stays, and the pool keeps its place.
	st := e.setPool(ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbRange("10.0.1.5", "10.0.1.6"), lbCIDR("10.0.3.0/30")}})
	if st.Used != 1 || st.Total != 6 {
		t.Errorf("after update: %+v", st)
	}
	if ps := e.pools(); ps[0].Pool.Name != "p" || ps[1].Pool.Name != "q" {
		t.Errorf("order after update: %s, %s", ps[0].Pool.Name, ps[1].Pool.Name)
	}
	// The removed block starts afresh when it is added back.
	e.setPool(p)
	if got := e.alloc(ipam.LBRequest{Service: "ns/c", Pool: "p"}); got.Addrs[0] != netip.MustParseAddr("10.0.0.0") {
		t.Errorf("first address of a re-added block: %v", got.Addrs)
	}
}

func TestLBSpecificAddr(t *testing.T) {
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "a", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29"), lbCIDR("fd00::/125")}, ReserveFirstLastIPs: true})
	e.setPool(ipam.LBPool{Name: "b", Blocks: []ipam.LBBlock{lbCIDR("10.0.1.0/29"), lbCIDR("fd00:1::/125")}})
	e.setPool(ipam.LBPool{Name: "off", Blocks: []ipam.LBBlock{lbCIDR("10.0.2.0/29")}, Disabled: true})
	e.alloc(ipam.LBRequest{Service: "ns/holder", Addrs: lbAddrs("10.0.0.3")})
	for _, tc := range []struct {
		name    string
		req     ipam.LBRequest
		want    *ipam.LBAllocation // nil: an error
		errIs   error
		errText string
	}{
		{name: "InPool", req: ipam.LBRequest{Service: "ns/s", Addrs: lbAddrs("10.0.0.2")},
			want: &ipam.LBAllocation{Service: "ns/s", Pool: "a", Addrs: lbAddrs("10.0.0.2")}},
		{name: "Dual", req: ipam.LBRequest{Service: "ns/s", Addrs: lbAddrs("fd00:1::7", "10.0.1.7")},
			want: &ipam.LBAllocation{Service: "ns/s", Pool: "b", Addrs: lbAddrs("10.0.1.7", "fd00:1::7")}},
		{name: "NamedPool", req: ipam.LBRequest{Service: "ns/s", Pool: "b", Addrs: lbAddrs("10.0.1.0")},
			want: &ipam.LBAllocation{Service: "ns/s", Pool: "b", Addrs: lbAddrs("10.0.1.0")}},
		{name: "Held", req: ipam.LBRequest{Service: "ns/s", Addrs: lbAddrs("10.0.0.3")}, errIs: ipam.ErrInUse},
		{name: "Outside", req: ipam.LBRequest{Service: "ns/s", Addrs: lbAddrs("10.0.9.1")}, errText: "in no enabled, non-conflicting pool"},
		{name: "Disabled", req: ipam.LBRequest{Service: "ns/s", Addrs: lbAddrs("10.0.2.1")}, errText: "in no enabled, non-conflicting pool"},
		{name: "OtherPool", req: ipam.LBRequest{Service: "ns/s", Pool: "b", Addrs: lbAddrs("10.0.0.2")}, errText: `not in pool "b"`},
		{name: "Reserved", req: ipam.LBRequest{Service: "ns/s", Addrs: lbAddrs("10.0.0.7")}, errText: "first and last"},
		{name: "TwoPools", req: ipam.LBRequest{Service: "ns/s", Addrs: lbAddrs("10.0.0.2", "fd00:1::1")}, errText: "different pools"},
		{name: "HalfHeld", req: ipam.LBRequest{Service: "ns/s", Addrs: lbAddrs("10.0.0.3", "fd00::1")}, errIs: ipam.ErrInUse},
		{name: "HeldNoSharing", req: ipam.LBRequest{Service: "ns/s", SharingKey: "k", Addrs: lbAddrs("10.0.0.3")}, errIs: ipam.ErrInUse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == nil {
				err := e.allocErr(tc.req)
				if tc.errIs != nil && !errors.Is(err, tc.errIs) {
					t.Errorf("error %v, want %v", err, tc.errIs)
				}
				if !strings.Contains(err.Error(), tc.errText) {
					t.Errorf("error %v, want it to say %q", err, tc.errText)
				}
				return
			}
			got := e.alloc(tc.req)
			if diff := cmp.Diff(*tc.want, got, lbCmp); diff != "" {
				t.Errorf("allocation (-want +got):\n%s", diff)
			}
			e.release(tc.req.Service)
		})
	}
}

func TestLBSharing(t *testing.T) {
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/30")}})
	web := []ipam.ServicePort{{Port: 80, Protocol: "TCP"}}
	dns := []ipam.ServicePort{{Port: 53, Protocol: "UDP"}, {Port: 53, Protocol: "TCP"}}
	a := e.alloc(ipam.LBRequest{Service: "ns/a", SharingKey: "k", Ports: web})
	b := e.alloc(ipam.LBRequest{Service: "ns/b", SharingKey: "k", Ports: dns})
	if !slices.Equal(a.Addrs, b.Addrs) {
		t.Fatalf("ns/a %v and ns/b %v do not share", a.Addrs, b.Addrs)
	}
	if st := e.pool("p"); st.Used != 1 {
		t.Errorf("Used %d with one shared address, want 1", st.Used)
	}
	c := e.alloc(ipam.LBRequest{Service: "ns/c", SharingKey: "k", Ports: web})
	if slices.Equal(c.Addrs, a.Addrs) {
		t.Errorf("ns/c shares %v with ns/a although both use 80/TCP", c.Addrs)
	}
	// ns/d fits on a's address (first of the key's addresses that fits).
	d := e.alloc(ipam.LBRequest{Service: "ns/d", SharingKey: "k", Ports: []ipam.ServicePort{{Port: 443, Protocol: "TCP"}}})
	if !slices.Equal(d.Addrs, a.Addrs) {
		t.Errorf("ns/d got %v, want the shared %v", d.Addrs, a.Addrs)
	}
	// Another key, or none, never shares.
	o := e.alloc(ipam.LBRequest{Service: "ns/o", SharingKey: "other", Ports: []ipam.ServicePort{{Port: 8080, Protocol: "TCP"}}})
	n := e.alloc(ipam.LBRequest{Service: "ns/n", Ports: []ipam.ServicePort{{Port: 9090, Protocol: "TCP"}}})
	for _, al := range []ipam.LBAllocation{o, n} {
		if slices.Equal(al.Addrs, a.Addrs) || slices.Equal(al.Addrs, c.Addrs) {
			t.Errorf("%s shares %v with key k", al.Service, al.Addrs)
		}
	}
	if st := e.pool("p"); st.Used != 4 || st.Available != 0 {
		t.Errorf("Used %d, Available %d; want 4, 0", st.Used, st.Available)
	}
	// A specific address held by the key: joined when ports do not clash.
	if got := e.alloc(ipam.LBRequest{Service: "ns/e", SharingKey: "k", Addrs: c.Addrs, Ports: dns}); !slices.Equal(got.Addrs, c.Addrs) {
		t.Errorf("ns/e got %v, want %v", got.Addrs, c.Addrs)
	}
	if err := e.allocErr(ipam.LBRequest{Service: "ns/f", SharingKey: "k", Addrs: c.Addrs, Ports: web}); !errors.Is(err, ipam.ErrInUse) {
		t.Errorf("clashing join: %v, want ErrInUse", err)
	}
	if err := e.allocErr(ipam.LBRequest{Service: "ns/f", SharingKey: "other", Addrs: c.Addrs}); !errors.Is(err, ipam.ErrInUse) {
		t.Errorf("join with another key: %v, want ErrInUse", err)
	}
	// A port update that would clash is refused; one that does not is kept.
	if err := e.allocErr(ipam.LBRequest{Service: "ns/d", SharingKey: "k", Ports: web}); !errors.Is(err, ipam.ErrInUse) {
		t.Errorf("clashing port update: %v, want ErrInUse", err)
	}
	if got := e.alloc(ipam.LBRequest{Service: "ns/d", SharingKey: "k", Ports: []ipam.ServicePort{{Port: 8443, Protocol: "TCP"}}}); got.Ports[0].Port != 8443 {
		t.Errorf("port update: %v", got.Ports)
	}
	e.release("ns/a")
	e.release("ns/d")
	if got, err := e.l.Get(context.Background(), "ns/b"); err != nil || !slices.Equal(got.Addrs, a.Addrs) {
		t.Errorf("ns/b after its partners left: %v, %v", got, err)
	}
	if st := e.pool("p"); st.Used != 4 {
		t.Errorf("Used %d while ns/b keeps the address, want 4", st.Used)
	}
	e.release("ns/b")
	if st := e.pool("p"); st.Used != 3 {
		t.Errorf("Used %d after the last sharer left, want 3", st.Used)
	}
	if got := e.alloc(ipam.LBRequest{Service: "ns/g"}); !slices.Equal(got.Addrs, a.Addrs) {
		t.Errorf("the freed shared address %v was not handed out again: got %v", a.Addrs, got.Addrs)
	}
}

func TestLBDualStack(t *testing.T) {
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "v4", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/30")}})
	e.setPool(ipam.LBPool{Name: "v6", Blocks: []ipam.LBBlock{lbCIDR("fd00::/126")}})
	e.setPool(ipam.LBPool{Name: "dual", Blocks: []ipam.LBBlock{lbCIDR("fd01::/127"), lbRange("10.1.0.1", "10.1.0.2")}})
	for _, tc := range []struct {
		req      ipam.LBRequest
		pool     string
		families []bool // true: IPv4
	}{
		{ipam.LBRequest{Service: "ns/auto"}, "v4", []bool{true}},
		{ipam.LBRequest{Service: "ns/v6", Family: ipam.FamilyIPv6}, "v6", []bool{false}},
		{ipam.LBRequest{Service: "ns/auto-v6", Pool: "v6"}, "v6", []bool{false}},
		{ipam.LBRequest{Service: "ns/dual", Family: ipam.FamilyDual}, "dual", []bool{true, false}},
		{ipam.LBRequest{Service: "ns/dual2", Family: ipam.FamilyDual, SharingKey: "k"}, "dual", []bool{true, false}},
		{ipam.LBRequest{Service: "ns/dual3", Family: ipam.FamilyDual, SharingKey: "k", Ports: []ipam.ServicePort{{Port: 1, Protocol: "SCTP"}}}, "dual", []bool{true, false}},
	} {
		got := e.alloc(tc.req)
		var fams []bool
		for _, a := range got.Addrs {
			fams = append(fams, a.Is4())
		}
		if got.Pool != tc.pool || !slices.Equal(fams, tc.families) {
			t.Errorf("Allocate(%+v) = %v from %s, want families %v from %s", tc.req, got.Addrs, got.Pool, tc.families, tc.pool)
		}
	}
	// ns/dual2 and ns/dual3 share both addresses; the pool has one of each
	// family left.
	d2, _ := e.l.Get(context.Background(), "ns/dual2")
	d3, _ := e.l.Get(context.Background(), "ns/dual3")
	if !slices.Equal(d2.Addrs, d3.Addrs) {
		t.Errorf("ns/dual2 %v and ns/dual3 %v do not share", d2.Addrs, d3.Addrs)
	}
	if err := e.allocErr(ipam.LBRequest{Service: "ns/dual4", Family: ipam.FamilyDual}); !errors.Is(err, ipam.ErrExhausted) {
		t.Errorf("dual from a full pool: %v, want ErrExhausted", err)
	}
	if err := e.allocErr(ipam.LBRequest{Service: "ns/x", Pool: "v4", Family: ipam.FamilyIPv6}); !strings.Contains(err.Error(), "no IPv6 blocks") {
		t.Errorf("IPv6 from an IPv4 pool: %v", err)
	}
}

func TestLBGCAndDeletePool(t *testing.T) {
	ctx := context.Background()
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "a", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/28")}})
	e.setPool(ipam.LBPool{Name: "b", Blocks: []ipam.LBBlock{lbCIDR("10.0.1.0/28")}})
	for i := range 6 {
		pool := "a"
		if i%2 == 1 {
			pool = "b"
		}
		e.alloc(ipam.LBRequest{Service: lbSvc(i), Pool: pool, SharingKey: map[bool]string{true: "k"}[i >= 4]})
	}
	got, err := e.l.GC(ctx, []string{lbSvc(0), lbSvc(1), lbSvc(5), "ns/unknown"})
	if err != nil {
		t.Fatal(err)
	}
	e.check()
	var gone []string
	for _, al := range got {
		gone = append(gone, al.Service)
	}
	if want := []string{lbSvc(2), lbSvc(3), lbSvc(4)}; !slices.Equal(gone, want) {
		t.Errorf("GC released %v, want %v", gone, want)
	}
	released := e.deletePool("b")
	var names []string
	for _, al := range released {
		names = append(names, al.Service)
	}
	if want := []string{lbSvc(1), lbSvc(5)}; !slices.Equal(names, want) {
		t.Errorf("DeletePool released %v, want %v", names, want)
	}
	var left []string
	for _, al := range e.list() {
		left = append(left, al.Service)
	}
	if want := []string{lbSvc(0)}; !slices.Equal(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}
	// b again, empty.
	if st := e.setPool(ipam.LBPool{Name: "b", Blocks: []ipam.LBBlock{lbCIDR("10.0.1.0/28")}}); st.Used != 0 {
		t.Errorf("re-created pool uses %d", st.Used)
	}
	if ps := e.pools(); ps[0].Pool.Name != "a" || ps[1].Pool.Name != "b" {
		t.Errorf("order %s, %s", ps[0].Pool.Name, ps[1].Pool.Name)
	}
}

func TestLBCheckDetectsCorruption(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		corrupt func(tx ipam.Txn) error
		want    string
	}{
		{"SlotWithoutService", func(tx ipam.Txn) error { return tx.Delete("lb/default/svc/ns%2Fa") }, "no allocation"},
		{"ServiceWithoutSlot", func(tx ipam.Txn) error {
			return tx.Put("lb/default/svc/ns%2Fz", []byte(`{"service":"ns/z","pool":"p","addrs":["10.0.0.6"]}`))
		}, "ns/z lists 10.0.0.6"},
		{"WrongCount", func(tx ipam.Txn) error {
			return tx.Put("lb/default/pool/p/0a000000-0a000007/head", []byte(`{"used":5}`))
		}, "counts 5 held, has 3"},
		{"BadSlot", func(tx ipam.Txn) error {
			return tx.Put("lb/default/pool/p/0a000000-0a000007/s/0a000005", []byte(`{`))
		}, "decode"},
		{"Stray", func(tx ipam.Txn) error { return tx.Put("lb/default/pool/gone/0a000000-0a000007/head", []byte(`{}`)) }, "stray key"},
		{"Conflict", func(tx ipam.Txn) error {
			v, _, err := tx.Get("lb/default/pools")
			if err != nil {
				return err
			}
			return tx.Put("lb/default/pools", []byte(strings.Replace(string(v), `"name":"p"`, `"name":"p","conflicting":true`, 1)))
		}, "stored conflict"},
		{"Share", func(tx ipam.Txn) error { return tx.Delete("lb/default/share/k") }, "index does not list it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ipam.NewMemoryStore()
			defer s.Close()
			e := newLBEnv(t, s)
			e.setPool(ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29")}})
			e.alloc(ipam.LBRequest{Service: "ns/a"})
			e.alloc(ipam.LBRequest{Service: "ns/b", SharingKey: "k"})
			e.alloc(ipam.LBRequest{Service: "ns/c", SharingKey: "k"})
			e.alloc(ipam.LBRequest{Service: "ns/d"})
			if err := s.Update(ctx, tc.corrupt); err != nil {
				t.Fatal(err)
			}
			err := e.l.Check(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestLBBadInput(t *testing.T) {
	ctx := context.Background()
	e := newLBEnv(t, nil)
	e.setPool(ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29"), lbCIDR("fd00::/125")}})
	e.setPool(ipam.LBPool{Name: "off", Blocks: []ipam.LBBlock{lbCIDR("10.0.1.0/29")}, Disabled: true})
	e.setPool(ipam.LBPool{Name: "late", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/30")}})
	e.alloc(ipam.LBRequest{Service: "ns/held"})
	v4 := netip.MustParseAddr("10.0.5.1")
	for _, tc := range []struct {
		name string
		op   func() error
		want string
	}{
		{"EmptyPoolName", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Blocks: []ipam.LBBlock{lbCIDR("10.0.5.0/30")}})
			return err
		}, "empty pool name"},
		{"SlashPoolName", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "a/b", Blocks: []ipam.LBBlock{lbCIDR("10.0.5.0/30")}})
			return err
		}, "'/'"},
		{"NoBlocks", func() error { _, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x"}); return err }, "no blocks"},
		{"EmptyBlock", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{{}}})
			return err
		}, "neither CIDR nor Start"},
		{"BothKinds", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{{CIDR: netip.MustParsePrefix("10.0.5.0/30"), Start: v4}}})
			return err
		}, "both CIDR"},
		{"HostBits", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{lbCIDR("10.0.5.1/30")}})
			return err
		}, "host bits"},
		{"InvalidCIDR", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{{CIDR: netip.PrefixFrom(v4, 40)}}})
			return err
		}, "not a valid prefix"},
		{"Mapped", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{lbCIDR("::ffff:10.0.5.0/126")}})
			return err
		}, "IPv4-mapped"},
		{"StopOnly", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{{Stop: v4}}})
			return err
		}, "without Start"},
		{"StartAfterStop", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{lbRange("10.0.5.9", "10.0.5.1")}})
			return err
		}, "after Stop"},
		{"MixedFamilies", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{lbRange("10.0.5.1", "fd00::1")}})
			return err
		}, "different families"},
		{"OverlappingBlocks", func() error {
			_, err := e.l.SetPool(ctx, ipam.LBPool{Name: "x", Blocks: []ipam.LBBlock{lbCIDR("10.0.5.0/29"), lbRange("10.0.5.7", "10.0.5.9")}})
			return err
		}, "overlap"},
		{"NoService", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{}); return err }, "namespace/name"},
		{"ServiceNoSlash", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "svc"}); return err }, "namespace/name"},
		{"ServiceTwoSlashes", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "a/b/c"}); return err }, "namespace/name"},
		{"ServiceEmptyPart", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/"}); return err }, "both non-empty"},
		{"ServiceUpper", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/Web"}); return err }, "lowercase"},
		{"MissingPool", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Pool: "nope"}); return err }, "does not exist"},
		{"DisabledPool", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Pool: "off"}); return err }, "disabled"},
		{"ConflictingPool", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Pool: "late"}); return err }, "conflicting"},
		{"AddrOutside", func() error {
			_, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Addrs: []netip.Addr{v4}})
			return err
		}, "address 10.0.5.1 is in no enabled, non-conflicting pool"},
		{"AddrOutsideNamed", func() error {
			_, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Pool: "p", Addrs: []netip.Addr{v4}})
			return err
		}, `not in pool "p"`},
		{"TwoV4", func() error {
			_, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Addrs: lbAddrs("10.0.0.1", "10.0.0.2")})
			return err
		}, "one per family"},
		{"InvalidAddr", func() error {
			_, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Addrs: []netip.Addr{{}}})
			return err
		}, "invalid address"},
		{"Port0", func() error {
			_, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Ports: []ipam.ServicePort{{Port: 0, Protocol: "TCP"}}})
			return err
		}, "port 0"},
		{"BadProtocol", func() error {
			_, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Ports: []ipam.ServicePort{{Port: 80, Protocol: "tcp"}}})
			return err
		}, "protocol"},
		{"DuplicatePort", func() error {
			_, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Ports: []ipam.ServicePort{{Port: 80, Protocol: "TCP"}, {Port: 80, Protocol: "TCP"}}})
			return err
		}, "twice"},
		{"BadSharingKey", func() error {
			_, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", SharingKey: "a b"})
			return err
		}, "sharing key"},
		{"BadFamily", func() error { _, err := e.l.Allocate(ctx, ipam.LBRequest{Service: "ns/x", Family: 9}); return err }, "family"},
		{"ReleaseBadName", func() error { _, _, err := e.l.Release(ctx, "bad"); return err }, "namespace/name"},
		{"GetBadName", func() error { _, err := e.l.Get(ctx, "bad"); return err }, "namespace/name"},
		{"DeleteMissing", func() error { _, err := e.l.DeletePool(ctx, "nope"); return err }, "not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.state()
			err := tc.op()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
			if diff := cmp.Diff(before, e.state(), lbCmp); diff != "" {
				t.Errorf("changed the state (-before +after):\n%s", diff)
			}
			e.check()
		})
	}
	if _, err := ipam.NewLBIPAM(ipam.LBConfig{Store: ipam.NewMemoryStore(), Name: "a/b"}); err == nil {
		t.Error("NewLBIPAM with a bad name succeeded")
	}
}

func TestLBBolt(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ipam.db")
	s, err := ipam.OpenBolt(path, ipam.BoltConfig{})
	if err != nil {
		t.Fatal(err)
	}
	e := newLBEnv(t, s)
	e.setPool(ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/29")}, ReserveFirstLastIPs: true})
	a := e.alloc(ipam.LBRequest{Service: "ns/a", SharingKey: "k", Ports: []ipam.ServicePort{{Port: 80, Protocol: "TCP"}}})
	e.alloc(ipam.LBRequest{Service: "ns/b", SharingKey: "k", Ports: []ipam.ServicePort{{Port: 443, Protocol: "TCP"}}})
	e.alloc(ipam.LBRequest{Service: "ns/c"})
	want := e.state()
	if err := e.l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := ipam.OpenBolt(path, ipam.BoltConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	e2 := newLBEnv(t, s2)
	e2.check()
	if diff := cmp.Diff(want, e2.state(), lbCmp); diff != "" {
		t.Errorf("state after reopening (-before +after):\n%s", diff)
	}
	if st := e2.pool("p"); st.Total != 6 || st.Used != 2 {
		t.Errorf("Total %d, Used %d; want 6, 2", st.Total, st.Used)
	}
	e2.release("ns/a")
	if got, err := e2.l.Get(ctx, "ns/b"); err != nil || !slices.Equal(got.Addrs, a.Addrs) {
		t.Errorf("ns/b: %v, %v", got, err)
	}
}

func TestLBConcurrent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) (a, b ipam.Store)
	}{
		{"Memory", func(t *testing.T) (ipam.Store, ipam.Store) {
			s := ipam.NewMemoryStore()
			t.Cleanup(func() { s.Close() })
			return s, s
		}},
		{"BoltTwoHandles", func(t *testing.T) (ipam.Store, ipam.Store) {
			path := filepath.Join(t.TempDir(), "ipam.db")
			var out [2]ipam.Store
			for i := range out {
				s, err := ipam.OpenBolt(path, ipam.BoltConfig{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				out[i] = s
			}
			return out[0], out[1]
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s1, s2 := tc.store(t)
			e1, e2 := newLBEnv(t, s1), newLBEnv(t, s2)
			e1.setPool(ipam.LBPool{Name: "p", Blocks: []ipam.LBBlock{lbCIDR("10.0.0.0/25")}, ReserveFirstLastIPs: true})
			const workers, per = 4, 25
			got := make([][]ipam.LBAllocation, workers)
			errs := make([]error, workers)
			var wg sync.WaitGroup
			for w := range workers {
				l := e1.l
				if w%2 == 1 {
					l = e2.l
				}
				wg.Go(func() {
					for i := range per {
						req := ipam.LBRequest{Service: lbSvc(w*per + i)}
						if i%5 == 0 {
							req.SharingKey = fmt.Sprintf("k%d", i%3)
							req.Ports = []ipam.ServicePort{{Port: uint16(1000 + w), Protocol: "TCP"}}
						}
						al, err := l.Allocate(ctx, req)
						if err != nil {
							errs[w] = err
							return
						}
						got[w] = append(got[w], al)
						if i%7 == 3 {
							if _, _, err := l.Release(ctx, req.Service); err != nil {
								errs[w] = err
								return
							}
							got[w] = got[w][:len(got[w])-1]
						}
					}
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			e1.check()
			holders := map[netip.Addr][]string{}
			var want []ipam.LBAllocation
			for _, als := range got {
				for _, al := range als {
					want = append(want, al)
					holders[al.Addrs[0]] = append(holders[al.Addrs[0]], al.SharingKey)
				}
			}
			for a, keys := range holders {
				if len(keys) > 1 && (keys[0] == "" || slices.ContainsFunc(keys, func(k string) bool { return k != keys[0] })) {
					t.Errorf("%v handed to services with sharing keys %q", a, keys)
				}
			}
			slices.SortFunc(want, func(a, b ipam.LBAllocation) int { return strings.Compare(a.Service, b.Service) })
			if diff := cmp.Diff(want, e2.list(), lbCmp); diff != "" {
				t.Errorf("List differs from what Allocate returned (-returned +list):\n%s", diff)
			}
			if st := e2.pool("p"); st.Used != uint64(len(holders)) {
				t.Errorf("Used %d, want %d", st.Used, len(holders))
			}
		})
	}
}
