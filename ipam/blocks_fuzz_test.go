package ipam_test

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/netblocks/netblocks/ipam"
)

// The fuzzed pool: four IPv4 blocks of 8 addresses and four IPv6 blocks of
// 4, shared by four nodes and sixteen owners, so that blocks run out, nodes
// borrow and IPv6 runs dry.
var (
	bpFuzzV4      = netip.MustParsePrefix("10.0.0.0/27")
	bpFuzzV6      = netip.MustParsePrefix("fd00::/124")
	bpFuzzNodes   = []string{"n0", "n1", "n2", "n3"}
	bpFuzzOwners  = 16
	bpFuzzMaxOps  = 64
	bpFuzzBlockV4 = 29
	bpFuzzBlockV6 = 126
)

// bpModel is what the pool should hold.
type bpModel struct {
	strict bool
	owners map[ipam.Owner][]netip.Addr
	aff    map[netip.Prefix]string // claimed block: its node
}

func bpFuzzBlock(a netip.Addr) netip.Prefix {
	if a.Is4() {
		return netip.PrefixFrom(a, bpFuzzBlockV4).Masked()
	}
	return netip.PrefixFrom(a, bpFuzzBlockV6).Masked()
}

func bpFuzzBlockSize(b netip.Prefix) int { return 1 << (b.Addr().BitLen() - b.Bits()) }

// bpFuzzBlocks returns every block of a family in address order.
func bpFuzzBlocks(v4 bool) []netip.Prefix {
	pool, size := bpFuzzV6, bpFuzzBlockV6
	if v4 {
		pool, size = bpFuzzV4, bpFuzzBlockV4
	}
	var out []netip.Prefix
	for a := pool.Addr(); pool.Contains(a); {
		b := netip.PrefixFrom(a, size)
		out = append(out, b)
		for range bpFuzzBlockSize(b) {
			a = a.Next()
		}
	}
	return out
}

func (m *bpModel) holder(a netip.Addr) (ipam.Owner, bool) {
	for o, addrs := range m.owners {
		if slices.Contains(addrs, a) {
			return o, true
		}
	}
	return ipam.Owner{}, false
}

func (m *bpModel) held(b netip.Prefix) int {
	n := 0
	for _, addrs := range m.owners {
		for _, a := range addrs {
			if b.Contains(a) {
				n++
			}
		}
	}
	return n
}

func (m *bpModel) count() int {
	n := 0
	for _, addrs := range m.owners {
		n += len(addrs)
	}
	return n
}

// Where Allocate must take an address from.
const (
	bpFromOwn = iota
	bpFromNew
	bpBorrow
	bpNone
)

// predict says where node's next address of a family must come from given
// the blocks' affinity aff, and for bpFromOwn from which block.
func (m *bpModel) predict(node string, v4 bool, aff map[netip.Prefix]string) (int, netip.Prefix) {
	unclaimed, room := false, false
	for _, b := range bpFuzzBlocks(v4) {
		free := m.held(b) < bpFuzzBlockSize(b)
		switch {
		case aff[b] == node && free:
			return bpFromOwn, b
		case aff[b] == "":
			unclaimed = true
		case aff[b] != node && free:
			room = true
		}
	}
	switch {
	case unclaimed:
		return bpFromNew, netip.Prefix{}
	case room && !m.strict:
		return bpBorrow, netip.Prefix{}
	}
	return bpNone, netip.Prefix{}
}

// bpFuzzAddr maps a byte to an address of the pools.
func bpFuzzAddr(y byte) netip.Addr {
	if y < 128 {
		return netip.AddrFrom4([4]byte{10, 0, 0, y % 32})
	}
	b := bpFuzzV6.Addr().As16()
	b[15] = y % 16
	return netip.AddrFrom16(b)
}

