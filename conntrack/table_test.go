package conntrack

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/netblocks/netblocks/internal/testutil"
)

func TestConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{MaxEntries: -1}, "MaxEntries -1 is negative"},
		{Config{MaxEntries: MaxMaxEntries + 1}, "over the limit"},
		{Config{Timeouts: Timeouts{TCPEstablished: -time.Second}}, "timeout TCPEstablished is negative"},
		{Config{Timeouts: Timeouts{NonTCP: time.Millisecond}}, "timeout NonTCP of 1ms is under the 1 s minimum"},
		{Config{GCMinInterval: time.Hour, GCMaxInterval: time.Minute}, "GCMinInterval 1h0m0s is above GCMaxInterval"},
		{Config{GCInterval: -time.Second}, "GCInterval is negative"},
	} {
		// Validation happens before anything touches the kernel, so this needs no privileges.
		_, err := New(tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error saying %q", tt.cfg, err, tt.want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{MaxEntries: DefaultMaxEntries,
		Timeouts:   Timeouts{TCPEstablished: 6 * time.Hour, TCPSyn: time.Minute, TCPClosing: 10 * time.Second, NonTCP: time.Minute},
		GCInterval: 5 * time.Minute, GCMinInterval: 10 * time.Second, GCMaxInterval: 12 * time.Hour}
	if c != want {
		t.Errorf("defaults\n got  %+v\n want %+v", c, want)
	}
}

func TestTableOperations(t *testing.T) {
	h := newHarness(t, Config{MaxEntries: 4096, Timeouts: Timeouts{TCPSyn: 7 * time.Second}})
	if h.MaxEntries() != 4096 || h.Timeouts().TCPSyn != 7*time.Second || h.Timeouts().TCPEstablished != DefaultTCPEstablished {
		t.Errorf("table reports %d entries and %+v", h.MaxEntries(), h.Timeouts())
	}
	flows := putFlows(t, h.Table, 3000, func(int) uint64 { return 0 })
	if n, err := h.Len(); err != nil || n != 3000 {
		t.Fatalf("Len = %d, %v; want 3000", n, err)
	}
	seen := map[Flow]bool{}
	for e, err := range h.Iterate() {
		if err != nil {
			t.Fatal(err)
		}
		seen[e.Flow] = true
	}
	for _, f := range flows {
		if !seen[f] {
			t.Fatalf("Iterate missed %v (saw %d)", f, len(seen))
		}
	}
	// Breaking out of Iterate early is fine.
	for range h.Iterate() {
		break
	}

	if err := h.Delete(flows[0].Reverse()); err != nil {
		t.Errorf("delete by the reply direction: %v", err)
	}
	if _, err := h.Lookup(flows[0]); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("lookup after delete: %v, want ErrKeyNotExist", err)
	}
	if err := h.Delete(flows[0]); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("second delete: %v, want ErrKeyNotExist", err)
	}
	if n, err := h.Flush(); err != nil || n != 2999 {
		t.Errorf("Flush = %d, %v; want 2999", n, err)
	}
	if n, err := h.Len(); err != nil || n != 0 {
		t.Errorf("Len after flush = %d, %v", n, err)
	}

	bad := Flow{Src: netip.MustParseAddrPort("192.0.2.1:1"), Dst: netip.MustParseAddrPort("[2001:db8::1]:2"), Proto: UDP}
	if _, err := h.Lookup(bad); err == nil || !strings.Contains(err.Error(), "different families") {
		t.Errorf("lookup of a mixed-family flow: %v", err)
	}
	if err := h.SetTimeouts(Timeouts{TCPClosing: -1}); err == nil {
		t.Error("SetTimeouts accepted a negative timeout")
	}
	if err := h.SetTimeouts(Timeouts{NonTCP: 3 * time.Second}); err != nil || h.Timeouts().NonTCP != 3*time.Second {
		t.Errorf("SetTimeouts: %v, %+v", err, h.Timeouts())
	}
}

// putFlows writes n UDP flows straight into the map, flow i expiring at
// monotonic time expires(i), and returns them.
func putFlows(tb testing.TB, t *Table, n int, expires func(i int) uint64) []Flow {
	tb.Helper()
	keys := make([]ctTuple, n)
	vals := make([]ctEntry, n)
	flows := make([]Flow, n)
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		flows[i] = Flow{Src: netip.AddrPortFrom(a, uint16(i)), Dst: netip.MustParseAddrPort("192.0.2.1:53"), Proto: UDP}
		keys[i] = flows[i].key()
		vals[i] = ctEntry{Expires: expires(i), TxPackets: 1, Dir: uint8(Out)}
	}
	for i := 0; i < n; i += batchSize {
		end := min(i+batchSize, n)
		if _, err := t.ct.BatchUpdate(keys[i:end], vals[i:end], nil); err != nil {
			tb.Fatalf("fill table: %v", err)
		}
	}
	return flows
}

func TestGC(t *testing.T) {
	h := newHarness(t, Config{MaxEntries: 8192})
	clk, err := readClock()
	if err != nil {
		t.Fatal(err)
	}
	now := clk.monotonic(clk.now)
	// Even flows expired a minute ago, odd ones expire in a minute.
	flows := putFlows(t, h.Table, 5000, func(i int) uint64 {
		if i%2 == 0 {
			return now - uint64(time.Minute)
		}
		return now + uint64(time.Minute)
	})
	n, err := h.GC(time.Now())
	if err != nil || n != 2500 {
		t.Fatalf("GC(now) = %d, %v; want 2500", n, err)
	}
	for i, f := range flows {
		_, err := h.Lookup(f)
		if expired := i%2 == 0; expired != errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("flow %d (expired %v): lookup says %v", i, expired, err)
		}
	}
	if n, err := h.GC(time.Now()); err != nil || n != 0 {
		t.Errorf("second GC(now) = %d, %v; want 0", n, err)
	}
	if n, err := h.GC(time.Now().Add(2 * time.Minute)); err != nil || n != 2500 {
		t.Errorf("GC(now+2m) = %d, %v; want the other 2500", n, err)
	}
}

