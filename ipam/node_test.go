package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/netblocks/netblocks/ipam"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// cmpNetip makes go-cmp compare netip values by value.
var cmpNetip = cmp.Options{
	cmp.Comparer(func(x, y netip.Addr) bool { return x == y }),
	cmp.Comparer(func(x, y netip.Prefix) bool { return x == y }),
}

func owner(i int) ipam.Owner {
	return ipam.Owner{ContainerID: "c" + strings.Repeat("0", 3) + itoa(i), IfName: "eth0"}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func newNode(t *testing.T, cfg ipam.NodeConfig) *ipam.NodeAllocator {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = ipam.NewMemoryStore()
	}
	a, err := ipam.NewNodeAllocator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func mustCheck(t *testing.T, c interface{ Check(context.Context) error }) {
	t.Helper()
	if err := c.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func addrs(al ipam.Allocation) []netip.Addr {
	var out []netip.Addr
	for _, ip := range al.IPs {
		out = append(out, ip.Address.Addr())
	}
	return out
}

func TestNodeAllocatorReservedAndCounts(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		r         ipam.Range
		first     string
		last      string
		total     uint64
		gateway   string
		prefixLen int
	}{
		{"v4 /24 defaults", ipam.Range{Subnet: netip.MustParsePrefix("10.244.1.0/24")}, "10.244.1.2", "10.244.1.254", 253, "10.244.1.1", 24},
		{"v4 /29 no gateway", ipam.Range{Subnet: netip.MustParsePrefix("10.0.0.0/29"), NoGateway: true}, "10.0.0.1", "10.0.0.6", 6, "", 29},
		{"v4 network and broadcast usable", ipam.Range{Subnet: netip.MustParsePrefix("10.0.0.0/30"), NoGateway: true, UseNetworkAddress: true, UseBroadcastAddress: true}, "10.0.0.0", "10.0.0.3", 4, "", 30},
		{"v4 custom gateway and range", ipam.Range{Subnet: netip.MustParsePrefix("10.0.0.0/24"), Gateway: netip.MustParseAddr("10.0.0.10"), Start: netip.MustParseAddr("10.0.0.8"), End: netip.MustParseAddr("10.0.0.12")}, "10.0.0.8", "10.0.0.12", 4, "10.0.0.10", 24},
		{"v4 /31", ipam.Range{Subnet: netip.MustParsePrefix("10.0.0.0/31")}, "10.0.0.0", "10.0.0.1", 2, "", 31},
		{"v4 /32", ipam.Range{Subnet: netip.MustParsePrefix("10.0.0.7/32")}, "10.0.0.7", "10.0.0.7", 1, "", 32},
		{"v6 /120", ipam.Range{Subnet: netip.MustParsePrefix("fd00::/120")}, "fd00::2", "fd00::ff", 254, "fd00::1", 120},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newNode(t, ipam.NodeConfig{Ranges: []ipam.Range{tc.r}, Cooldown: -1})
			u, err := a.Usage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if u[0].Total != tc.total || u[0].InUse != 0 {
				t.Fatalf("usage %+v, want total %d", u[0], tc.total)
			}
			seen := map[netip.Addr]bool{}
			var got []netip.Addr
			for i := 0; i < int(tc.total); i++ {
				al, err := a.Allocate(ctx, owner(i))
				if err != nil {
					t.Fatalf("allocation %d: %v", i, err)
				}
				ip := al.IPs[0]
				if ip.Address.Bits() != tc.prefixLen {
					t.Fatalf("address %v: want prefix length %d", ip.Address, tc.prefixLen)
				}
				if tc.gateway == "" && ip.Gateway.IsValid() || tc.gateway != "" && ip.Gateway.String() != tc.gateway {
					t.Fatalf("gateway %v, want %q", ip.Gateway, tc.gateway)
				}
				if seen[ip.Address.Addr()] {
					t.Fatalf("%v handed out twice", ip.Address)
				}
				seen[ip.Address.Addr()] = true
				got = append(got, ip.Address.Addr())
			}
			if got[0].String() != tc.first || got[len(got)-1].String() != tc.last {
				t.Fatalf("handed out %v..%v, want %s..%s", got[0], got[len(got)-1], tc.first, tc.last)
			}
			if tc.gateway != "" && seen[netip.MustParseAddr(tc.gateway)] {
				t.Fatal("gateway handed out")
			}
			if _, err := a.Allocate(ctx, owner(9999)); !errors.Is(err, ipam.ErrExhausted) {
				t.Fatalf("allocation past the end: %v, want ErrExhausted", err)
			}
			u, _ = a.Usage(ctx)
			if u[0].InUse != tc.total || u[0].Free() != 0 {
				t.Fatalf("usage when full: %+v", u[0])
			}
			mustCheck(t, a)
		})
	}
}