// FuzzBlockPool runs a sequence of operations decoded from the input against
// a small pool and a model of it, and after each checks that the pool holds
// what the model says, that its blocks have the affinity and counts the
// model says, that the usage adds up and that Check passes.
//
// The input is a flags byte (bit 0: StrictAffinity, bit 1: no cooldown),
// then operations of three bytes op, x, y: op%6 picks Allocate (node x, owner
// y), Release (owner y), ReleaseAddr (address y), GC (owners in the mask
// x<<8|y are valid), ReleaseAffinity (node x) or AllocateAddr (node x,
// owner x>>2, address y); op>>3 is how many seconds pass first.
func FuzzBlockPool(f *testing.F) {
	// Node 0 takes a block, node 1 another; owner 3 is released, node 0
	// fills its blocks and borrows.
	f.Add([]byte{0, 0, 0, 0, 0, 1, 1, 0, 0, 2, 0, 1, 3, 8, 0, 3})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 4, 0, 0, 5, 0, 0, 6, 0, 0, 7, 0, 0, 8, 0, 0, 9, 0, 0, 10, 4, 0, 0})
	// Every owner on one node, then GC keeps half, then affinity goes.
	seed := []byte{2}
	for i := range 16 {
		seed = append(seed, 0, byte(i%2), byte(i))
	}
	seed = append(seed, 3, 0x55, 0x55, 4, 0, 0, 4, 1, 0, 1, 0, 1, 2, 0, 130, 5, 6, 200, 5, 1, 3)
	f.Add(seed)
	// Static addresses in other nodes' blocks, strict and not.
	f.Add([]byte{1, 0, 0, 0, 5, 1, 2, 5, 5, 130, 4, 0, 0, 1, 0, 0, 4, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 5, 1, 2, 5, 5, 130, 2, 0, 2, 2, 0, 130, 4, 1, 0})
	// Past bugs of the test's model: IPv4 left, IPv6 exhausted (strict).
	f.Add([]byte("100100200107700100801900Z02000C"))

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		ctx := context.Background()
		clock := newBPClock()
		cfg := ipam.BlockPoolConfig{
			Store:          ipam.NewMemoryStore(),
			CIDRs:          []netip.Prefix{bpFuzzV4, bpFuzzV6},
			BlockSizeV4:    bpFuzzBlockV4,
			BlockSizeV6:    bpFuzzBlockV6,
			StrictAffinity: data[0]&1 != 0,
			Cooldown:       10 * time.Second,
			Now:            clock.Now,
		}
		if data[0]&2 != 0 {
			cfg.Cooldown = -1
		}
		p, err := ipam.NewBlockPool(cfg)
		if err != nil {
			t.Fatal(err)
		}
		m := &bpModel{strict: cfg.StrictAffinity, owners: map[ipam.Owner][]netip.Addr{}, aff: map[netip.Prefix]string{}}
		data = data[1:]
		for i := 0; i+3 <= len(data) && i/3 < bpFuzzMaxOps; i += 3 {
			op, x, y := data[i], data[i+1], data[i+2]
			clock.Add(time.Duration(op>>3) * time.Second)
			switch op % 6 {
			case 0:
				bpFuzzAllocate(t, p, m, bpFuzzNodes[x%4], bpOwner(int(y)%bpFuzzOwners))
			case 1:
				o := bpOwner(int(y) % bpFuzzOwners)
				al, ok, err := p.Release(ctx, o)
				if err != nil {
					t.Fatalf("release %v: %v", o, err)
				}
				want, had := m.owners[o]
				if ok != had || (ok && !slices.Equal(bpAddrs(al), want)) {
					t.Fatalf("release %v: got %v %v, model %v %v", o, bpAddrs(al), ok, want, had)
				}
				delete(m.owners, o)
			case 2:
				a := bpFuzzAddr(y)
				o, ok, err := p.ReleaseAddr(ctx, a)
				if err != nil {
					t.Fatalf("release %v: %v", a, err)
				}
				wo, wok := m.holder(a)
				if o != wo || ok != wok {
					t.Fatalf("release %v: got %v %v, model %v %v", a, o, ok, wo, wok)
				}
				if ok {
					m.owners[o] = slices.DeleteFunc(m.owners[o], func(x netip.Addr) bool { return x == a })
					if len(m.owners[o]) == 0 {
						delete(m.owners, o)
					}
				}
			case 3:
				mask := uint16(x)<<8 | uint16(y)
				var valid []ipam.Owner
				for k := range bpFuzzOwners {
					if mask&(1<<k) != 0 {
						valid = append(valid, bpOwner(k))
					}
				}
				released, err := p.GC(ctx, valid)
				if err != nil {
					t.Fatalf("gc: %v", err)
				}
				var got, want []string
				for _, al := range released {
					got = append(got, al.Owner.String())
				}
				for o := range m.owners {
					if !slices.Contains(valid, o) {
						want = append(want, o.String())
						delete(m.owners, o)
					}
				}
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Fatalf("gc %v: released %v, model %v", valid, got, want)
				}
			case 4:
				node := bpFuzzNodes[x%4]
				got, err := p.ReleaseAffinity(ctx, node)
				if err != nil {
					t.Fatalf("release affinity of %s: %v", node, err)
				}
				var want []netip.Prefix
				for _, v4 := range []bool{true, false} {
					for _, b := range bpFuzzBlocks(v4) {
						if m.aff[b] == node && m.held(b) == 0 {
							want = append(want, b)
							delete(m.aff, b)
						}
					}
				}
				if !slices.Equal(got, want) {
					t.Fatalf("release affinity of %s: freed %v, model %v", node, got, want)
				}
			case 5:
				bpFuzzAllocateAddr(t, p, m, bpFuzzNodes[x%4], bpOwner(int(x>>2)%bpFuzzOwners), bpFuzzAddr(y))
			}
			bpFuzzCompare(t, p, m)
		}
	})
}

