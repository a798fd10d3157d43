package etcdstore_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/netblocks/netblocks/internal/etcdtest"
	"github.com/netblocks/netblocks/ipam"
	"github.com/netblocks/netblocks/ipam/etcdstore"
)

// TestThreeNodes has three "nodes", each with its own etcd client and
// store, take node CIDRs from one cluster pool, pod addresses from shared
// Calico-style blocks and addresses from one pod range, all at once, on a
// real etcd server: nothing may be handed out twice.
func TestThreeNodes(t *testing.T) {
	ctx := context.Background()
	first := etcdtest.Start(t)
	const nodes = 3
	stores := make([]ipam.Store, nodes)
	for i := range stores {
		c := etcdtest.Connect(t, first.Endpoints()...)
		s, err := etcdstore.New(c, etcdstore.Config{Prefix: "/three-nodes/"})
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = s
	}

	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/112")}
	blockCIDRs := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/24")}
	podRange := []ipam.Range{{Subnet: netip.MustParsePrefix("192.0.2.0/25")}}
	lbPool := ipam.LBPool{Name: "public", Blocks: []ipam.LBBlock{
		{CIDR: netip.MustParsePrefix("198.51.100.0/26")},
		{Start: netip.MustParseAddr("2001:db8::10"), Stop: netip.MustParseAddr("2001:db8::4f")},
	}}

	type result struct {
		node  string
		cidrs []netip.Prefix
		addrs []netip.Addr // from blocks and the shared range
	}
	results := make(chan result, 1000)
	errs := make(chan error, nodes)
	var wg sync.WaitGroup
	for n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool, err := ipam.NewClusterPool(ipam.ClusterPoolConfig{Store: stores[n], CIDRs: cidrs})
			if err != nil {
				errs <- err
				return
			}
			blocks, err := ipam.NewBlockPool(ipam.BlockPoolConfig{Store: stores[n], CIDRs: blockCIDRs, BlockSizeV4: 28})
			if err != nil {
				errs <- err
				return
			}
			pods, err := ipam.NewNodeAllocator(ipam.NodeConfig{Store: stores[n], Ranges: podRange})
			if err != nil {
				errs <- err
				return
			}
			lb, err := ipam.NewLBIPAM(ipam.LBConfig{Store: stores[n]})
			if err != nil {
				errs <- err
				return
			}
			// Every node declares the same pool at once.
			if _, err := lb.SetPool(ctx, lbPool); err != nil {
				errs <- err
				return
			}
			// Each node registers several node names (as an operator
			// would for many nodes) and allocates pods.
			for i := range 12 {
				name := fmt.Sprintf("node%d-%d", n, i)
				c, err := pool.AllocateNode(ctx, name)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
					return
				}
				results <- result{node: name, cidrs: c}
				for k := range 3 {
					o := ipam.Owner{ContainerID: fmt.Sprintf("%s-pod%d", name, k), IfName: "eth0"}
					al, err := blocks.Allocate(ctx, fmt.Sprintf("node%d", n), o)
					if err != nil {
						errs <- fmt.Errorf("blocks: %s: %w", o, err)
						return
					}
					al2, err := pods.Allocate(ctx, o)
					if err != nil {
						errs <- fmt.Errorf("pods: %s: %w", o, err)
						return
					}
					var got []netip.Addr
					for _, ip := range append(al.IPs, al2.IPs...) {
						got = append(got, ip.Address.Addr())
					}
					results <- result{node: name, addrs: got}
				}
				svc := fmt.Sprintf("default/svc-%d-%d", n, i)
				al, err := lb.Allocate(ctx, ipam.LBRequest{Service: svc, Family: ipam.FamilyDual})
				if err != nil {
					errs <- fmt.Errorf("lb: %s: %w", svc, err)
					return
				}
				results <- result{node: svc, addrs: al.Addrs}
			}
		}()
	}
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cidrOwner := map[netip.Prefix]string{}
	addrOwner := map[netip.Addr]string{}
	nc, na := 0, 0
	for r := range results {
		for _, c := range r.cidrs {
			nc++
			if o, dup := cidrOwner[c]; dup {
				t.Errorf("%v given to %s and %s", c, o, r.node)
			}
			cidrOwner[c] = r.node
		}
		for _, a := range r.addrs {
			na++
			if o, dup := addrOwner[a]; dup {
				t.Errorf("%v given to %s and %s", a, o, r.node)
			}
			addrOwner[a] = r.node
		}
	}
	if nc != nodes*12*2 || na != nodes*12*(3*2+2) {
		t.Fatalf("%d CIDRs and %d addresses handed out, want %d and %d", nc, na, nodes*12*2, nodes*12*(3*2+2))
	}
	// The stored state agrees, seen from any node.
	pool, _ := ipam.NewClusterPool(ipam.ClusterPoolConfig{Store: stores[0], CIDRs: cidrs})
	blocks, _ := ipam.NewBlockPool(ipam.BlockPoolConfig{Store: stores[1], CIDRs: blockCIDRs, BlockSizeV4: 28})
	pods, _ := ipam.NewNodeAllocator(ipam.NodeConfig{Store: stores[2], Ranges: podRange})
	lb, _ := ipam.NewLBIPAM(ipam.LBConfig{Store: stores[0]})
	for _, c := range []interface{ Check(context.Context) error }{pool, blocks, pods, lb} {
		if err := c.Check(ctx); err != nil {
			t.Fatal(err)
		}
	}
	u, _ := pool.Usage(ctx)
	if u[0].InUse != nodes*12 || u[1].InUse != nodes*12 {
		t.Fatalf("cluster pool usage %+v", u)
	}
}

// TestDeleteBigLBPool deletes a pool holding more services than etcd lets
// one transaction touch.
func TestDeleteBigLBPool(t *testing.T) {
	ctx := context.Background()
	s, err := etcdstore.New(etcdtest.Start(t), etcdstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	lb, err := ipam.NewLBIPAM(ipam.LBConfig{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lb.SetPool(ctx, ipam.LBPool{Name: "big", Blocks: []ipam.LBBlock{{CIDR: netip.MustParsePrefix("198.51.100.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if _, err := lb.Allocate(ctx, ipam.LBRequest{Service: fmt.Sprintf("ns/svc%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	released, err := lb.DeletePool(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 200 {
		t.Fatalf("released %d, want 200", len(released))
	}
	if l, _ := lb.List(ctx); len(l) != 0 {
		t.Fatalf("%d allocations left", len(l))
	}
	if err := lb.Check(ctx); err != nil {
		t.Fatal(err)
	}
}
