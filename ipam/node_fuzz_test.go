package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/netblocks/netblocks/ipam"
)

// FuzzNodeAllocator runs a sequence of operations decoded from the input
// against a dual-stack allocator and a model, checking after each one that
// no address is held twice, that the allocator holds exactly what the model
// says, that exhaustion is reported exactly when a family is full, and that
// a cooling address is handed out only when nothing else is free.
func FuzzNodeAllocator(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 0, 3, 1, 1, 0, 4, 2, 5, 3, 0})
	f.Add([]byte{0, 0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 1, 2, 0, 7, 4, 9, 0, 8})
	f.Add([]byte{5, 3, 0, 1, 0, 1, 1, 1, 0, 1, 6, 0, 0, 2, 3, 7})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 400 {
			ops = ops[:400] // every op is checked in full: keep runs short
		}
		ctx := context.Background()
		clk := newClock()
		const cooldown = 10 * time.Second
		a, err := ipam.NewNodeAllocator(ipam.NodeConfig{
			Store: ipam.NewMemoryStore(),
			Ranges: []ipam.Range{
				{Subnet: netip.MustParsePrefix("10.0.0.0/29")}, // .2-.6
				{Subnet: netip.MustParsePrefix("fd00::/125")},  // ::2-::7
			},
			Cooldown: cooldown,
			Now:      clk.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		capacity := map[bool]int{true: 5, false: 6}
		space := map[bool][]netip.Addr{}
		for i := 2; i <= 6; i++ {
			space[true] = append(space[true], netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
		}
		for i := 2; i <= 7; i++ {
			space[false] = append(space[false], netip.MustParseAddr("fd00::"+itoa(i)))
		}
		model := map[ipam.Owner][]netip.Addr{}
		holder := map[netip.Addr]ipam.Owner{}
		released := map[netip.Addr]time.Time{}
		held := func(v4 bool) int {
			n := 0
			for ad := range holder {
				if ad.Is4() == v4 {
					n++
				}
			}
			return n
		}
		for len(ops) >= 2 {
			op, arg := ops[0]%7, int(ops[1]%12)
			ops = ops[2:]
			o := owner(arg)
			switch op {
			case 0, 1: // allocate
				full := held(true) == capacity[true] || held(false) == capacity[false]
				al, err := a.Allocate(ctx, o)
				if _, has := model[o]; has {
					if err != nil {
						t.Fatalf("allocate %v again: %v", o, err)
					}
					if got := addrs(al); !equalAddrs(got, model[o]) {
						t.Fatalf("allocate %v again: %v, model %v", o, got, model[o])
					}
					continue
				}
				if full {
					if !errors.Is(err, ipam.ErrExhausted) {
						t.Fatalf("allocate %v with a full family: %v, want ErrExhausted", o, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("allocate %v: %v", o, err)
				}
				got := addrs(al)
				if len(got) != 2 || !got[0].Is4() || !got[1].Is6() {
					t.Fatalf("allocate %v: %v, want one IPv4 then one IPv6", o, got)
				}
				for _, ad := range got {
					if h, dup := holder[ad]; dup {
						t.Fatalf("%v handed to %v while %v holds it", ad, o, h)
					}
					if r, ok := released[ad]; ok && clk.Now().Sub(r) < cooldown {
						for _, other := range space[ad.Is4()] {
							_, isHeld := holder[other]
							r2, was := released[other]
							if other != ad && !isHeld && (!was || clk.Now().Sub(r2) >= cooldown) {
								t.Fatalf("%v handed out while cooling, though %v was free", ad, other)
							}
						}
					}
					holder[ad] = o
				}
				model[o] = got
			case 2: // release by owner
				_, ok, err := a.Release(ctx, o)
				if err != nil {
					t.Fatal(err)
				}
				if _, has := model[o]; ok != has {
					t.Fatalf("release %v reported %v, model has it: %v", o, ok, has)
				}
				for _, ad := range model[o] {
					delete(holder, ad)
					released[ad] = clk.Now()
				}
				delete(model, o)
			case 3: // release by address
				ad := space[arg%2 == 0][arg%len(space[arg%2 == 0])]
				who, ok, err := a.ReleaseAddr(ctx, ad)
				if err != nil {
					t.Fatal(err)
				}
				h, has := holder[ad]
				if ok != has || (ok && who != h) {
					t.Fatalf("release %v: %v %v, model %v %v", ad, who, ok, h, has)
				}
				if has {
					delete(holder, ad)
					released[ad] = clk.Now()
					var rest []netip.Addr
					for _, x := range model[h] {
						if x != ad {
							rest = append(rest, x)
						}
					}
					if len(rest) == 0 {
						delete(model, h)
					} else {
						model[h] = rest
					}
				}
			case 4: // time passes
				clk.Add(time.Duration(arg) * time.Second)
			case 5: // specific address
				ad := space[true][arg%5]
				_, err := a.AllocateAddr(ctx, o, ad)
				cur, has := model[o]
				switch {
				case has && equalAddrs(cur, []netip.Addr{ad}):
					if err != nil {
						t.Fatal(err)
					}
				case has:
					if err == nil {
						t.Fatalf("AllocateAddr(%v, %v) succeeded though it holds %v", o, ad, cur)
					}
				case holder[ad] != (ipam.Owner{}):
					if !errors.Is(err, ipam.ErrInUse) {
						t.Fatalf("AllocateAddr of held %v: %v", ad, err)
					}
				default:
					if err != nil {
						t.Fatal(err)
					}
					holder[ad] = o
					model[o] = []netip.Addr{ad}
				}
			case 6: // GC keeping even owners
				var valid []ipam.Owner
				for ow := range model {
					if ow.ContainerID[len(ow.ContainerID)-1]%2 == 0 {
						valid = append(valid, ow)
					}
				}
				if _, err := a.GC(ctx, valid); err != nil {
					t.Fatal(err)
				}
				keep := map[ipam.Owner]bool{}
				for _, v := range valid {
					keep[v] = true
				}
				for ow, ads := range model {
					if !keep[ow] {
						for _, ad := range ads {
							delete(holder, ad)
							released[ad] = clk.Now()
						}
						delete(model, ow)
					}
				}
			}
			// The allocator agrees with the model.
			l, err := a.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(l) != len(model) {
				t.Fatalf("allocator lists %d owners, model %d", len(l), len(model))
			}
			for _, al := range l {
				if !equalAddrs(addrs(al), model[al.Owner]) {
					t.Fatalf("%v holds %v, model %v", al.Owner, addrs(al), model[al.Owner])
				}
			}
			u, err := a.Usage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if int(u[0].InUse) != held(true) || int(u[1].InUse) != held(false) {
				t.Fatalf("usage %+v, model holds %d and %d", u, held(true), held(false))
			}
			if err := a.Check(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func equalAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
