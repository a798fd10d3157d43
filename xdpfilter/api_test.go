package xdpfilter

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/netblocks/netblocks/internal/testutil"
)

// probeSources are the sources whose verdicts a snapshot records.
var probeSources = []string{
	"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.77", "198.51.100.1", "203.0.113.1",
	"2001:db8::1", "2001:db8::2", "2001:db8::5", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:9::1",
}

type snapshot struct {
	List     []netip.Prefix
	Revision uint64
	Verdicts map[string]uint32
}

func takeSnapshot(t *testing.T, h *harness) snapshot {
	t.Helper()
	s := snapshot{List: h.List(), Revision: h.Revision(), Verdicts: map[string]uint32{}}
	for _, src := range probeSources {
		s.Verdicts[src] = h.verdict(t, udpFrom(t, src))
	}
	return s
}

func TestBadInput(t *testing.T) {
	h := newHarness(t, Config{MaxExact: 4, MaxPrefixes: 4})
	if err := h.Add(mustPrefixes("192.0.2.1/32", "192.0.2.2/32", "198.51.100.0/24")...); err != nil {
		t.Fatal(err)
	}
	if err := h.Add(mustPrefixes("2001:db8::1/128", "2001:db8:1::/48")...); err != nil {
		t.Fatal(err)
	}
	if err := h.Replace(mustPrefixes("192.0.2.1/32", "192.0.2.2/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8:1::/48")); err != nil {
		t.Fatal(err)
	}
	before := takeSnapshot(t, h)

	four := func(f string) []netip.Prefix { // four rules: N in f becomes 3 to 6
		var out []netip.Prefix
		for _, n := range []string{"3", "4", "5", "6"} {
			out = append(out, netip.MustParsePrefix(strings.ReplaceAll(f, "N", n)))
		}
		return out
	}
	invalid := netip.PrefixFrom(netip.MustParseAddr("192.0.2.0"), 33)
	for _, tc := range []struct {
		name string
		op   func() error
		want string // in the error
		is   error
	}{
		{"Add host bits", func() error { return h.Add(netip.MustParsePrefix("192.0.2.9/24")) }, "host bits", nil},
		{"Add host bits after a good rule", func() error {
			return h.Add(netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("192.0.2.9/24"))
		}, "host bits", nil},
		{"Add mixed families", func() error {
			return h.Add(netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:2::/48"))
		}, "different families", nil},
		{"Add invalid", func() error { return h.Add(invalid) }, "not a valid prefix", nil},
		{"Add zero prefix", func() error { return h.Add(netip.Prefix{}) }, "not a valid prefix", nil},
		{"Add IPv4-mapped", func() error { return h.Add(netip.MustParsePrefix("::ffff:192.0.2.0/120")) }, "IPv4-mapped", nil},
		{"Add IPv4-mapped host", func() error { return h.Add(netip.MustParsePrefix("::ffff:192.0.2.77/128")) }, "IPv4-mapped", nil},
		{"Add too many exact v4", func() error { return h.Add(four("192.0.2.N/32")...) }, "more than the maps hold", nil},
		{"Add too many prefixes v6", func() error { return h.Add(four("2001:db8:N::/48")...) }, "more than the maps hold", nil},
		{"Add too many prefixes v4", func() error { return h.Add(four("10.N.0.0/16")...) }, "more than the maps hold", nil},
		{"Remove host bits", func() error { return h.Remove(netip.MustParsePrefix("198.51.100.1/24")) }, "host bits", nil},
		{"Remove mixed families", func() error {
			return h.Remove(netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::1/128"))
		}, "different families", nil},
		{"Remove invalid", func() error { return h.Remove(invalid) }, "not a valid prefix", nil},
		{"Remove IPv4-mapped", func() error { return h.Remove(netip.MustParsePrefix("::ffff:192.0.2.1/128")) }, "IPv4-mapped", nil},
		{"Remove absent", func() error { return h.Remove(netip.MustParsePrefix("203.0.113.0/24")) }, "203.0.113.0/24", ebpf.ErrKeyNotExist},
		{"Remove present and absent", func() error {
			return h.Remove(netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.3/32"))
		}, "192.0.2.3/32", ebpf.ErrKeyNotExist},
		{"Replace host bits", func() error { return h.Replace(mustPrefixes("192.0.2.1/32", "10.1.1.1/8")) }, "host bits", nil},
		{"Replace invalid", func() error { return h.Replace([]netip.Prefix{invalid}) }, "not a valid prefix", nil},
		{"Replace IPv4-mapped", func() error { return h.Replace(mustPrefixes("::ffff:10.0.0.0/104")) }, "IPv4-mapped", nil},
		{"Replace too many exact v6", func() error {
			return h.Replace(mustPrefixes("2001:db8::1/128", "2001:db8::2/128", "2001:db8::3/128", "2001:db8::4/128", "2001:db8::5/128"))
		}, "more than the maps hold", nil},
		{"Replace too many prefixes v4", func() error {
			return h.Replace(mustPrefixes("10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16", "10.5.0.0/16", "192.0.2.5/32"))
		}, "more than the maps hold", nil},
	} {
		err := tc.op()
		switch {
		case err == nil:
			t.Errorf("%s: no error", tc.name)
			continue
		case !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: error %q does not name %q", tc.name, err, tc.want)
		case tc.is != nil && !errors.Is(err, tc.is):
			t.Errorf("%s: error %q does not wrap %v", tc.name, err, tc.is)
		}
		if diff := cmp.Diff(before, takeSnapshot(t, h), netipEqual); diff != "" {
			t.Errorf("%s changed the filter (-before +after):\n%s", tc.name, diff)
		}
	}

	// Up to capacity works, both exact and prefixes: the limit is the
	// configured one.
	if err := h.Add(mustPrefixes("192.0.2.3/32", "192.0.2.4/32")...); err != nil {
		t.Errorf("Add up to MaxExact: %v", err)
	}
	if err := h.Add(mustPrefixes("10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16")...); err != nil {
		t.Errorf("Add up to MaxPrefixes: %v", err)
	}
	if got := h.verdict(t, udpFrom(t, "192.0.2.4")); got != xdpDrop {
		t.Errorf("192.0.2.4 after Add: verdict %d", got)
	}
	if err := h.Add(netip.MustParsePrefix("192.0.2.5/32")); err == nil {
		t.Errorf("Add beyond MaxExact: no error")
	}
}

func TestFailedReplaceKeepsOldSet(t *testing.T) {
	h := newHarness(t, Config{MaxExact: 4, MaxPrefixes: 4})
	old := mustPrefixes("192.0.2.1/32", "198.51.100.0/24", "2001:db8::/32")
	if err := h.Replace(old); err != nil {
		t.Fatal(err)
	}
	h.verdict(t, udpFrom(t, "198.51.100.1"))
	before := takeSnapshot(t, h)
	hitsBefore, err := h.Hits()
	if err != nil {
		t.Fatal(err)
	}
	// The new set would take out 192.0.2.1 and bring in five exact rules.
	err = h.Replace(mustPrefixes("203.0.113.1/32", "203.0.113.2/32", "203.0.113.3/32", "203.0.113.4/32", "203.0.113.5/32", "198.51.100.0/24"))
	if err == nil || !strings.Contains(err.Error(), "more than the maps hold") {
		t.Fatalf("Replace beyond capacity: %v", err)
	}
	hits, err := h.Hits()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(hitsBefore, hits, netipEqual); diff != "" {
		t.Errorf("failed Replace changed Hits (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(before, takeSnapshot(t, h), netipEqual); diff != "" {
		t.Errorf("failed Replace changed the filter (-before +after):\n%s", diff)
	}
	if v := h.verdict(t, udpFrom(t, "203.0.113.1")); v != xdpPass {
		t.Errorf("a rule of the failed set is in force: verdict %d", v)
	}
	// And a good Replace still works afterwards.
	if err := h.Replace(mustPrefixes("203.0.113.1/32")); err != nil {
		t.Fatal(err)
	}
	if v := h.verdict(t, udpFrom(t, "203.0.113.1")); v != xdpDrop {
		t.Errorf("after a good Replace: verdict %d", v)
	}
}

func TestPinAndOpen(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := testutil.TempBPFFS(t) + "/xf"
	cfg := Config{Mode: AllowOnly, MaxExact: 8, MaxPrefixes: 8, PinPath: dir}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := loadOn(t, f)
	if err := h.Add(mustPrefixes("192.0.2.1/32", "198.51.100.0/24")...); err != nil {
		t.Fatal(err)
	}
	if err := h.Replace(mustPrefixes("192.0.2.1/32", "203.0.113.0/24", "2001:db8::/32", "2001:db8:1::1/128")); err != nil {
		t.Fatal(err)
	}
	if err := h.Add(netip.MustParsePrefix("10.0.0.0/8")); err != nil {
		t.Fatal(err)
	}
	if err := h.Remove(netip.MustParsePrefix("2001:db8:1::1/128")); err != nil {
		t.Fatal(err)
	}
	before := takeSnapshot(t, h)
	hitsBefore, err := h.Hits()
	if err != nil {
		t.Fatal(err)
	}
	statsBefore, err := h.Stats()
	if err != nil {
		t.Fatal(err)
	}
	mode := h.Mode()
	h.progs.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	g, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	if g.Mode() != mode {
		t.Errorf("Mode after Open: %v, want %v", g.Mode(), mode)
	}
	hitsAfter, err := g.Hits()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(hitsBefore, hitsAfter, netipEqual); diff != "" {
		t.Errorf("Hits after Open (-before +after):\n%s", diff)
	}
	statsAfter, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(statsBefore, statsAfter); diff != "" {
		t.Errorf("Stats after Open (-before +after):\n%s", diff)
	}
	h2 := loadOn(t, g)
	if diff := cmp.Diff(before, takeSnapshot(t, h2), netipEqual); diff != "" {
		t.Errorf("after Open (-before +after):\n%s", diff)
	}

	// The reopened filter goes on working: Replace and Add on top of the
	// state it took over.
	if err := g.Replace(mustPrefixes("192.0.2.2/32")); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(netip.MustParsePrefix("192.0.2.3/32")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(mustPrefixes("192.0.2.2/32", "192.0.2.3/32"), g.List(), netipEqual); diff != "" {
		t.Errorf("List after Replace on the reopened filter (-want +got):\n%s", diff)
	}
	for src, want := range map[string]uint32{"192.0.2.1": xdpDrop, "192.0.2.2": xdpPass, "192.0.2.3": xdpPass, "10.1.1.1": xdpDrop} {
		if got := h2.verdict(t, udpFrom(t, src)); got != want {
			t.Errorf("%s on the reopened filter: verdict %d, want %d", src, got, want)
		}
	}
	if got, want := g.Revision(), before.Revision+2; got != want {
		t.Errorf("Revision %d, want %d", got, want)
	}

	// Different sizes on the same pin path: incompatible.
	for _, c := range []Config{
		{PinPath: dir, Mode: AllowOnly, MaxExact: 16, MaxPrefixes: 8},
		{PinPath: dir, Mode: AllowOnly, MaxExact: 8, MaxPrefixes: 16},
	} {
		if bad, err := New(c); !errors.Is(err, ebpf.ErrMapIncompatible) {
			if bad != nil {
				bad.Close()
			}
			t.Errorf("New(%+v) on a filter pinned with other sizes: %v, want ErrMapIncompatible", c, err)
		}
	}
	// Another mode: refused, so that a restart never flips an allow-only filter to deny.
	if bad, err := New(Config{PinPath: dir}); err == nil || !strings.Contains(err.Error(), "allow-only mode") {
		if bad != nil {
			bad.Close()
		}
		t.Errorf("New with a zero Config on an allow-only filter: %v, want a refusal naming the mode", err)
	}
	// Zero sizes and the same mode: the pinned filter, as it is.
	same, err := New(Config{PinPath: dir, Mode: AllowOnly})
	if err != nil {
		t.Fatalf("New with zero sizes on the pinned filter: %v", err)
	}
	if diff := cmp.Diff(g.List(), same.List(), netipEqual); diff != "" {
		t.Errorf("New reopened other rules (-want +got):\n%s", diff)
	}
	same.Close()
	if diff := cmp.Diff(mustPrefixes("192.0.2.2/32", "192.0.2.3/32"), g.List(), netipEqual); diff != "" {
		t.Errorf("List after the failed New (-want +got):\n%s", diff)
	}
}
