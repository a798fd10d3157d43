package conntrack

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

// BenchmarkTracker measures the tracker per packet with BPF_PROG_RUN, in the
// kernel's own timing (the syscall is not counted):
//   - hit: a packet of a tracked flow (lookup and update), run b.N times at once;
//   - miss: a packet of a new flow every time (lookups, then create), one run
//     per flow, summed, into a table large enough not to evict.
func BenchmarkTracker(b *testing.B) {
	for _, fam := range []struct {
		name     string
		src, dst string
	}{{"ipv4", "192.0.2.10", "198.51.100.20"}, {"ipv6", "2001:db8::10", "2001:db8:1::20"}} {
		p := testutil.Packet{Proto: layers.IPProtocolTCP, SrcPort: 40000, DstPort: 80, TCPFlags: 0x10, Payload: make([]byte, 64)}
		p.Src, p.Dst = mustAddr(fam.src), mustAddr(fam.dst)
		frame := testutil.BuildPacket(b, p)

		b.Run(fam.name+"/hit", func(b *testing.B) {
			h := newHarness(b, Config{MaxEntries: 1 << 16})
			h.run(b, Out, frame)
			b.ResetTimer()
			_, perRun, err := h.progs.NbCtEgress.Benchmark(frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(perRun.Nanoseconds()), "ns/pkt")
		})
		b.Run(fam.name+"/miss", func(b *testing.B) {
			h := newHarness(b, Config{MaxEntries: 1 << 22})
			// The source port and the low bytes of the source address make each flow new.
			srcEnd := 14 + 12 + 4
			if p.Src.Is6() {
				srcEnd = 14 + 8 + 16
			}
			l4 := len(frame) - 64 - 20
			buf := bytes.Clone(frame)
			var total time.Duration
			b.ResetTimer()
			for i := range b.N {
				buf[l4], buf[l4+1] = byte(i), byte(i>>8)
				buf[srcEnd-1], buf[srcEnd-2] = byte(i>>16), byte(i>>24)
				_, d, err := h.progs.NbCtEgress.Benchmark(buf, 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				total += d
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
		})
	}
}

// BenchmarkGC collects a table holding 512k entries (in 640k slots: an LRU map
// filled to the brim evicts a few early), half of them expired: with batch
// lookups and deletes (Table.GC) and key by key (gcKeyByKey), the way a
// dumper without batch support would. Compare their ns/op.
func BenchmarkGC(b *testing.B) {
	const entries = 512 * 1024
	for name, gc := range map[string]func(*Table, time.Time) (int, error){
		"batch":      (*Table).GC,
		"key-by-key": gcKeyByKey,
	} {
		b.Run(name, func(b *testing.B) {
			h := newHarness(b, Config{MaxEntries: entries * 5 / 4})
			for range b.N {
				b.StopTimer()
				clk, err := readClock()
				if err != nil {
					b.Fatal(err)
				}
				now := clk.monotonic(clk.now)
				putFlows(b, h.Table, entries, func(i int) uint64 {
					if i%2 == 0 {
						return now - uint64(time.Minute)
					}
					return now + uint64(time.Hour)
				})
				b.StartTimer()
				n, err := gc(h.Table, time.Now())
				if err != nil || n != entries/2 {
					b.Fatalf("GC = %d, %v; want %d", n, err, entries/2)
				}
			}
		})
	}
}

// gcKeyByKey is GC without batch operations: a map iterator, one lookup per
// entry, one delete per expired entry.
func gcKeyByKey(t *Table, now time.Time) (int, error) {
	clk, err := readClock()
	if err != nil {
		return 0, err
	}
	limit := clk.monotonic(now)
	var (
		k       ctTuple
		v       ctEntry
		expired []ctTuple
	)
	it := t.ct.Iterate()
	for it.Next(&k, &v) {
		if v.Expires < limit {
			expired = append(expired, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	n := 0
	for _, k := range expired {
		if err := t.ct.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
		n++
	}
	return n, nil
}