func TestRunGC(t *testing.T) {
	h := newHarness(t, Config{MaxEntries: 1024, GCInterval: 20 * time.Millisecond, GCMinInterval: 10 * time.Millisecond})
	clk, err := readClock()
	if err != nil {
		t.Fatal(err)
	}
	putFlows(t, h.Table, 100, func(int) uint64 { return clk.monotonic(clk.now) - 1 })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.RunGC(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := h.Len()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("RunGC left %d expired entries for 10 s", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("RunGC returned %v, want context.Canceled", err)
	}
}

func TestNextGCInterval(t *testing.T) {
	const lo, hi = 10 * time.Second, 12 * time.Hour
	for _, tt := range []struct {
		prev  time.Duration
		ratio float64
		want  time.Duration
	}{
		{5 * time.Minute, 0.10, 5 * time.Minute},                     // between 5% and 25%: unchanged
		{5 * time.Minute, 0.5, 150 * time.Second},                    // half deleted: half the interval
		{5 * time.Minute, 1, 30 * time.Second},                       // capped at 90%: a tenth
		{20 * time.Second, 0.95, lo},                                 // never below the minimum
		{5 * time.Minute, 0.01, 450 * time.Second},                   // few: 1.5x
		{5 * time.Minute, 0, 450 * time.Second},                      // none: 1.5x
		{10 * time.Hour, 0, hi},                                      // never above the maximum
		{5*time.Minute + 300*time.Millisecond, 0.1, 5 * time.Minute}, // rounded to seconds
	} {
		if got := nextGCInterval(tt.prev, tt.ratio, lo, hi); got != tt.want {
			t.Errorf("nextGCInterval(%v, %v) = %v, want %v", tt.prev, tt.ratio, got, tt.want)
		}
	}
}

func TestEntryString(t *testing.T) {
	e := Entry{
		Flow:      Flow{Src: netip.MustParseAddrPort("192.0.2.113:58044"), Dst: netip.MustParseAddrPort("192.0.2.175:8080"), Proto: TCP},
		Direction: In, State: StateClosing, Expires: time.Date(2026, 11, 22, 2, 15, 4, 0, time.UTC),
		RxPackets: 6, RxBytes: 525, RxFlagsSeen: 0x1b, TxPackets: 4, TxBytes: 300, TxFlagsSeen: 0x1b,
		Flags: FlagRxClosing | FlagTxClosing | FlagSeenNonSyn, RevNAT: 3, User: 7,
	}
	want := "TCP IN 192.0.2.113:58044 -> 192.0.2.175:8080 expires=2026-11-22T02:15:04Z RxPackets=6 RxBytes=525 RxFlagsSeen=0x1b " +
		"TxPackets=4 TxBytes=300 TxFlagsSeen=0x1b Flags=0x0007 [ RxClosing TxClosing SeenNonSyn ] RevNAT=3 User=7 State=closing"
	if got := e.String(); got != want {
		t.Errorf("\n got  %s\n want %s", got, want)
	}
	if got := Flags(0x60).String(); got != "[ 0x60 ]" {
		t.Errorf("unknown flags print %q", got)
	}
}

// TestNewReopenKeepsTimeouts checks that New on a pinned table keeps the
// stored timeouts where its Config leaves them zero.
func TestNewReopenKeepsTimeouts(t *testing.T) {
	dir := testutil.TempBPFFS(t) + "/ct"
	first, err := New(Config{PinPath: dir, MaxEntries: 64, Timeouts: Timeouts{NonTCP: 5 * time.Second, TCPSyn: 9 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	again, err := New(Config{PinPath: dir, Timeouts: Timeouts{TCPSyn: 11 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	want := Timeouts{TCPEstablished: DefaultTCPEstablished, TCPSyn: 11 * time.Second, TCPClosing: DefaultTCPClosing, NonTCP: 5 * time.Second}
	if got := again.Timeouts(); got != want || again.MaxEntries() != 64 {
		t.Errorf("reopened with %d entries and %+v, want 64 and %+v", again.MaxEntries(), got, want)
	}
	opened, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer opened.Close()
	if got := opened.Timeouts(); got != want {
		t.Errorf("Open reads %+v, want %+v", got, want)
	}
}

// TestLookupMapped checks that IPv4-mapped IPv6 addresses find IPv4 flows.
func TestLookupMapped(t *testing.T) {
	h := newHarness(t, Config{MaxEntries: 64})
	flows := putFlows(t, h.Table, 1, func(int) uint64 { return 1 })
	f := flows[0]
	mapped := Flow{
		Src:   netip.AddrPortFrom(netip.AddrFrom16(f.Src.Addr().As16()), f.Src.Port()),
		Dst:   netip.AddrPortFrom(netip.AddrFrom16(f.Dst.Addr().As16()), f.Dst.Port()),
		Proto: f.Proto,
	}
	if !mapped.Src.Addr().Is4In6() {
		t.Fatalf("%v is not IPv4-mapped", mapped.Src)
	}
	e, err := h.Lookup(mapped)
	if err != nil {
		t.Fatal(err)
	}
	if e.Flow != f {
		t.Errorf("found %v, want %v", e.Flow, f)
	}
}
