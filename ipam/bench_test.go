package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netblocks/netblocks/ipam"
)

// BenchmarkAllocateRelease measures one pod address allocated, persisted
// and released (two committed transactions) per op.
func BenchmarkAllocateRelease(b *testing.B) {
	for _, tc := range []struct {
		name string
		open func(b *testing.B) ipam.Store
	}{
		{"memory", func(b *testing.B) ipam.Store { return ipam.NewMemoryStore() }},
		{"bolt", func(b *testing.B) ipam.Store {
			s, err := ipam.OpenBolt(filepath.Join(b.TempDir(), "ipam.db"), ipam.BoltConfig{})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			benchAllocateRelease(b, tc.open(b))
		})
	}
}

// benchAllocateRelease is shared with the etcd store's benchmark through a
// copy there; keep them alike.
func benchAllocateRelease(b *testing.B, s ipam.Store) {
	ctx := context.Background()
	a, err := ipam.NewNodeAllocator(ipam.NodeConfig{Store: s, Ranges: []ipam.Range{{Subnet: netip.MustParsePrefix("10.0.0.0/16")}}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// A node with a hundred pods already.
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

// BenchmarkFullSlash16 allocates every address of a /16 on a bbolt file,
// one committed transaction each, and prints the usage report. Run it
// once: go test ./ipam -run '^$' -bench FullSlash16 -benchtime 1x
func BenchmarkFullSlash16(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		path := filepath.Join(b.TempDir(), "ipam.db")
		s, err := ipam.OpenBolt(path, ipam.BoltConfig{})
		if err != nil {
			b.Fatal(err)
		}
		a, err := ipam.NewNodeAllocator(ipam.NodeConfig{Store: s, Ranges: []ipam.Range{{Subnet: netip.MustParsePrefix("10.1.0.0/16")}}})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		n := 0
		for ; ; n++ {
			_, err := a.Allocate(ctx, ipam.Owner{ContainerID: fmt.Sprintf("pod%d", n), IfName: "eth0"})
			if err != nil {
				if n != 65533 {
					b.Fatalf("allocation %d: %v", n, err)
				}
				break
			}
		}
		took := time.Since(start)
		rs := time.Now()
		u, err := a.Usage(ctx)
		if err != nil {
			b.Fatal(err)
		}
		l, err := a.List(ctx)
		if err != nil {
			b.Fatal(err)
		}
		reportTook := time.Since(rs)
		if err := a.Check(ctx); err != nil {
			b.Fatal(err)
		}
		var sb strings.Builder
		ipam.WriteUsage(&sb, u)
		st, _ := os.Stat(path)
		b.Logf("%d addresses in %v (%.0f µs each); usage and list of %d in %v; file %d MiB\n%s",
			n, took.Round(time.Millisecond), float64(took.Microseconds())/float64(n), len(l), reportTook.Round(time.Millisecond), st.Size()>>20, sb.String())
		b.ReportMetric(float64(took.Nanoseconds())/float64(n), "ns/alloc")
		b.ReportMetric(float64(reportTook.Milliseconds()), "ms/report")
		s.Close()
	}
}
