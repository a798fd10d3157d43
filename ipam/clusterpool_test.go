package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/netblocks/netblocks/ipam"
)

func newPool(t *testing.T, cfg ipam.ClusterPoolConfig) *ipam.ClusterPool {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = ipam.NewMemoryStore()
	}
	p, err := ipam.NewClusterPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestClusterPoolDualStack(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, ipam.ClusterPoolConfig{
		CIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/112"), netip.MustParsePrefix("10.244.0.0/16")},
	})
	got, err := p.AllocateNode(ctx, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:10:244::/120")}
	if diff := cmp.Diff(want, got, cmpNetip); diff != "" {
		t.Fatalf("node-1 (-want +got):\n%s", diff)
	}
	again, err := p.AllocateNode(ctx, "node-1")
	if err != nil || !cmp.Equal(got, again, cmpNetip) {
		t.Fatalf("second AllocateNode = %v, %v; want the same CIDRs", again, err)
	}
	second, _ := p.AllocateNode(ctx, "node-2")
	if second[0] != netip.MustParsePrefix("10.244.1.0/24") || second[1] != netip.MustParsePrefix("fd00:10:244::100/120") {
		t.Fatalf("node-2 got %v", second)
	}
	if c, err := p.NodeCIDRs(ctx, "node-2"); err != nil || !cmp.Equal(c, second, cmpNetip) {
		t.Fatalf("NodeCIDRs = %v %v", c, err)
	}
	if _, err := p.NodeCIDRs(ctx, "node-3"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("NodeCIDRs of an unknown node: %v", err)
	}
	u, err := p.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantU := []ipam.Usage{
		{Grouping: "Cluster CIDR /120", CIDR: "fd00:10:244::/112", Total: 256, InUse: 2},
		{Grouping: "Cluster CIDR /24", CIDR: "10.244.0.0/16", Total: 256, InUse: 2},
	}
	if diff := cmp.Diff(wantU, u); diff != "" {
		t.Fatalf("usage (-want +got):\n%s", diff)
	}
	if rel, err := p.ReleaseNode(ctx, "node-1"); err != nil || !cmp.Equal(rel, got, cmpNetip) {
		t.Fatalf("ReleaseNode = %v %v", rel, err)
	}
	if rel, err := p.ReleaseNode(ctx, "node-1"); err != nil || rel != nil {
		t.Fatalf("second ReleaseNode = %v %v", rel, err)
	}
	mustCheck(t, p)
}

func TestClusterPoolExhaustedAndSeveralCIDRs(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, ipam.ClusterPoolConfig{
		CIDRs:          []netip.Prefix{netip.MustParsePrefix("10.0.0.0/23"), netip.MustParsePrefix("10.1.0.0/24")},
		NodeMaskSizeV4: 25,
	})
	var got []string
	for i := 0; i < 6; i++ {
		c, err := p.AllocateNode(ctx, "n"+itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c[0].String())
	}
	want := []string{"10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/25", "10.0.1.128/25", "10.1.0.0/25", "10.1.0.128/25"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatal(diff)
	}
	_, err := p.AllocateNode(ctx, "n6")
	if !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("7th node: %v, want ErrExhausted", err)
	}
	if !strings.Contains(err.Error(), "10.0.0.0/23") || !strings.Contains(err.Error(), "10.1.0.0/24") {
		t.Fatalf("exhaustion error does not name the CIDRs: %v", err)
	}
	if _, err := p.NodeCIDRs(ctx, "n6"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a failed allocation left a node record")
	}
	// GC keeps the valid nodes.
	gone, err := p.GC(ctx, []string{"n1", "n4"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"n0", "n2", "n3", "n5"}, gone); diff != "" {
		t.Fatal(diff)
	}
	nodes, _ := p.Nodes(ctx)
	if len(nodes) != 2 {
		t.Fatalf("nodes after GC: %v", nodes)
	}
	mustCheck(t, p)
}

func TestClusterPoolSpecificCIDR(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, ipam.ClusterPoolConfig{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}})
	want := netip.MustParsePrefix("10.244.7.0/24")
	if got, err := p.AllocateNodeCIDRs(ctx, "a", want); err != nil || got[0] != want {
		t.Fatalf("AllocateNodeCIDRs = %v %v", got, err)
	}
	if _, err := p.AllocateNodeCIDRs(ctx, "a", want); err != nil {
		t.Fatalf("asking again: %v", err)
	}
	for _, tc := range []struct {
		node string
		c    string
		is   error
		msg  string
	}{
		{"b", "10.244.7.0/24", ipam.ErrInUse, "held by"},
		{"b", "10.245.0.0/24", nil, "outside every cluster CIDR"},
		{"b", "10.244.8.0/25", nil, "not a /24"},
		{"b", "10.244.8.1/24", nil, "host bits"},
		{"a", "10.244.9.0/24", nil, "already has"},
		{"bad/name", "10.244.9.0/24", nil, "node name"},
	} {
		_, err := p.AllocateNodeCIDRs(ctx, tc.node, netip.MustParsePrefix(tc.c))
		if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("AllocateNodeCIDRs(%s, %s) = %v, want %q", tc.node, tc.c, err, tc.msg)
		}
	}
	// Dynamic allocation skips the held CIDR.
	for i := 0; i < 255; i++ {
		c, err := p.AllocateNode(ctx, "d"+itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		if c[0] == want {
			t.Fatal("handed out a held CIDR")
		}
	}
	if _, err := p.AllocateNode(ctx, "full"); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatal(err)
	}
	mustCheck(t, p)
}

func TestClusterPoolBadInput(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		cfg  ipam.ClusterPoolConfig
		msg  string
	}{
		{"no CIDRs", ipam.ClusterPoolConfig{}, "no CIDRs"},
		{"overlap", ipam.ClusterPoolConfig{CIDRs: []netip.Prefix{p("10.0.0.0/16"), p("10.0.128.0/17")}}, "10.0.0.0/16 and 10.0.128.0/17 overlap"},
		{"node larger than pool", ipam.ClusterPoolConfig{CIDRs: []netip.Prefix{p("10.0.0.0/25")}}, "node CIDR size /24 is larger than cluster CIDR 10.0.0.0/25"},
		{"v6 node larger", ipam.ClusterPoolConfig{CIDRs: []netip.Prefix{p("fd00::/121")}}, "/120 is larger"},
		{"mask 33", ipam.ClusterPoolConfig{CIDRs: []netip.Prefix{p("10.0.0.0/8")}, NodeMaskSizeV4: 33}, "want 1 to 32"},
		{"host bits", ipam.ClusterPoolConfig{CIDRs: []netip.Prefix{p("10.0.0.1/8")}}, "host bits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Store = ipam.NewMemoryStore()
			if _, err := ipam.NewClusterPool(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %q", err, tc.msg)
			}
		})
	}
	// A pool refuses node sizes other than those it was first used with.
	ctx := context.Background()
	s := ipam.NewMemoryStore()
	a := newPool(t, ipam.ClusterPoolConfig{Store: s, CIDRs: []netip.Prefix{p("10.0.0.0/16")}})
	if _, err := a.AllocateNode(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	b := newPool(t, ipam.ClusterPoolConfig{Store: s, CIDRs: []netip.Prefix{p("10.0.0.0/16")}, NodeMaskSizeV4: 26})
	if _, err := b.AllocateNode(ctx, "n2"); err == nil || !strings.Contains(err.Error(), "hands out /24") {
		t.Fatalf("changed node size: %v", err)
	}
}
