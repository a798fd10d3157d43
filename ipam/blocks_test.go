package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/netblocks/netblocks/ipam"
)

// bpClock is a clock the test moves by hand.
type bpClock struct {
	mu sync.Mutex
	t  time.Time
}

func newBPClock() *bpClock { return &bpClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *bpClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *bpClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// bpCmp makes go-cmp compare netip values by value.
var bpCmp = cmp.Options{
	cmp.Comparer(func(x, y netip.Addr) bool { return x == y }),
	cmp.Comparer(func(x, y netip.Prefix) bool { return x == y }),
}

func bpOwner(i int) ipam.Owner {
	return ipam.Owner{ContainerID: fmt.Sprintf("pod%d", i), IfName: "eth0"}
}

func bpAddrs(al ipam.Allocation) []netip.Addr {
	var out []netip.Addr
	for _, ip := range al.IPs {
		out = append(out, ip.Address.Addr())
	}
	return out
}

func bpPrefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func bpAddrList(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// newBP returns a pool on a memory store unless cfg has a store.
func newBP(t testing.TB, cfg ipam.BlockPoolConfig) *ipam.BlockPool {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = ipam.NewMemoryStore()
	}
	p, err := ipam.NewBlockPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func bpCheck(t testing.TB, p *ipam.BlockPool) {
	t.Helper()
	if err := p.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// bpAlloc allocates for owner i on node and checks the store.
func bpAlloc(t testing.TB, p *ipam.BlockPool, node string, i int) []netip.Addr {
	t.Helper()
	al, err := p.Allocate(context.Background(), node, bpOwner(i))
	if err != nil {
		t.Fatal(err)
	}
	bpCheck(t, p)
	return bpAddrs(al)
}

func bpBlocks(t testing.TB, p *ipam.BlockPool) []ipam.Block {
	t.Helper()
	b, err := p.Blocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bpDump returns every key and value of s.
func bpDump(t testing.TB, s ipam.Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := s.View(context.Background(), func(tx ipam.Txn) error {
		return tx.Scan("", "", func(k string, v []byte) bool {
			out[k] = string(v)
			return true
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBlockPoolAffinity(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		strict    bool
		wantAddr  netip.Addr // what node a gets once every block is taken
		wantErr   error
		wantBlock []ipam.Block
	}{
		{
			name:     "borrow",
			wantAddr: netip.MustParseAddr("10.0.0.65"),
			wantBlock: []ipam.Block{
				{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 64},
				{CIDR: netip.MustParsePrefix("10.0.0.64/26"), Node: "b", Total: 64, InUse: 2},
				{CIDR: netip.MustParsePrefix("10.0.0.128/26"), Node: "c", Total: 64, InUse: 1},
				{CIDR: netip.MustParsePrefix("10.0.0.192/26"), Node: "a", Total: 64, InUse: 64},
			},
		},
		{
			name:    "strict",
			strict:  true,
			wantErr: ipam.ErrExhausted,
			wantBlock: []ipam.Block{
				{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 64},
				{CIDR: netip.MustParsePrefix("10.0.0.64/26"), Node: "b", Total: 64, InUse: 1},
				{CIDR: netip.MustParsePrefix("10.0.0.128/26"), Node: "c", Total: 64, InUse: 1},
				{CIDR: netip.MustParsePrefix("10.0.0.192/26"), Node: "a", Total: 64, InUse: 64},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newBP(t, ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/24"), StrictAffinity: tc.strict})
			// Each node gets its own block.
			got := [][]netip.Addr{bpAlloc(t, p, "a", 0), bpAlloc(t, p, "b", 1), bpAlloc(t, p, "c", 2)}
			want := [][]netip.Addr{bpAddrList("10.0.0.0"), bpAddrList("10.0.0.64"), bpAddrList("10.0.0.128")}
			if diff := cmp.Diff(want, got, bpCmp); diff != "" {
				t.Fatalf("first addresses (-want +got):\n%s", diff)
			}
			// Node a fills its block, then takes the last one.
			for i := 1; i < 64; i++ {
				addr := bpAlloc(t, p, "a", 100+i)
				if want := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}); addr[0] != want {
					t.Fatalf("allocation %d of node a: got %v, want %v", i, addr[0], want)
				}
			}
			if addr := bpAlloc(t, p, "a", 200); addr[0] != netip.MustParseAddr("10.0.0.192") {
				t.Fatalf("node a with a full block got %v, want 10.0.0.192 from a new block", addr[0])
			}
			for i := 1; i < 64; i++ {
				bpAlloc(t, p, "a", 200+i)
			}
			// Every block is claimed; a's are full.
			al, err := p.Allocate(ctx, "a", bpOwner(300))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("allocate with every block taken: got %v, want %v", err, tc.wantErr)
			}
			if err == nil && bpAddrs(al)[0] != tc.wantAddr {
				t.Fatalf("allocate with every block taken: got %v, want %v", bpAddrs(al), tc.wantAddr)
			}
			if err != nil && !strings.Contains(err.Error(), `no IPv4 address left for node "a"`) {
				t.Errorf("error does not say what is exhausted: %v", err)
			}
			bpCheck(t, p)
			if diff := cmp.Diff(tc.wantBlock, bpBlocks(t, p), bpCmp); diff != "" {
				t.Errorf("blocks (-want +got):\n%s", diff)
			}
			// Node c still has room in its own block.
			if addr := bpAlloc(t, p, "c", 400); addr[0] != netip.MustParseAddr("10.0.0.129") {
				t.Errorf("node c got %v, want 10.0.0.129", addr[0])
			}
		})
	}
}

func TestBlockPoolUsage(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		cfg    ipam.BlockPoolConfig
		allocs map[string]int // node: how many
		want   []ipam.Usage
		golden string
	}{
		{
			name:   "IPv4",
			cfg:    ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.244.0.0/24")},
			allocs: map[string]int{"a": 3, "b": 2},
			want: []ipam.Usage{
				{Grouping: "IP Pool", CIDR: "10.244.0.0/24", Total: 256, InUse: 5},
				{Grouping: "Block", CIDR: "10.244.0.0/26", Node: "a", Total: 64, InUse: 3},
				{Grouping: "Block", CIDR: "10.244.0.64/26", Node: "b", Total: 64, InUse: 2},
			},
			golden: `+----------+----------------+-----------+------------+-----------+
| GROUPING |      CIDR      | IPS TOTAL | IPS IN USE | IPS FREE  |
+----------+----------------+-----------+------------+-----------+
| IP Pool  | 10.244.0.0/24  |       256 | 5 (2%)     | 251 (98%) |
| Block    | 10.244.0.0/26  |        64 | 3 (5%)     | 61 (95%)  |
| Block    | 10.244.0.64/26 |        64 | 2 (3%)     | 62 (97%)  |
+----------+----------------+-----------+------------+-----------+
`,
		},
		{
			name:   "dual-stack",
			cfg:    ipam.BlockPoolConfig{CIDRs: bpPrefixes("fd00::/120", "10.0.0.0/24"), BlockSizeV4: 28},
			allocs: map[string]int{"a": 20, "b": 1},
			want: []ipam.Usage{
				{Grouping: "IP Pool", CIDR: "fd00::/120", Total: 256, InUse: 21},
				{Grouping: "Block", CIDR: "fd00::/122", Node: "a", Total: 64, InUse: 20},
				{Grouping: "Block", CIDR: "fd00::40/122", Node: "b", Total: 64, InUse: 1},
				{Grouping: "IP Pool", CIDR: "10.0.0.0/24", Total: 256, InUse: 21},
				{Grouping: "Block", CIDR: "10.0.0.0/28", Node: "a", Total: 16, InUse: 16},
				{Grouping: "Block", CIDR: "10.0.0.16/28", Node: "a", Total: 16, InUse: 4},
				{Grouping: "Block", CIDR: "10.0.0.32/28", Node: "b", Total: 16, InUse: 1},
			},
		},
		{
			name:   "huge IPv6",
			cfg:    ipam.BlockPoolConfig{CIDRs: bpPrefixes("fd00::/48")},
			allocs: map[string]int{"a": 1},
			want: []ipam.Usage{
				{Grouping: "IP Pool", CIDR: "fd00::/48", Total: 1<<64 - 1, InUse: 1},
				{Grouping: "Block", CIDR: "fd00::/122", Node: "a", Total: 64, InUse: 1},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newBP(t, tc.cfg)
			n := 0
			for _, node := range []string{"a", "b"} {
				for range tc.allocs[node] {
					bpAlloc(t, p, node, n)
					n++
				}
			}
			got, err := p.Usage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("usage (-want +got):\n%s", diff)
			}
			if tc.golden == "" {
				return
			}
			var b strings.Builder
			if err := ipam.WriteUsage(&b, got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.golden, b.String()); diff != "" {
				t.Errorf("table (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBlockPoolDualStack(t *testing.T) {
	ctx := context.Background()
	p := newBP(t, ipam.BlockPoolConfig{CIDRs: bpPrefixes("fd00::/120", "10.0.0.0/24")})
	var got []ipam.Allocation
	for i, node := range []string{"a", "b", "a"} {
		al, err := p.Allocate(ctx, node, bpOwner(i))
		if err != nil {
			t.Fatal(err)
		}
		bpCheck(t, p)
		got = append(got, al)
	}
	ips := func(v4, v6 string) []ipam.IPConfig {
		return []ipam.IPConfig{{Address: netip.MustParsePrefix(v4)}, {Address: netip.MustParsePrefix(v6)}}
	}
	want := []ipam.Allocation{
		{Owner: bpOwner(0), IPs: ips("10.0.0.0/32", "fd00::/128")},
		{Owner: bpOwner(1), IPs: ips("10.0.0.64/32", "fd00::40/128")},
		{Owner: bpOwner(2), IPs: ips("10.0.0.1/32", "fd00::1/128")},
	}
	if diff := cmp.Diff(want, got, bpCmp, cmpopts.IgnoreFields(ipam.Allocation{}, "Since")); diff != "" {
		t.Errorf("allocations (-want +got):\n%s", diff)
	}
	wantBlocks := []ipam.Block{
		{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 2},
		{CIDR: netip.MustParsePrefix("10.0.0.64/26"), Node: "b", Total: 64, InUse: 1},
		{CIDR: netip.MustParsePrefix("fd00::/122"), Node: "a", Total: 64, InUse: 2},
		{CIDR: netip.MustParsePrefix("fd00::40/122"), Node: "b", Total: 64, InUse: 1},
	}
	if diff := cmp.Diff(wantBlocks, bpBlocks(t, p), bpCmp); diff != "" {
		t.Errorf("blocks (-want +got):\n%s", diff)
	}
}

func TestBlockPoolIdempotentAndRelease(t *testing.T) {
	ctx := context.Background()
	clock := newBPClock()
	p := newBP(t, ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/24", "fd00::/120"), Now: clock.Now})
	first, err := p.Allocate(ctx, "a", bpOwner(0))
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Second)
	steps := []struct {
		name string
		do   func() (any, error)
		want any
	}{
		{"allocate again", func() (any, error) { return p.Allocate(ctx, "a", bpOwner(0)) }, first},
		{"allocate again on another node", func() (any, error) { return p.Allocate(ctx, "b", bpOwner(0)) }, first},
		{"get", func() (any, error) { return p.Get(ctx, bpOwner(0)) }, first},
		{"list", func() (any, error) { return p.List(ctx) }, []ipam.Allocation{first}},
		{"release v4 address", func() (any, error) {
			o, ok, err := p.ReleaseAddr(ctx, netip.MustParseAddr("10.0.0.0"))
			return fmt.Sprint(o, ok), err
		}, "pod0/eth0 true"},
		{"release v4 address again", func() (any, error) {
			o, ok, err := p.ReleaseAddr(ctx, netip.MustParseAddr("10.0.0.0"))
			return fmt.Sprint(o, ok), err
		}, "/ false"},
		{"get after ReleaseAddr", func() (any, error) {
			al, err := p.Get(ctx, bpOwner(0))
			return bpAddrs(al), err
		}, bpAddrList("fd00::")},
		{"release", func() (any, error) {
			al, ok, err := p.Release(ctx, bpOwner(0))
			return fmt.Sprint(bpAddrs(al), ok), err
		}, "[fd00::] true"},
		{"release again", func() (any, error) {
			_, ok, err := p.Release(ctx, bpOwner(0))
			return ok, err
		}, false},
		{"get after release", func() (any, error) {
			_, err := p.Get(ctx, bpOwner(0))
			return errors.Is(err, os.ErrNotExist), nil
		}, true},
		{"blocks keep their affinity", func() (any, error) { return p.Blocks(ctx) }, []ipam.Block{
			{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64},
			{CIDR: netip.MustParsePrefix("fd00::/122"), Node: "a", Total: 64},
		}},
		{"release an address outside the pools", func() (any, error) {
			_, _, err := p.ReleaseAddr(ctx, netip.MustParseAddr("10.1.0.0"))
			return err != nil && strings.Contains(err.Error(), "outside every pool"), nil
		}, true},
	}
	for _, s := range steps {
		got, err := s.do()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if diff := cmp.Diff(s.want, got, bpCmp); diff != "" {
			t.Fatalf("%s (-want +got):\n%s", s.name, diff)
		}
		bpCheck(t, p)
	}
}

func TestBlockPoolAllocateAddr(t *testing.T) {
	ctx := context.Background()
	// Owner 0 on node a holds 10.0.0.0 and fd00:: in every case.
	v6a := ipam.Block{CIDR: netip.MustParsePrefix("fd00::/122"), Node: "a", Total: 64, InUse: 1}
	for _, tc := range []struct {
		name    string
		strict  bool
		node    string
		owner   int
		addrs   []netip.Addr
		wantErr string // substring; empty for success
		isErr   error
		blocks  []ipam.Block
	}{
		{
			name: "in own block", node: "a", owner: 10, addrs: bpAddrList("10.0.0.5"),
			blocks: []ipam.Block{{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 2}, v6a},
		},
		{
			name: "claims an unclaimed block", node: "b", owner: 10, addrs: bpAddrList("10.0.0.200"),
			blocks: []ipam.Block{
				{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 1},
				{CIDR: netip.MustParsePrefix("10.0.0.192/26"), Node: "b", Total: 64, InUse: 1},
				v6a,
			},
		},
		{
			name: "in another node's block", node: "b", owner: 10, addrs: bpAddrList("10.0.0.6"),
			blocks: []ipam.Block{{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 2}, v6a},
		},
		{
			name: "in another node's block, strict", strict: true, node: "b", owner: 10, addrs: bpAddrList("10.0.0.6"),
			wantErr: `10.0.0.6 is in block 10.0.0.0/26 of node "a", and strict affinity forbids borrowing`,
		},
		{
			name: "dual-stack", node: "a", owner: 10, addrs: bpAddrList("fd00::7", "10.0.0.7"),
			blocks: []ipam.Block{
				{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 2},
				{CIDR: netip.MustParsePrefix("fd00::/122"), Node: "a", Total: 64, InUse: 2},
			},
		},
		{name: "outside every pool", node: "a", owner: 10, addrs: bpAddrList("10.0.1.0"), wantErr: "address 10.0.1.0 is outside every pool"},
		{name: "in use", node: "a", owner: 10, addrs: bpAddrList("10.0.0.0"), isErr: ipam.ErrInUse, wantErr: "10.0.0.0 is held by pod0/eth0"},
		{name: "in use in another node's block", node: "b", owner: 10, addrs: bpAddrList("10.0.0.0"), isErr: ipam.ErrInUse},
		{
			name: "what the owner holds", node: "a", owner: 0, addrs: bpAddrList("fd00::", "10.0.0.0"),
			blocks: []ipam.Block{{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 1}, v6a},
		},
		{name: "owner holds another", node: "a", owner: 0, addrs: bpAddrList("10.0.0.1"), wantErr: "owner already holds [10.0.0.0 fd00::]"},
		{name: "two of a family", node: "a", owner: 10, addrs: bpAddrList("10.0.0.1", "10.0.0.2"), wantErr: "one per family"},
		{name: "none", node: "a", owner: 10, wantErr: "no address given"},
		{name: "bad node", node: "a/b", owner: 10, addrs: bpAddrList("10.0.0.1"), wantErr: `node name "a/b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newBP(t, ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/24", "fd00::/120"), StrictAffinity: tc.strict})
			bpAlloc(t, p, "a", 0)
			before := bpBlocks(t, p)
			al, err := p.AllocateAddr(ctx, tc.node, bpOwner(tc.owner), tc.addrs...)
			bpCheck(t, p)
			if tc.wantErr != "" || tc.isErr != nil {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || (tc.isErr != nil && !errors.Is(err, tc.isErr)) {
					t.Fatalf("got error %v, want one with %q (%v)", err, tc.wantErr, tc.isErr)
				}
				if diff := cmp.Diff(before, bpBlocks(t, p), bpCmp); diff != "" {
					t.Errorf("a failed AllocateAddr changed the blocks (-before +after):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.addrs
			if len(want) == 2 && want[0].Is6() {
				want = []netip.Addr{want[1], want[0]}
			}
			if diff := cmp.Diff(want, bpAddrs(al), bpCmp); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.blocks, bpBlocks(t, p), bpCmp); diff != "" {
				t.Errorf("blocks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBlockPoolCooldown(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		cooldown time.Duration
		fill     bool // hold every other address of the block
		wait     time.Duration
		want     netip.Addr
	}{
		{name: "cooling", wait: 10 * time.Second, want: netip.MustParseAddr("10.0.0.1")},
		{name: "cooled", wait: 30 * time.Second, want: netip.MustParseAddr("10.0.0.0")},
		{name: "no cooldown", cooldown: -1, want: netip.MustParseAddr("10.0.0.0")},
		{name: "short cooldown", cooldown: time.Second, wait: time.Second, want: netip.MustParseAddr("10.0.0.0")},
		{name: "block otherwise full", fill: true, wait: time.Second, want: netip.MustParseAddr("10.0.0.0")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newBPClock()
			p := newBP(t, ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/24"), BlockSizeV4: 30, Cooldown: tc.cooldown, Now: clock.Now})
			if _, err := p.AllocateAddr(ctx, "a", bpOwner(0), netip.MustParseAddr("10.0.0.0")); err != nil {
				t.Fatal(err)
			}
			if tc.fill {
				for i := 1; i < 4; i++ {
					bpAlloc(t, p, "a", i)
				}
			}
			if _, _, err := p.Release(ctx, bpOwner(0)); err != nil {
				t.Fatal(err)
			}
			bpCheck(t, p)
			clock.Add(tc.wait)
			if got := bpAlloc(t, p, "a", 10); got[0] != tc.want {
				t.Errorf("got %v, want %v", got[0], tc.want)
			}
			if n := len(bpBlocks(t, p)); n != 1 {
				t.Errorf("node a has %d blocks, want 1", n)
			}
		})
	}
}

func TestBlockPoolGC(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		valid []int
		want  []int // released
	}{
		{"some", []int{1, 3}, []int{0, 2, 4}},
		{"all valid", []int{0, 1, 2, 3, 4, 99}, nil},
		{"none valid", nil, []int{0, 1, 2, 3, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newBP(t, ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/24", "fd00::/120")})
			for i := range 5 {
				bpAlloc(t, p, []string{"a", "b"}[i%2], i)
			}
			var valid []ipam.Owner
			for _, i := range tc.valid {
				valid = append(valid, bpOwner(i))
			}
			released, err := p.GC(ctx, valid)
			if err != nil {
				t.Fatal(err)
			}
			bpCheck(t, p)
			var got []ipam.Owner
			for _, al := range released {
				got = append(got, al.Owner)
				if len(al.IPs) != 2 {
					t.Errorf("released %v: want 2 addresses", al)
				}
			}
			var want []ipam.Owner
			for _, i := range tc.want {
				want = append(want, bpOwner(i))
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("released (-want +got):\n%s", diff)
			}
			list, err := p.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(list)+len(released) != 5 {
				t.Errorf("%d left and %d released of 5", len(list), len(released))
			}
			if n := len(bpBlocks(t, p)); n != 4 {
				t.Errorf("%d blocks after GC, want 4: blocks keep their affinity", n)
			}
		})
	}
}

func TestBlockPoolReleaseAffinity(t *testing.T) {
	ctx := context.Background()
	clock := newBPClock()
	p := newBP(t, ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/24", "fd00::/120"), BlockSizeV4: 28, Now: clock.Now})
	// Node a: 16 + 1 IPv4 addresses, two blocks; 17 IPv6 in one. Node b: one.
	for i := range 17 {
		bpAlloc(t, p, "a", i)
	}
	bpAlloc(t, p, "b", 100)
	release := func(i int) func() error {
		return func() error { _, _, err := p.Release(ctx, bpOwner(i)); return err }
	}
	steps := []struct {
		name   string
		before func() error
		node   string
		want   []netip.Prefix
		blocks []string // CIDR node
	}{
		{
			name: "blocks in use", node: "a",
			blocks: []string{"10.0.0.0/28 a", "10.0.0.16/28 a", "10.0.0.32/28 b", "fd00::/122 a", "fd00::40/122 b"},
		},
		{
			name: "unknown node", node: "c",
			blocks: []string{"10.0.0.0/28 a", "10.0.0.16/28 a", "10.0.0.32/28 b", "fd00::/122 a", "fd00::40/122 b"},
		},
		{
			// Owner 16 holds the only address of 10.0.0.16/28, with its
			// record cooling down; the IPv6 block still holds 16.
			name: "one empty block", before: release(16), node: "a", want: bpPrefixes("10.0.0.16/28"),
			blocks: []string{"10.0.0.0/28 a", "10.0.0.32/28 b", "fd00::/122 a", "fd00::40/122 b"},
		},
		{
			name: "node b emptied", before: release(100), node: "b", want: bpPrefixes("10.0.0.32/28", "fd00::40/122"),
			blocks: []string{"10.0.0.0/28 a", "fd00::/122 a"},
		},
		{
			name: "again", node: "b",
			blocks: []string{"10.0.0.0/28 a", "fd00::/122 a"},
		},
	}
	for _, s := range steps {
		if s.before != nil {
			if err := s.before(); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		got, err := p.ReleaseAffinity(ctx, s.node)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if diff := cmp.Diff(s.want, got, bpCmp); diff != "" {
			t.Errorf("%s: freed (-want +got):\n%s", s.name, diff)
		}
		var blocks []string
		for _, b := range bpBlocks(t, p) {
			blocks = append(blocks, b.CIDR.String()+" "+b.Node)
		}
		if diff := cmp.Diff(s.blocks, blocks); diff != "" {
			t.Errorf("%s: blocks (-want +got):\n%s", s.name, diff)
		}
		// Check also finds keys left behind in a freed block.
		bpCheck(t, p)
	}
	// A freed block is claimed again, by anyone, and its released addresses
	// are free at once.
	al, err := p.AllocateAddr(ctx, "c", bpOwner(200), netip.MustParseAddr("10.0.0.16"))
	if err != nil {
		t.Fatal(err)
	}
	bpCheck(t, p)
	if got := bpBlocks(t, p)[1]; got.CIDR != netip.MustParsePrefix("10.0.0.16/28") || got.Node != "c" || got.InUse != 1 {
		t.Errorf("after AllocateAddr %v: block %+v", bpAddrs(al), got)
	}
}

func TestBlockPoolCheckFindsCorruption(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		put  map[string]string // "" deletes
		want string
	}{
		{
			name: "affinity to an unclaimed block",
			put:  map[string]string{"blocks/default/aff/x/0a000040": "10.0.0.64/26"},
			want: `node "x" has affinity to block 10.0.0.64/26, which is not claimed`,
		},
		{
			name: "affinity to another node's block",
			put:  map[string]string{"blocks/default/aff/x/0a000000": "10.0.0.0/26"},
			want: `node "x" has affinity to block 10.0.0.0/26, which is claimed by "a"`,
		},
		{
			name: "affinity missing",
			put:  map[string]string{"blocks/default/aff/a/0a000000": ""},
			want: `block 10.0.0.0/26 is claimed by "a", which has no affinity to it`,
		},
		{
			name: "affinity value",
			put:  map[string]string{"blocks/default/aff/a/0a000000": "10.0.0.0/24"},
			want: `holds "10.0.0.0/24", want "10.0.0.0/26"`,
		},
		{
			name: "address without owner record",
			put:  map[string]string{"blocks/default/b/0a000000/s/0a000009": `{"owner":"pod9/eth0"}`},
			want: "10.0.0.9 is held by pod9/eth0, which does not list it",
		},
		{
			name: "owner lists a free address",
			put:  map[string]string{"blocks/default/owner/pod0/eth0": `{"addrs":["10.0.0.9"]}`},
			want: `pod0/eth0 lists 10.0.0.9`,
		},
		{
			name: "block head",
			put:  map[string]string{"blocks/default/b/0a000000/head": `{"used":7}`},
			want: "block 10.0.0.0/26 counts 7 held, has 2",
		},
		{
			name: "pool head",
			put:  map[string]string{"blocks/default/p/0a000000-24/head": `{"used":3}`},
			want: "pool 10.0.0.0/24 counts 3 blocks claimed, has 1",
		},
		{
			name: "state of an unclaimed block",
			put:  map[string]string{"blocks/default/b/0a000080/s/0a000081": `{"released":"2026-01-01T00:00:00Z"}`},
			want: "key blocks/default/b/0a000080/s/0a000081 belongs to no claimed block",
		},
		{
			name: "undecodable record",
			put:  map[string]string{"blocks/default/b/0a000000/s/0a000001": `{`},
			want: "decode blocks/default/b/0a000000/s/0a000001",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := ipam.NewMemoryStore()
			p := newBP(t, ipam.BlockPoolConfig{Store: store, CIDRs: bpPrefixes("10.0.0.0/24")})
			bpAlloc(t, p, "a", 0)
			bpAlloc(t, p, "a", 1)
			err := store.Update(ctx, func(tx ipam.Txn) error {
				for k, v := range tc.put {
					if v == "" {
						if err := tx.Delete(k); err != nil {
							return err
						}
						continue
					}
					if err := tx.Put(k, []byte(v)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Check(ctx); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("check: got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestBlockPoolBadInput(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cfg  ipam.BlockPoolConfig
		want string
	}{
		{"no CIDRs", ipam.BlockPoolConfig{}, "no CIDRs"},
		{"overlap", ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/16", "10.0.1.0/24")}, "pools 10.0.0.0/16 and 10.0.1.0/24 overlap"},
		{"same twice", ipam.BlockPoolConfig{CIDRs: bpPrefixes("fd00::/64", "fd00::/64")}, "pools fd00::/64 and fd00::/64 overlap"},
		{"block larger than pool", ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/27")}, "block size /26 is larger than pool 10.0.0.0/27"},
		{"IPv6 block larger than pool", ipam.BlockPoolConfig{CIDRs: bpPrefixes("fd00::/124")}, "block size /122 is larger than pool fd00::/124"},
		{"host bits", ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.1/24")}, "host bits are set"},
		{"invalid prefix", ipam.BlockPoolConfig{CIDRs: []netip.Prefix{{}}}, "not a valid prefix"},
		{"IPv4 block size", ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/8"), BlockSizeV4: 33}, "IPv4 block size /33: want 1 to 32"},
		{"negative block size", ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/8"), BlockSizeV4: -1}, "IPv4 block size /-1"},
		{"IPv6 block size", ipam.BlockPoolConfig{CIDRs: bpPrefixes("fd00::/64"), BlockSizeV6: 129}, "IPv6 block size /129: want 1 to 128"},
		{"name", ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/8"), Name: "a/b"}, `pool name "a/b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Store = ipam.NewMemoryStore()
			_, err := ipam.NewBlockPool(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}

	store := ipam.NewMemoryStore()
	p := newBP(t, ipam.BlockPoolConfig{Store: store, CIDRs: bpPrefixes("10.0.0.0/24", "fd00::/120")})
	bpAlloc(t, p, "a", 0)
	before := bpDump(t, store)
	good := bpOwner(1)
	for _, tc := range []struct {
		name string
		do   func() error
		want string
	}{
		{"empty node", func() error { _, err := p.Allocate(ctx, "", good); return err }, "empty node name"},
		{"node with slash", func() error { _, err := p.Allocate(ctx, "a/b", good); return err }, `node name "a/b" has '/'`},
		{"node with space", func() error { _, err := p.Allocate(ctx, "a b", good); return err }, `node name "a b" has ' '`},
		{"empty container ID", func() error { _, err := p.Allocate(ctx, "a", ipam.Owner{IfName: "eth0"}); return err }, "empty container ID"},
		{"bad container ID", func() error {
			_, err := p.Allocate(ctx, "a", ipam.Owner{ContainerID: "-x", IfName: "eth0"})
			return err
		}, "must start with a letter or digit"},
		{"long ifname", func() error {
			_, err := p.Allocate(ctx, "a", ipam.Owner{ContainerID: "x", IfName: "0123456789abcdef"})
			return err
		}, "longer than 15 bytes"},
		{"AllocateAddr bad owner", func() error {
			_, err := p.AllocateAddr(ctx, "a", ipam.Owner{ContainerID: "x", IfName: "a/b"}, netip.MustParseAddr("10.0.0.9"))
			return err
		}, `interface name "a/b"`},
		{"AllocateAddr bad node", func() error {
			_, err := p.AllocateAddr(ctx, "", good, netip.MustParseAddr("10.0.0.9"))
			return err
		}, "empty node name"},
		{"AllocateAddr mapped", func() error {
			_, err := p.AllocateAddr(ctx, "a", good, netip.MustParseAddr("::ffff:10.0.0.9"))
			return err
		}, "IPv4-mapped"},
		{"AllocateAddr invalid", func() error { _, err := p.AllocateAddr(ctx, "a", good, netip.Addr{}); return err }, "invalid address"},
		{"AllocateAddr partly in use", func() error {
			_, err := p.AllocateAddr(ctx, "b", good, netip.MustParseAddr("10.0.0.99"), netip.MustParseAddr("fd00::"))
			return err
		}, "fd00:: is held by pod0/eth0"},
		{"Get bad owner", func() error { _, err := p.Get(ctx, ipam.Owner{}); return err }, "empty container ID"},
		{"Release bad owner", func() error { _, _, err := p.Release(ctx, ipam.Owner{ContainerID: "x"}); return err }, "empty interface name"},
		{"ReleaseAddr outside", func() error { _, _, err := p.ReleaseAddr(ctx, netip.MustParseAddr("fd01::")); return err }, "outside every pool"},
		{"ReleaseAffinity bad node", func() error { _, err := p.ReleaseAffinity(ctx, "a\tb"); return err }, `node name "a\tb"`},
		{"other block size", func() error {
			q := newBP(t, ipam.BlockPoolConfig{Store: store, CIDRs: bpPrefixes("10.0.0.0/24"), BlockSizeV4: 28})
			_, err := q.Allocate(ctx, "a", good)
			return err
		}, "has /26 (IPv4) and /122 (IPv6) blocks; this configuration asks for /28 and /122"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
			if diff := cmp.Diff(before, bpDump(t, store)); diff != "" {
				t.Errorf("bad input changed the store (-before +after):\n%s", diff)
			}
		})
	}
}

func TestBlockPoolBolt(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ipam.db")
	s1, err := ipam.OpenBolt(path, ipam.BoltConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/24", "fd00::/120")}
	cfg.Store = s1
	p := newBP(t, cfg)
	for i, node := range []string{"a", "b", "a"} {
		bpAlloc(t, p, node, i)
	}
	if _, _, err := p.Release(ctx, bpOwner(2)); err != nil {
		t.Fatal(err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := ipam.OpenBolt(path, ipam.BoltConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	cfg.Store = s2
	q := newBP(t, cfg)
	bpCheck(t, q)
	var got [][]netip.Addr
	list, err := q.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, al := range list {
		got = append(got, bpAddrs(al))
	}
	want := [][]netip.Addr{bpAddrList("10.0.0.0", "fd00::"), bpAddrList("10.0.0.64", "fd00::40")}
	if diff := cmp.Diff(want, got, bpCmp); diff != "" {
		t.Errorf("after reopening (-want +got):\n%s", diff)
	}
	wantBlocks := []ipam.Block{
		{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a", Total: 64, InUse: 1},
		{CIDR: netip.MustParsePrefix("10.0.0.64/26"), Node: "b", Total: 64, InUse: 1},
		{CIDR: netip.MustParsePrefix("fd00::/122"), Node: "a", Total: 64, InUse: 1},
		{CIDR: netip.MustParsePrefix("fd00::40/122"), Node: "b", Total: 64, InUse: 1},
	}
	if diff := cmp.Diff(wantBlocks, bpBlocks(t, q), bpCmp); diff != "" {
		t.Errorf("blocks (-want +got):\n%s", diff)
	}
	// The cursor survived: a's next address is 10.0.0.2.
	if got := bpAlloc(t, q, "a", 3); got[0] != netip.MustParseAddr("10.0.0.2") {
		t.Errorf("next address of a: got %v, want 10.0.0.2", got)
	}
}

func TestBlockPoolConcurrent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	openFile := func(t *testing.T) ipam.Store {
		s, err := ipam.OpenBolt(filepath.Join(dir, "ipam.db"), ipam.BoltConfig{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	for _, tc := range []struct {
		name   string
		stores func(t *testing.T) []ipam.Store // worker w uses store w % len
	}{
		{"memory", func(*testing.T) []ipam.Store { return []ipam.Store{ipam.NewMemoryStore()} }},
		// Two handles on one file, as two processes have.
		{"bolt", func(t *testing.T) []ipam.Store { return []ipam.Store{openFile(t), openFile(t)} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const workers, each = 4, 50
			nodes := []string{"a", "b"}
			cfg := ipam.BlockPoolConfig{CIDRs: bpPrefixes("10.0.0.0/24", "fd00::/120")}
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			results := make([][]ipam.Allocation, workers)
			var pools []*ipam.BlockPool
			stores := tc.stores(t)
			for w := range workers {
				cfg.Store = stores[w%len(stores)]
				p := newBP(t, cfg)
				pools = append(pools, p)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						al, err := p.Allocate(ctx, nodes[w%2], bpOwner(w*1000+i))
						if err != nil {
							errs <- err
							return
						}
						results[w] = append(results[w], al)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			blocks := bpBlocks(t, pools[0])
			nodeOf := func(a netip.Addr) string {
				for _, b := range blocks {
					if b.CIDR.Contains(a) {
						return b.Node
					}
				}
				return ""
			}
			seen := map[netip.Addr]ipam.Owner{}
			for w, rs := range results {
				for _, al := range rs {
					for _, a := range bpAddrs(al) {
						if o, dup := seen[a]; dup {
							t.Fatalf("%v held by %v and %v", a, o, al.Owner)
						}
						seen[a] = al.Owner
						// 100 addresses a node fit in two blocks: no borrowing.
						if n := nodeOf(a); n != nodes[w%2] {
							t.Errorf("%v of %v on node %s is in a block of %q", a, al.Owner, nodes[w%2], n)
						}
					}
				}
			}
			if len(seen) != 2*workers*each {
				t.Errorf("%d addresses handed out, want %d", len(seen), 2*workers*each)
			}
			list, err := pools[1].List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != workers*each {
				t.Errorf("store lists %d allocations, want %d", len(list), workers*each)
			}
			bpCheck(t, pools[0])
		})
	}
}
