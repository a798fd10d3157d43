package xdpfilter

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/netblocks/netblocks/internal/testutil"
)

// loadBenchHarness is newHarness without tb.Cleanup, so that a benchmark
// frees each big filter before building the next one.
func loadBenchHarness(b *testing.B, cfg Config) (*harness, func()) {
	b.Helper()
	testutil.RequirePrivileged(b)
	f, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	progs, err := f.loadProgram()
	if err != nil {
		f.Close()
		b.Fatal(err)
	}
	h := &harness{Filter: f, progs: *progs}
	return h, func() { progs.Close(); f.Close() }
}

// benchRules returns n distinct random rules of one family and length
// (/32, /24, /128 or /64), from a fixed seed.
func benchRules(seed uint64, n int, v6 bool, bits int) []netip.Prefix {
	rng := rand.New(rand.NewPCG(seed, 0xbe7c))
	seen := make(map[netip.Prefix]struct{}, n)
	out := make([]netip.Prefix, 0, n)
	for len(out) < n {
		var a netip.Addr
		if v6 {
			var x [16]byte
			binary.BigEndian.PutUint64(x[:], 0x20010db8<<32|rng.Uint64()&0xffffffff)
			binary.BigEndian.PutUint64(x[8:], rng.Uint64())
			a = netip.AddrFrom16(x)
		} else {
			var x [4]byte
			binary.BigEndian.PutUint32(x[:], rng.Uint32())
			a = netip.AddrFrom4(x)
		}
		p := netip.PrefixFrom(a, bits).Masked()
		if _, dup := seen[p]; dup {
			continue
		}
		seen[p] = struct{}{}
		out = append(out, p)
	}
	return out
}

// BenchmarkFilter measures the program's cost per packet (kernel-measured,
// BPF_PROG_RUN) for a packet whose source matches a rule, by the number of
// rules, exact (hash) or prefix (LPM trie), v4 or v6. It also reports how
// long filling the filter with Replace took (fill-s).
func BenchmarkFilter(b *testing.B) {
	for _, fam := range []struct {
		name  string
		v6    bool
		exact int
		pfx   int
	}{{"v4", false, 32, 24}, {"v6", true, 128, 64}} {
		for _, exact := range []bool{true, false} {
			bits, kindName := fam.pfx, "prefix"
			cfg := Config{MaxExact: 1024, MaxPrefixes: 1 << 21}
			if exact {
				bits, kindName = fam.exact, "exact"
				cfg = Config{MaxExact: 1 << 21, MaxPrefixes: 1024}
			}
			for _, n := range []int{1, 1000, 64 << 10, 1000000} {
				name := fmt.Sprintf("%s/%s/rules=%d", fam.name, kindName, n)
				rules := benchRules(uint64(n), n, fam.v6, bits)
				h, done := loadBenchHarness(b, cfg)
				t0 := time.Now()
				if err := h.Replace(rules); err != nil {
					done()
					b.Fatalf("%s: replace: %v", name, err)
				}
				fill := time.Since(t0)
				// The packet's source is inside the middle rule.
				src := rules[n/2].Addr()
				if !fam.v6 && bits < 32 {
					src = src.Next()
				} else if fam.v6 && bits < 128 {
					src = src.Next()
				}
				frame := udpFrom(b, src.String())
				if got := h.verdict(b, frame); got != xdpDrop {
					done()
					b.Fatalf("%s: source %v: verdict %d, want drop", name, src, got)
				}
				b.Run(name, func(b *testing.B) {
					b.ResetTimer() // it also clears the metrics reported so far
					ret, perRun, err := h.progs.NbXdpFilter.Benchmark(frame, b.N, nil)
					if err != nil {
						b.Fatal(err)
					}
					if ret != xdpDrop {
						b.Fatalf("verdict %d, want drop", ret)
					}
					b.ReportMetric(float64(perRun.Nanoseconds()), "ns/pkt")
					b.ReportMetric(fill.Seconds(), "fill-s")
				})
				done()
			}
		}
	}
}

// BenchmarkLoad measures Replace with 1M IPv4 rules, exact (/32) or prefix
// (/24): into an empty filter, over another 1M set (the first switch), and
// in steady state (over a 1M set, clearing the 1M set before it).
func BenchmarkLoad(b *testing.B) {
	const n = 1000000
	for _, tt := range []struct {
		name string
		bits int
		cfg  Config
	}{
		{"exact4", 32, Config{MaxExact: 1 << 21, MaxPrefixes: 1024}},
		{"prefix4", 24, Config{MaxExact: 1024, MaxPrefixes: 1 << 21}},
	} {
		sets := [3][]netip.Prefix{}
		for i := range sets {
			sets[i] = benchRules(uint64(i)+100, n, false, tt.bits)
		}
		for _, phase := range []struct {
			name  string
			prior int // Replaces before the measured one
		}{{"empty", 0}, {"replace", 1}, {"steady", 2}} {
			b.Run(tt.name+"/"+phase.name, func(b *testing.B) {
				testutil.RequirePrivileged(b)
				for range b.N {
					b.StopTimer()
					f, err := New(tt.cfg)
					if err != nil {
						b.Fatal(err)
					}
					for i := range phase.prior {
						if err := f.Replace(sets[i]); err != nil {
							f.Close()
							b.Fatal(err)
						}
					}
					b.StartTimer()
					err = f.Replace(sets[phase.prior])
					b.StopTimer()
					f.Close()
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/rule")
			})
		}
	}
}