func TestNodeAllocatorIdempotentAndRelease(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: netip.MustParsePrefix("10.0.0.0/24")}}})
	o := owner(1)
	first, err := a.Allocate(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.Allocate(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first, again, cmpNetip); diff != "" {
		t.Fatalf("second Allocate differs (-first +second):\n%s", diff)
	}
	// Another interface of the same container is another owner.
	other, err := a.Allocate(ctx, ipam.Owner{ContainerID: o.ContainerID, IfName: "net1"})
	if err != nil {
		t.Fatal(err)
	}
	if addrs(other)[0] == addrs(first)[0] {
		t.Fatal("two interfaces got one address")
	}
	got, err := a.Get(ctx, o)
	if err != nil || !cmp.Equal(got, first, cmpNetip) {
		t.Fatalf("Get = %v, %v", got, err)
	}
	rel, ok, err := a.Release(ctx, o)
	if err != nil || !ok || !cmp.Equal(rel, first, cmpNetip) {
		t.Fatalf("Release = %v %v %v", rel, ok, err)
	}
	if _, ok, err := a.Release(ctx, o); err != nil || ok {
		t.Fatalf("second Release = %v %v, want nothing and no error", ok, err)
	}
	if _, err := a.Get(ctx, o); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Get after release: %v, want os.ErrNotExist", err)
	}
	// Release by address.
	who, ok, err := a.ReleaseAddr(ctx, addrs(other)[0])
	if err != nil || !ok || who.IfName != "net1" {
		t.Fatalf("ReleaseAddr = %v %v %v", who, ok, err)
	}
	if _, ok, err := a.ReleaseAddr(ctx, addrs(other)[0]); err != nil || ok {
		t.Fatalf("ReleaseAddr of a free address = %v %v", ok, err)
	}
	if _, _, err := a.ReleaseAddr(ctx, netip.MustParseAddr("10.9.9.9")); err == nil || !strings.Contains(err.Error(), "outside every range") {
		t.Fatalf("ReleaseAddr outside: %v", err)
	}
	if l, _ := a.List(ctx); len(l) != 0 {
		t.Fatalf("List after releases: %v", l)
	}
	mustCheck(t, a)
}

func TestNodeAllocatorSpecificAddress(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, ipam.NodeConfig{Ranges: []ipam.Range{
		{Subnet: netip.MustParsePrefix("10.0.0.0/24")},
		{Subnet: netip.MustParsePrefix("fd00::/120")},
	}})
	want := []netip.Addr{netip.MustParseAddr("10.0.0.50"), netip.MustParseAddr("fd00::50")}
	al, err := a.AllocateAddr(ctx, owner(1), want[1], want[0])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, addrs(al), cmpNetip); diff != "" {
		t.Fatal(diff)
	}
	if _, err := a.AllocateAddr(ctx, owner(1), want...); err != nil {
		t.Fatalf("asking again: %v", err)
	}
	for _, tc := range []struct {
		name  string
		o     ipam.Owner
		addrs []netip.Addr
		is    error
		msg   string
	}{
		{"held by another", owner(2), want[:1], ipam.ErrInUse, "held by"},
		{"outside", owner(2), []netip.Addr{netip.MustParseAddr("10.0.1.1")}, nil, "outside every range"},
		{"gateway", owner(2), []netip.Addr{netip.MustParseAddr("10.0.0.1")}, nil, "reserved"},
		{"network address", owner(2), []netip.Addr{netip.MustParseAddr("10.0.0.0")}, nil, "outside"},
		{"broadcast", owner(2), []netip.Addr{netip.MustParseAddr("10.0.0.255")}, nil, "outside"},
		{"two of a family", owner(2), []netip.Addr{netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("10.0.0.8")}, nil, "one per family"},
		{"owner holds others", owner(1), []netip.Addr{netip.MustParseAddr("10.0.0.9")}, nil, "already holds"},
		{"none", owner(2), nil, nil, "no address"},
		{"mapped", owner(2), []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.7")}, nil, "IPv4-mapped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := a.List(ctx)
			_, err := a.AllocateAddr(ctx, tc.o, tc.addrs...)
			if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.is, tc.msg)
			}
			after, _ := a.List(ctx)
			if diff := cmp.Diff(before, after, cmpNetip); diff != "" {
				t.Fatalf("a failed AllocateAddr changed the state:\n%s", diff)
			}
		})
	}
	// Dynamic allocation skips the statically held address.
	for i := 0; i < 252; i++ {
		al, err := a.Allocate(ctx, owner(100+i))
		if err != nil {
			t.Fatal(err)
		}
		if addrs(al)[0] == want[0] {
			t.Fatal("handed out a held address")
		}
	}
	if _, err := a.Allocate(ctx, owner(999)); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("full: %v", err)
	}
	// The v6 range still has room, but the owner needs both families:
	// nothing is handed out.
	if u, _ := a.Usage(ctx); u[1].InUse != 253 {
		t.Fatalf("a failed dual-stack allocation kept its IPv6 address: %+v", u[1])
	}
	mustCheck(t, a)
}

