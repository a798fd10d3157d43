package etcdstore_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/netblocks/netblocks/internal/etcdtest"
	"github.com/netblocks/netblocks/ipam"
	"github.com/netblocks/netblocks/ipam/etcdstore"
)

// BenchmarkAllocateRelease measures one pod address allocated, persisted
// and released per op on an etcd server on loopback that fsyncs every
// commit (the same operation as ipam's BenchmarkAllocateRelease on bbolt).
func BenchmarkAllocateRelease(b *testing.B) {
	ctx := context.Background()
	s, err := etcdstore.New(etcdtest.StartDurable(b), etcdstore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	a, err := ipam.NewNodeAllocator(ipam.NodeConfig{Store: s, Ranges: []ipam.Range{{Subnet: netip.MustParsePrefix("10.0.0.0/16")}}})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		if _, err := a.Allocate(ctx, ipam.Owner{ContainerID: fmt.Sprintf("base%d", i), IfName: "eth0"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		o := ipam.Owner{ContainerID: fmt.Sprintf("pod%d", i), IfName: "eth0"}
		if _, err := a.Allocate(ctx, o); err != nil {
			b.Fatal(err)
		}
		if _, _, err := a.Release(ctx, o); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNodeCIDRContention has three nodes allocate node CIDRs from one
// cluster pool at once (one op = one node CIDR); conflicts are retried.
func BenchmarkNodeCIDRContention(b *testing.B) {
	ctx := context.Background()
	c := etcdtest.StartDurable(b)
	var pools []*ipam.ClusterPool
	for range 3 {
		s, err := etcdstore.New(etcdtest.Connect(b, c.Endpoints()...), etcdstore.Config{})
		if err != nil {
			b.Fatal(err)
		}
		p, err := ipam.NewClusterPool(ipam.ClusterPoolConfig{Store: s, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
		if err != nil {
			b.Fatal(err)
		}
		pools = append(pools, p)
	}
	b.ResetTimer()
	next := make(chan int)
	done := make(chan error, 3)
	for _, p := range pools {
		go func() {
			for i := range next {
				if _, err := p.AllocateNode(ctx, fmt.Sprintf("n%d", i)); err != nil {
					done <- err
					for range next {
					}
					return
				}
			}
			done <- nil
		}()
	}
	for i := 0; b.Loop(); i++ {
		next <- i
	}
	close(next)
	for range pools {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}
