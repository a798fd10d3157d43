package lbmap

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/testutil"
)

// benchFillers returns n services that no benchmark packet hits, each with
// two backends from a shared pool of 1024: 10.128.0.0/9 port 80, TCP.
func benchFillers(n int) []Service {
	out := make([]Service, n)
	for i := range out {
		fe := netip.AddrFrom4([4]byte{10, byte(128 + i>>16), byte(i >> 8), byte(i)})
		out[i] = Service{Frontend: netip.AddrPortFrom(fe, 80), Protocol: TCP}
		for k := range 2 {
			j := (2*i + k) % 1024
			be := netip.AddrFrom4([4]byte{198, 18, byte(j >> 8), byte(j)})
			out[i].Backends = append(out[i].Backends, Backend{Addr: netip.AddrPortFrom(be, 8080), Weight: 1})
		}
	}
	return out
}

// BenchmarkDatapath measures nb_lb_from_client per packet with BPF_PROG_RUN,
// in the kernel's own timing (the syscall is not counted; ns/pkt is the
// figure, ns/op includes the syscalls), with 2, 10,000 and 100,000 services in
// the table.
// The table always has the two services under test:
//
//   - hit: a packet of an established connection (both conntrack entries
//     hit), run b.N times in one BPF_PROG_RUN. The kernel runs the repeats on
//     the same skb, so after a DNAT the next run would see the backend's
//     address and not the service; the service under test is therefore its
//     own backend (10.96.0.10:80 -> 10.96.0.10:80), which keeps every run on
//     the full path: service lookup, conntrack hit, backend lookup, rewrite
//     of address and port with their checksums, the second conntrack hit
//     (here the same entry as the first: the tuples coincide).
//   - hit-1run: the same, for an ordinary service (10.96.0.11:80 to two
//     backends), one run per BPF_PROG_RUN, the kernel's per-run times summed
//     (each includes the kernel's timer reads, ~tens of ns).
//   - new: a new connection every run (source port and address vary) to
//     10.96.0.11:80: two conntrack misses, a random selection, two creates.
//     One run per BPF_PROG_RUN, summed; the conntrack table is flushed (outside
//     the measurement) before it fills, so nothing is evicted.
func BenchmarkDatapath(b *testing.B) {
	self := netip.MustParseAddrPort("10.96.0.10:80")
	vip := netip.MustParseAddrPort("10.96.0.11:80")
	client := netip.MustParseAddrPort("192.0.2.7:40000")
	tested := []Service{
		{Frontend: self, Protocol: TCP, Backends: []Backend{{Addr: self, Weight: 1}}},
		{Frontend: vip, Protocol: TCP, Backends: []Backend{
			{Addr: netip.MustParseAddrPort("192.0.2.50:8080"), Weight: 1},
			{Addr: netip.MustParseAddrPort("192.0.2.51:8080"), Weight: 1},
		}},
	}
	pkt := func(dst netip.AddrPort) []byte {
		return testutil.BuildPacket(b, testutil.Packet{
			Src: client.Addr(), Dst: dst.Addr(), Proto: layers.IPProtocolTCP,
			SrcPort: client.Port(), DstPort: dst.Port(), TCPFlags: 0x10, Payload: make([]byte, 64),
		})
	}
	selfFrame, vipFrame := pkt(self), pkt(vip)

	for _, n := range []int{2, 10_000, 100_000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			h := newHarness(b, Config{MaxServices: 1 << 17, MaxSlots: 1 << 19}) // the same map sizes for every n
			if _, err := h.Reconcile(append(benchFillers(n-len(tested)), tested...)); err != nil {
				b.Fatal(err)
			}
			if got := len(h.List()); got != n {
				b.Fatalf("%d services in the table, want %d", got, n)
			}
			for _, frame := range [][]byte{selfFrame, vipFrame} { // establish both connections
				if verdict, _ := h.fromClient(b, frame); verdict != tcxNext {
					b.Fatalf("verdict %#x", verdict)
				}
			}

			b.Run("hit", func(b *testing.B) {
				ret, perRun, err := h.progs.NbLbFromClient.Benchmark(selfFrame, b.N, b.ResetTimer)
				if err != nil || ret != tcxNext {
					b.Fatalf("benchmark: verdict %#x, %v", ret, err)
				}
				b.ReportMetric(float64(perRun.Nanoseconds()), "ns/pkt")
			})
			b.Run("hit-1run", func(b *testing.B) {
				var total time.Duration
				for range b.N {
					ret, d, err := h.progs.NbLbFromClient.Benchmark(vipFrame, 1, nil)
					if err != nil || ret != tcxNext {
						b.Fatalf("benchmark: verdict %#x, %v", ret, err)
					}
					total += d
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
			})
			b.Run("new", func(b *testing.B) {
				// The source port and the low bytes of the source address make
				// each flow new.
				const srcEnd = 14 + 12 + 4
				l4 := len(vipFrame) - 64 - 20
				buf := bytes.Clone(vipFrame)
				flushEvery := h.ct.MaxEntries() / 4 // two entries a connection: half full at most
				var total time.Duration
				for i := range b.N {
					if i%flushEvery == 0 {
						if _, err := h.ct.Flush(); err != nil {
							b.Fatal(err)
						}
					}
					buf[l4], buf[l4+1] = byte(i), byte(i>>8)
					buf[srcEnd-1], buf[srcEnd-2] = byte(i>>16), byte(i>>24)
					ret, d, err := h.progs.NbLbFromClient.Benchmark(buf, 1, nil)
					if err != nil || ret != tcxNext {
						b.Fatalf("benchmark: verdict %#x, %v", ret, err)
					}
					total += d
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
			})
		})
	}
}