func bpFuzzAllocate(t *testing.T, p *ipam.BlockPool, m *bpModel, node string, o ipam.Owner) {
	t.Helper()
	al, err := p.Allocate(context.Background(), node, o)
	if have, ok := m.owners[o]; ok {
		if err != nil || !slices.Equal(bpAddrs(al), have) {
			t.Fatalf("allocate %v again on %s: got %v, %v; model %v", o, node, bpAddrs(al), err, have)
		}
		return
	}
	got := bpAddrs(al)
	if err == nil && len(got) != 2 {
		t.Fatalf("allocate %v on %s: got %v, want one address per family", o, node, got)
	}
	aff := maps.Clone(m.aff)
	exhausted := false
	for i, v4 := range []bool{true, false} {
		from, want := m.predict(node, v4, aff)
		if from == bpNone {
			exhausted = true
			break
		}
		if err != nil {
			continue // the next family may be the one exhausted
		}
		a := got[i]
		b := bpFuzzBlock(a)
		if a.Is4() != v4 {
			t.Fatalf("allocate %v on %s: got %v, families out of order", o, node, got)
		}
		if h, held := m.holder(a); held {
			t.Fatalf("allocate %v on %s: got %v, which %v holds", o, node, a, h)
		}
		switch from {
		case bpFromOwn:
			if b != want {
				t.Fatalf("allocate %v on %s: got %v, want an address of its block %v", o, node, a, want)
			}
		case bpFromNew:
			if aff[b] != "" {
				t.Fatalf("allocate %v on %s: got %v in block %v of %q, want an unclaimed block", o, node, a, b, aff[b])
			}
			aff[b] = node
		case bpBorrow:
			if aff[b] == "" || aff[b] == node {
				t.Fatalf("allocate %v on %s: got %v in block %v of %q, want a borrowed address", o, node, a, b, aff[b])
			}
		}
	}
	if exhausted != (err != nil) || (err != nil && !errors.Is(err, ipam.ErrExhausted)) {
		t.Fatalf("allocate %v on %s: got %v, %v; model says exhausted: %v", o, node, got, err, exhausted)
	}
	if err == nil {
		m.owners[o] = got
		m.aff = aff
	}
}

func bpFuzzAllocateAddr(t *testing.T, p *ipam.BlockPool, m *bpModel, node string, o ipam.Owner, a netip.Addr) {
	t.Helper()
	al, err := p.AllocateAddr(context.Background(), node, o, a)
	if have, ok := m.owners[o]; ok {
		if same := slices.Equal(have, []netip.Addr{a}); same != (err == nil) {
			t.Fatalf("allocate %v for %v on %s: got %v; model has %v", a, o, node, err, have)
		}
		return
	}
	b := bpFuzzBlock(a)
	_, held := m.holder(a)
	switch {
	case m.aff[b] != "" && m.aff[b] != node && m.strict:
		if err == nil || errors.Is(err, ipam.ErrInUse) {
			t.Fatalf("allocate %v for %v on %s in block of %q with strict affinity: got %v", a, o, node, m.aff[b], err)
		}
		return
	case held:
		if !errors.Is(err, ipam.ErrInUse) {
			t.Fatalf("allocate %v for %v on %s: got %v, want ErrInUse", a, o, node, err)
		}
		return
	}
	if err != nil || !slices.Equal(bpAddrs(al), []netip.Addr{a}) {
		t.Fatalf("allocate %v for %v on %s: got %v, %v", a, o, node, bpAddrs(al), err)
	}
	m.owners[o] = []netip.Addr{a}
	if m.aff[b] == "" {
		m.aff[b] = node
	}
}

// bpFuzzCompare checks p against m.
func bpFuzzCompare(t *testing.T, p *ipam.BlockPool, m *bpModel) {
	t.Helper()
	ctx := context.Background()
	list, err := p.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[ipam.Owner][]netip.Addr{}
	holders := map[netip.Addr]ipam.Owner{}
	for _, al := range list {
		got[al.Owner] = bpAddrs(al)
		for _, a := range bpAddrs(al) {
			if h, dup := holders[a]; dup {
				t.Fatalf("%v is held by %v and %v", a, h, al.Owner)
			}
			holders[a] = al.Owner
		}
	}
	if diff := cmp.Diff(m.owners, got, bpCmp); diff != "" {
		t.Fatalf("owners (-model +pool):\n%s", diff)
	}

	var want []ipam.Block
	for _, v4 := range []bool{true, false} {
		for _, b := range bpFuzzBlocks(v4) {
			if n := m.aff[b]; n != "" {
				want = append(want, ipam.Block{CIDR: b, Node: n, Total: uint64(bpFuzzBlockSize(b)), InUse: uint64(m.held(b))})
			}
		}
	}
	if diff := cmp.Diff(want, bpBlocks(t, p), bpCmp); diff != "" {
		t.Fatalf("blocks (-model +pool):\n%s", diff)
	}

	usage, err := p.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var inUse uint64
	for _, u := range usage {
		if u.Grouping == "IP Pool" {
			inUse += u.InUse
		}
	}
	if inUse != uint64(m.count()) {
		t.Fatalf("usage counts %d in use, model %d", inUse, m.count())
	}
	bpCheck(t, p)
}