func TestNodeAllocatorCooldown(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	a := newNode(t, ipam.NodeConfig{
		Ranges:   []ipam.Range{{Subnet: netip.MustParsePrefix("10.0.0.0/29"), NoGateway: true}},
		Cooldown: time.Minute,
		Now:      clk.Now,
	})
	var held []ipam.Allocation
	for i := 0; i < 6; i++ {
		al, err := a.Allocate(ctx, owner(i))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, al)
	}
	// Release .2 then .1; the range is full but for those two.
	a.Release(ctx, held[1].Owner)
	clk.Add(time.Second)
	a.Release(ctx, held[0].Owner)
	// Both cool down and nothing else is free: the one released longest
	// ago (.2) comes back first.
	al, err := a.Allocate(ctx, owner(10))
	if err != nil {
		t.Fatal(err)
	}
	if got := addrs(al)[0]; got != addrs(held[1])[0] {
		t.Fatalf("got %v, want %v, the address released longest ago", got, addrs(held[1])[0])
	}
	// With room elsewhere, a cooling address is skipped even after a wrap.
	a.Release(ctx, held[4].Owner) // .5
	clk.Add(2 * time.Minute)      // .5 and .1 have cooled
	a.Release(ctx, held[2].Owner) // .3 cools now
	for _, want := range []string{"10.0.0.5", "10.0.0.1", "10.0.0.3"} {
		al, err := a.Allocate(ctx, owner(20+len(want)+int(want[len(want)-1])))
		if err != nil {
			t.Fatal(err)
		}
		if got := addrs(al)[0].String(); got != want {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if _, err := a.Allocate(ctx, owner(50)); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("full: %v", err)
	}
	mustCheck(t, a)
}

func TestNodeAllocatorRoundRobin(t *testing.T) {
	// Released addresses come back last (host-local's behaviour), even
	// without a cooldown.
	ctx := context.Background()
	a := newNode(t, ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: netip.MustParsePrefix("10.0.0.0/28")}}, Cooldown: -1})
	al1, _ := a.Allocate(ctx, owner(1))
	a.Release(ctx, owner(1))
	al2, _ := a.Allocate(ctx, owner(2))
	if addrs(al1)[0] == addrs(al2)[0] {
		t.Fatalf("released %v handed out again at once", addrs(al1)[0])
	}
}

func TestNodeAllocatorGC(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: netip.MustParsePrefix("10.0.0.0/24")}, {Subnet: netip.MustParsePrefix("fd00::/64")}}})
	var valid []ipam.Owner
	for i := 0; i < 20; i++ {
		if _, err := a.Allocate(ctx, owner(i)); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			valid = append(valid, owner(i))
		}
	}
	released, err := a.GC(ctx, valid)
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 20-len(valid) {
		t.Fatalf("GC released %d, want %d", len(released), 20-len(valid))
	}
	l, _ := a.List(ctx)
	var left []ipam.Owner
	for _, al := range l {
		left = append(left, al.Owner)
	}
	if diff := cmp.Diff(valid, left, cmp.Transformer("sort", func(o []ipam.Owner) map[ipam.Owner]bool {
		m := map[ipam.Owner]bool{}
		for _, x := range o {
			m[x] = true
		}
		return m
	})); diff != "" {
		t.Fatalf("after GC (-valid +left):\n%s", diff)
	}
	u, _ := a.Usage(ctx)
	if u[0].InUse != uint64(len(valid)) || u[1].InUse != uint64(len(valid)) {
		t.Fatalf("usage after GC: %+v", u)
	}
	if u[1].Total != 1<<64-2 { // ::1 to the end, less the gateway
		t.Fatalf("a /64 counts %d, want 2^64-2", u[1].Total)
	}
	mustCheck(t, a)
}

