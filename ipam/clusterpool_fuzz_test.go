package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/netblocks/netblocks/ipam"
)

// FuzzClusterPool runs node allocations, specific CIDRs, releases and GC
// decoded from the input against a dual-stack pool of two IPv4 CIDRs and a
// model: no CIDR given twice, exhaustion exactly when a family is full,
// counts exact, Check clean.
func FuzzClusterPool(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 0, 3, 1, 2, 0, 4, 2, 7, 3, 0})
	f.Add([]byte{0, 0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 300 {
			ops = ops[:300]
		}
		ctx := context.Background()
		p, err := ipam.NewClusterPool(ipam.ClusterPoolConfig{
			Store: ipam.NewMemoryStore(),
			CIDRs: []netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/26"), // 2 /27s
				netip.MustParsePrefix("10.1.0.0/27"), // 1 /27
				netip.MustParsePrefix("fd00::/124"),  // 4 /126s
			},
			NodeMaskSizeV4: 27,
			NodeMaskSizeV6: 126,
		})
		if err != nil {
			t.Fatal(err)
		}
		v4s := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/27"), netip.MustParsePrefix("10.0.0.32/27"), netip.MustParsePrefix("10.1.0.0/27")}
		model := map[string][]netip.Prefix{}
		holder := map[netip.Prefix]string{}
		count := func(v4 bool) int {
			n := 0
			for c := range holder {
				if c.Addr().Is4() == v4 {
					n++
				}
			}
			return n
		}
		for len(ops) >= 2 {
			op, node := ops[0]%4, "n"+itoa(int(ops[1]%8))
			arg := int(ops[1])
			ops = ops[2:]
			switch op {
			case 0:
				got, err := p.AllocateNode(ctx, node)
				if cur, ok := model[node]; ok {
					if err != nil || !slices.Equal(got, cur) {
						t.Fatalf("again %s: %v %v, model %v", node, got, err, cur)
					}
					continue
				}
				if count(true) == 3 || count(false) == 4 {
					if !errors.Is(err, ipam.ErrExhausted) {
						t.Fatalf("full: %v", err)
					}
					continue
				}
				if err != nil || len(got) != 2 {
					t.Fatalf("allocate %s: %v %v", node, got, err)
				}
				for _, c := range got {
					if h, dup := holder[c]; dup {
						t.Fatalf("%v given to %s while %s has it", c, node, h)
					}
					holder[c] = node
				}
				model[node] = got
			case 1:
				want := v4s[arg%3]
				_, err := p.AllocateNodeCIDRs(ctx, node, want)
				cur, has := model[node]
				switch {
				case has && len(cur) == 1 && cur[0] == want:
					if err != nil {
						t.Fatal(err)
					}
				case has:
					if err == nil {
						t.Fatalf("%s got %v though it has %v", node, want, cur)
					}
				case holder[want] != "":
					if !errors.Is(err, ipam.ErrInUse) {
						t.Fatalf("held %v: %v", want, err)
					}
				default:
					if err != nil {
						t.Fatal(err)
					}
					holder[want] = node
					model[node] = []netip.Prefix{want}
				}
			case 2:
				got, err := p.ReleaseNode(ctx, node)
				if err != nil || len(got) != len(model[node]) {
					t.Fatalf("release %s: %v %v, model %v", node, got, err, model[node])
				}
				for _, c := range model[node] {
					delete(holder, c)
				}
				delete(model, node)
			case 3:
				var valid []string
				for n := range model {
					if (n[1]-'0')%2 == byte(arg%2) {
						valid = append(valid, n)
					}
				}
				if _, err := p.GC(ctx, valid); err != nil {
					t.Fatal(err)
				}
				for n, cs := range model {
					if (n[1]-'0')%2 != byte(arg%2) {
						for _, c := range cs {
							delete(holder, c)
						}
						delete(model, n)
					}
				}
			}
			nodes, err := p.Nodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(nodes) != len(model) {
				t.Fatalf("pool has %d nodes, model %d", len(nodes), len(model))
			}
			u, _ := p.Usage(ctx)
			if int(u[0].InUse+u[1].InUse) != count(true) || int(u[2].InUse) != count(false) {
				t.Fatalf("usage %+v, model %d and %d", u, count(true), count(false))
			}
			if err := p.Check(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
}
