package lbmap

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/netblocks/netblocks/internal/testutil"
)

func TestLayout(t *testing.T) {
	spec, err := loadLb()
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]any{
		"lb_svc_key": lbSvcKey{}, "lb_svc": lbSvc{}, "lb_svc_info": lbSvcInfo{}, "lb_slot_key": lbSlotKey{}, "lb_backend": lbBackend{},
		"lb_revnat": lbRevNAT{}, "lb_src_range_key": lbSrcRangeKey{}, "lb_nat_key": lbNATKey{}, "lb_nat": lbNAT{},
	} {
		testutil.RequireLayout(t, spec.Types, name, v)
	}
}

func svcWith(n int) Service {
	s := Service{Frontend: netip.MustParseAddrPort("10.96.0.10:80"), Protocol: TCP}
	for i := range n {
		s.Backends = append(s.Backends, Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 8080), Weight: 1})
	}
	return s
}

// TestBadInput checks that every kind of bad service is refused with an
// error naming the problem, and that nothing changes.
func TestBadInput(t *testing.T) {
	h := newHarness(t, Config{MaxBackends: 8})
	good := svcWith(2)
	if err := h.Upsert(good); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, h.Table)
	mod := func(f func(*Service)) Service {
		s := svcWith(2)
		s.Backends = append([]Backend(nil), s.Backends...)
		f(&s)
		return s
	}
	for _, tt := range []struct {
		svc  Service
		want string
	}{
		{mod(func(s *Service) { s.Frontend = netip.AddrPortFrom(s.Frontend.Addr(), 0) }), "frontend has no port"},
		{mod(func(s *Service) { s.Frontend = netip.AddrPort{} }), "frontend has no address"},
		{mod(func(s *Service) { s.Protocol = 0 }), "neither TCP nor UDP"},
		{mod(func(s *Service) { s.Backends = append(s.Backends, s.Backends[0]) }), "listed twice"},
		{mod(func(s *Service) { s.Backends[0].Weight, s.Backends[1].Weight = 0, 0 }), "every backend has weight 0"},
		{mod(func(s *Service) { s.Algorithm, s.MaglevTableSize = Maglev, 16384 }), "not prime"},
		{mod(func(s *Service) { s.Algorithm, s.MaglevTableSize = Maglev, 131101 }), "131101"},
		{mod(func(s *Service) { s.MaglevTableSize = 251 }), "without the Maglev algorithm"},
		{mod(func(s *Service) { s.Backends[0].Addr = netip.MustParseAddrPort("[2001:db8::1]:80") }), "not of the frontend's family"},
		{mod(func(s *Service) { s.Backends[0].Addr = netip.AddrPortFrom(s.Backends[0].Addr.Addr(), 0) }), "needs an address and a port"},
		{mod(func(s *Service) { s.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24")} }), "host bits set"},
		{mod(func(s *Service) { s.Affinity = 1500 * time.Millisecond }), "whole number of seconds"},
		{mod(func(s *Service) { s.Affinity = -time.Second }), "out of range"},
		{svcWith(9), "more backends than the maps hold"},
	} {
		err := h.Upsert(tt.svc)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Upsert(%v) = %v, want an error saying %q", tt.svc, err, tt.want)
		}
		if _, err := h.Reconcile([]Service{good, withFrontend(tt.svc, "10.96.0.99:80")}); err == nil {
			t.Errorf("Reconcile accepted %v", tt.svc)
		}
		if after := snapshot(t, h.Table); after != before {
			t.Errorf("a refused %v changed the maps:\n before %s\n after  %s", tt.svc, before, after)
		}
	}
	if _, err := h.Reconcile([]Service{good, good}); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("Reconcile with a duplicate service: %v", err)
	}
	if err := h.Delete(ServiceKey{Frontend: netip.MustParseAddrPort("10.96.0.99:1"), Protocol: TCP}); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Delete of a missing service: %v", err)
	}
}

func withFrontend(s Service, fe string) Service {
	if s.Frontend.IsValid() && s.Frontend.Port() != 0 {
		s.Frontend = netip.MustParseAddrPort(fe)
	}
	return s
}

// snapshot summarizes every map's contents, to tell whether anything changed.
func snapshot(tb testing.TB, t *Table) string {
	tb.Helper()
	var b strings.Builder
	for _, name := range []string{mapSvc, mapSlots, mapBackends, mapRevNAT, mapSrcRange} {
		n := 0
		var k, v []byte
		it := t.maps[name].Iterate()
		for it.Next(&k, &v) {
			n++
			fmt.Fprintf(&b, "%x=%x;", k, v)
		}
		if err := it.Err(); err != nil {
			tb.Fatal(err)
		}
		fmt.Fprintf(&b, " %s:%d ", name, n)
	}
	return b.String()
}

func TestConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{MaxBackends: -1}, "MaxBackends -1 is negative"},
		{Config{MaxSlots: 1 << 30}, "over the limit"},
		{Config{MaglevTableSize: 1000}, "not prime"},
		{Config{GracePeriod: -time.Second}, "negative"},
		{Config{NATPortMin: 62000, NATPortMax: 61000}, "NAT port range 62000-61000 is empty"},
		{Config{NATPortMax: 1024}, "NAT port range 61000-1024 is empty"},
		{Config{MaxNAT: -1}, "MaxNAT -1 is negative"},
	} {
		if _, err := New(tt.cfg, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
	if _, err := New(Config{}, nil); err == nil || !strings.Contains(err.Error(), "conntrack") {
		t.Errorf("New without a conntrack table: %v", err)
	}
}

// TestReconcile checks the difference Reconcile computes and that garbage
// goes once its grace period is over.
func TestReconcile(t *testing.T) {
	h := newHarness(t, Config{GracePeriod: 50 * time.Millisecond})
	var desired []Service
	for i := range 100 {
		s := svcWith(3)
		s.Frontend = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}), 80)
		desired = append(desired, s)
	}
	res, err := h.Reconcile(desired)
	if err != nil || res != (ReconcileResult{Added: 100}) {
		t.Fatalf("first Reconcile = %+v, %v", res, err)
	}
	if got := len(h.List()); got != 100 {
		t.Fatalf("List has %d services", got)
	}
	// The backends are shared: 3 backend entries for 100 services.
	if n := countEntries(t, h.Table, mapBackends); n != 3 {
		t.Errorf("%d backend entries, want 3 shared ones", n)
	}
	desired[0].Backends = desired[0].Backends[:2]                                                   // update
	desired[1].Backends[0], desired[1].Backends[1] = desired[1].Backends[1], desired[1].Backends[0] // same set, other order: unchanged
	desired = desired[:99]                                                                          // delete the last
	res, err = h.Reconcile(desired)
	if err != nil || res != (ReconcileResult{Updated: 1, Deleted: 1, Unchanged: 98}) {
		t.Fatalf("second Reconcile = %+v, %v", res, err)
	}
	// Old sets wait out the grace period, then go.
	if n := countEntries(t, h.Table, mapSlots); n != 99*3-1+3+3 {
		t.Errorf("%d slots during the grace period, want %d", n, 99*3-1+3+3)
	}
	time.Sleep(60 * time.Millisecond)
	if _, err := h.Reconcile(desired); err != nil {
		t.Fatal(err)
	}
	if n := countEntries(t, h.Table, mapSlots); n != 99*3-1 {
		t.Errorf("%d slots after the grace period, want %d", n, 99*3-1)
	}
	if n := countEntries(t, h.Table, mapRevNAT); n != 99 {
		t.Errorf("%d rev-NAT entries, want 99", n)
	}
	res, err = h.Reconcile(nil)
	if err != nil || res != (ReconcileResult{Deleted: 99}) {
		t.Fatalf("emptying Reconcile = %+v, %v", res, err)
	}
	time.Sleep(60 * time.Millisecond)
	h.Reconcile(nil)
	for _, name := range []string{mapSvc, mapSlots, mapBackends, mapRevNAT} {
		if n := countEntries(t, h.Table, name); n != 0 {
			t.Errorf("%s has %d entries after deleting everything", name, n)
		}
	}
}

func countEntries(tb testing.TB, t *Table, name string) int {
	tb.Helper()
	n := 0
	var k, v []byte
	it := t.maps[name].Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestFailedWriteUndoes makes a write fail halfway (the service map is full)
// and checks that everything written before it was undone.
func TestFailedWriteUndoes(t *testing.T) {
	h := newHarness(t, Config{MaxServices: 4})
	var desired []Service
	for i := range 4 {
		s := svcWith(2)
		s.Frontend = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}), 80)
		desired = append(desired, s)
	}
	if _, err := h.Reconcile(desired[:3]); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, h.Table)
	// Capacity is checked before writing: a fifth service is refused up front.
	extra := svcWith(2)
	extra.Frontend = netip.MustParseAddrPort("10.96.2.1:80")
	extra.Backends[0].Addr = netip.MustParseAddrPort("192.0.2.200:1")
	if _, err := h.Reconcile(append(desired, extra)); err == nil || !strings.Contains(err.Error(), "MaxServices") {
		t.Fatalf("Reconcile over capacity: %v", err)
	}
	if after := snapshot(t, h.Table); after != before {
		t.Errorf("a refused Reconcile changed the maps")
	}
	// Fill the service map behind the Table's back, so the write itself fails.
	intruder := svcKey(ServiceKey{Frontend: netip.MustParseAddrPort("10.96.3.1:1"), Protocol: TCP}, scopeInternal)
	if err := h.maps[mapSvc].Put(&intruder, &lbSvc{Key: intruder}); err != nil {
		t.Fatal(err)
	}
	before = snapshot(t, h.Table)
	if _, err := h.Reconcile(append(desired[:3], extra)); err == nil {
		t.Fatal("Reconcile into a full service map succeeded")
	}
	if after := snapshot(t, h.Table); after != before {
		t.Errorf("a failed Reconcile left changes behind:\n before %s\n after  %s", before, after)
	}
	if len(h.List()) != 3 {
		t.Errorf("List has %d services after a failed Reconcile", len(h.List()))
	}
}