// benchServices returns n services of k backends each, every backend
// distinct: 10.96.0.0/12 port 80 to 172.16.0.0/12 port 8080, TCP.
func benchServices(n, k int) []Service {
	out := make([]Service, n)
	for i := range out {
		fe := netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)})
		out[i] = Service{Frontend: netip.AddrPortFrom(fe, 80), Protocol: TCP, Backends: make([]Backend, k)}
		for j := range k {
			x := i*k + j
			be := netip.AddrFrom4([4]byte{172, byte(16 + x>>16), byte(x >> 8), byte(x)})
			out[i].Backends[j] = Backend{Addr: netip.AddrPortFrom(be, 8080), Weight: 1}
		}
	}
	return out
}

// benchTable returns a Table (with a conntrack table it never attaches) closed
// at b's cleanup.
func benchTable(b *testing.B, ct *conntrack.Table, cfg Config) *Table {
	b.Helper()
	tbl, err := New(cfg, ct)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tbl.Close() })
	return tbl
}

func benchConntrack(b *testing.B) *conntrack.Table {
	b.Helper()
	testutil.RequirePrivileged(b)
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1024})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ct.Close() })
	return ct
}

// benchConfig sizes a Table for 10,000 services of 10 backends plus the
// garbage of many changes: garbage lives GracePeriod (1 ms here, so the
// benchmarks see the steady state: every call collects the previous one's).
var benchConfig = Config{MaxBackends: 1 << 17, MaxSlots: 1 << 22, GracePeriod: time.Millisecond}

// BenchmarkReconcile measures Reconcile:
//   - fill: 10,000 services of 10 backends into an empty Table (a new one
//     for every iteration, made outside the timer);
//   - one-changed/services=N: a Table of N services of 10 backends, and the
//     desired set differs from it in one service (a weight, 1 and 2 in turn).
//     The ideal is the same cost at any N; compare with BenchmarkUpsertOne;
//   - unchanged/services=N: nothing differs, the floor of a call.
func BenchmarkReconcile(b *testing.B) {
	ct := benchConntrack(b)
	b.Run("fill/services=10000x10", func(b *testing.B) {
		desired := benchServices(10_000, 10)
		b.ReportAllocs()
		for range b.N {
			b.StopTimer()
			tbl, err := New(benchConfig, ct)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			res, err := tbl.Reconcile(desired)
			b.StopTimer()
			if err != nil || res.Added != len(desired) {
				b.Fatalf("Reconcile = %+v, %v", res, err)
			}
			tbl.Close()
			b.StartTimer()
		}
	})
	for _, n := range []int{100, 1_000, 10_000} {
		b.Run(fmt.Sprintf("one-changed/services=%d", n), func(b *testing.B) {
			tbl := benchTable(b, ct, benchConfig)
			desired := benchServices(n, 10)
			if _, err := tbl.Reconcile(desired); err != nil {
				b.Fatal(err)
			}
			variants := benchWeightVariants(desired[n/2])
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				desired[n/2].Backends = variants[i%2]
				res, err := tbl.Reconcile(desired)
				if err != nil || res.Updated != 1 {
					b.Fatalf("Reconcile = %+v, %v", res, err)
				}
			}
		})
	}
	for _, n := range []int{100, 1_000, 10_000} {
		b.Run(fmt.Sprintf("unchanged/services=%d", n), func(b *testing.B) {
			tbl := benchTable(b, ct, benchConfig)
			desired := benchServices(n, 10)
			if _, err := tbl.Reconcile(desired); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if res, err := tbl.Reconcile(desired); err != nil || res.Unchanged != n {
					b.Fatalf("Reconcile = %+v, %v", res, err)
				}
			}
		})
	}
}

// benchWeightVariants returns s's backends with the first one's weight 2
// (index 0, a change from the weight 1 s has) and 1 (index 1, back again).
func benchWeightVariants(s Service) [2][]Backend {
	var v [2][]Backend
	for i := range v {
		v[i] = append([]Backend(nil), s.Backends...)
	}
	v[0][0].Weight = 2
	v[1][0].Weight = 1
	return v
}

// BenchmarkUpsertOne changes one service (a weight, in turn) with Upsert in
// a Table of N services of 10 backends: the cost of one change, to compare
// with BenchmarkReconcile/one-changed. The maglev case changes a Maglev
// service of the default table size (16381 slots) among 1,000: a new set
// written, the replaced one collected.
func BenchmarkUpsertOne(b *testing.B) {
	ct := benchConntrack(b)
	for _, c := range []struct {
		n   int
		alg Algorithm
	}{{100, Random}, {1_000, Random}, {10_000, Random}, {1_000, Maglev}} {
		name := fmt.Sprintf("services=%d", c.n)
		if c.alg == Maglev {
			name = "maglev/" + name
		}
		b.Run(name, func(b *testing.B) {
			tbl := benchTable(b, ct, benchConfig)
			desired := benchServices(c.n, 10)
			desired[c.n/2].Algorithm = c.alg
			if _, err := tbl.Reconcile(desired); err != nil {
				b.Fatal(err)
			}
			s := desired[c.n/2]
			variants := benchWeightVariants(s)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				s.Backends = variants[i%2]
				if err := tbl.Upsert(s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