func TestNodeAllocatorBadInput(t *testing.T) {
	ctx := context.Background()
	p := netip.MustParsePrefix
	ad := netip.MustParseAddr
	for _, tc := range []struct {
		name string
		cfg  ipam.NodeConfig
		msg  string
	}{
		{"no ranges", ipam.NodeConfig{}, "no ranges"},
		{"host bits", ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("10.0.0.1/24")}}}, "host bits"},
		{"invalid", ipam.NodeConfig{Ranges: []ipam.Range{{}}}, "not a valid prefix"},
		{"overlap", ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("10.0.0.0/24")}, {Subnet: p("10.0.0.128/25")}}}, "overlaps"},
		{"start outside", ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("10.0.0.0/24"), Start: ad("10.0.1.1")}}}, "start 10.0.1.1 is outside"},
		{"gateway outside", ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("10.0.0.0/24"), Gateway: ad("10.0.1.1")}}}, "gateway 10.0.1.1 is outside"},
		{"start after end", ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("10.0.0.0/24"), Start: ad("10.0.0.9"), End: ad("10.0.0.3")}}}, "after end"},
		{"only the gateway", ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("10.0.0.0/24"), Start: ad("10.0.0.1"), End: ad("10.0.0.1")}}}, "no address left"},
		{"gateway and none", ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("10.0.0.0/24"), Gateway: ad("10.0.0.1"), NoGateway: true}}}, "both"},
		{"bad name", ipam.NodeConfig{Name: "a/b", Ranges: []ipam.Range{{Subnet: p("10.0.0.0/24")}}}, "allocator name"},
		{"mapped", ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("::ffff:10.0.0.0/120")}}}, "IPv4-mapped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Store = ipam.NewMemoryStore()
			_, err := ipam.NewNodeAllocator(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want one containing %q", err, tc.msg)
			}
		})
	}
	a := newNode(t, ipam.NodeConfig{Ranges: []ipam.Range{{Subnet: p("10.0.0.0/24")}}})
	for _, o := range []ipam.Owner{
		{}, {ContainerID: "abc"}, {IfName: "eth0"}, {ContainerID: "-abc", IfName: "eth0"},
		{ContainerID: "a b", IfName: "eth0"}, {ContainerID: "abc", IfName: "eth/0"},
		{ContainerID: "abc", IfName: "0123456789abcdef"}, {ContainerID: "abc", IfName: ".."},
		{ContainerID: "abc", IfName: "eth:0"}, {ContainerID: "abc", IfName: "eth 0"},
	} {
		if _, err := a.Allocate(ctx, o); err == nil || !strings.Contains(err.Error(), "owner") {
			t.Errorf("Allocate(%+v) = %v, want an error naming the owner", o, err)
		}
		if _, _, err := a.Release(ctx, o); err == nil {
			t.Errorf("Release(%+v) accepted a malformed owner", o)
		}
	}
	if l, _ := a.List(ctx); len(l) != 0 {
		t.Fatalf("bad input changed the state: %v", l)
	}
}

func TestNodeAllocatorConcurrent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		open func() ipam.Store
	}{
		{"memory", func() func() ipam.Store { s := ipam.NewMemoryStore(); return func() ipam.Store { return s } }()},
		{"bolt", func() ipam.Store {
			s, err := ipam.OpenBolt(dir+"/ipam.db", ipam.BoltConfig{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const workers, each = 4, 30
			r := []ipam.Range{{Subnet: netip.MustParsePrefix("10.0.0.0/24")}, {Subnet: netip.MustParsePrefix("fd00::/120")}}
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			results := make([][]ipam.Allocation, workers)
			var checker *ipam.NodeAllocator
			for w := 0; w < workers; w++ {
				a := newNode(t, ipam.NodeConfig{Store: tc.open(), Ranges: r})
				checker = a
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						o := owner(w*1000 + i)
						al, err := a.Allocate(ctx, o)
						if err != nil {
							errs <- err
							return
						}
						results[w] = append(results[w], al)
						if i%4 == 3 {
							if _, _, err := a.Release(ctx, o); err != nil {
								errs <- err
								return
							}
							results[w] = results[w][:len(results[w])-1]
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			seen := map[netip.Addr]ipam.Owner{}
			n := 0
			for _, rs := range results {
				for _, al := range rs {
					n++
					for _, ad := range addrs(al) {
						if o, dup := seen[ad]; dup {
							t.Fatalf("%v held by %v and %v", ad, o, al.Owner)
						}
						seen[ad] = al.Owner
					}
				}
			}
			l, _ := checker.List(ctx)
			if len(l) != n {
				t.Fatalf("store lists %d allocations, workers hold %d", len(l), n)
			}
			mustCheck(t, checker)
		})
	}
}
