package lbmap

// TestSvcEntryReuse guards a bug found under load: a hash map update swaps
// in a new element and recycles the old one at once, so a packet to service A
// that looked A up just before A's entry was rewritten (in a batch with other
// services') read another service's entry and was DNATed to its backend, or
// dropped. Service entries are now updated in place under their lock and
// repeat their key (lb.h); every packet must reach one of A's backends.

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

func TestSvcEntryReuse(t *testing.T) {
	for _, upsert := range []bool{false, true} {
		t.Run(map[bool]string{false: "Reconcile", true: "Upsert"}[upsert], func(t *testing.T) {
			h := newHarness(t, Config{})
			vip := netip.MustParseAddrPort("10.96.0.10:80")
			a1, a2 := netip.MustParseAddrPort("192.0.2.50:8080"), netip.MustParseAddrPort("192.0.2.51:8080")
			other := netip.MustParseAddrPort("198.51.100.99:9999")
			// Round r: A keeps both backends, only a weight changes; 8 other
			// services change too. A comes first, so its update is followed
			// by the others' in the same batch.
			desired := func(r int) []Service {
				w := uint16(1 + r%2)
				out := []Service{{Frontend: vip, Protocol: TCP, Backends: []Backend{{Addr: a1, Weight: w}, {Addr: a2, Weight: 1}}}}
				for i := range 8 {
					fe := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 97, 0, byte(i + 1)}), 80)
					out = append(out, Service{Frontend: fe, Protocol: TCP, Backends: []Backend{{Addr: other, Weight: w}}})
				}
				return out
			}
			if _, err := h.Reconcile(desired(0)); err != nil {
				t.Fatal(err)
			}
			var stop atomic.Bool
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := 1; !stop.Load(); r++ {
					if !upsert {
						h.Reconcile(desired(r))
						continue
					}
					for _, s := range desired(r) {
						h.Upsert(s)
					}
				}
			}()
			// New connections (a SYN from a new source each time) to A.
			frame := testutil.BuildPacket(t, testutil.Packet{Src: netip.MustParseAddr("192.0.2.7"), Dst: vip.Addr(),
				Proto: layers.IPProtocolTCP, SrcPort: 1, DstPort: vip.Port(), TCPFlags: 0x02})
			dst := map[netip.Addr]int{}
			shot, n := 0, 0
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); n++ {
				binary.BigEndian.PutUint16(frame[14+20:], uint16(n)) // source port
				binary.BigEndian.PutUint16(frame[14+12:], uint16(n>>16))
				verdict, out := h.fromClient(t, frame)
				if verdict == tcShot {
					shot++
				} else {
					dst[netip.AddrFrom4([4]byte(out[14+16:14+20]))]++
				}
				if n%16384 == 16383 {
					h.ct.Flush()
				}
			}
			stop.Store(true)
			wg.Wait()
			t.Logf("%d SYNs to %v: destinations %v, dropped %d", n, vip, dst, shot)
			if dst[a1.Addr()]+dst[a2.Addr()] != n || shot > 0 {
				t.Errorf("of %d SYNs, %d went to another service's backend %v, %d left untranslated, %d were dropped",
					n, dst[other.Addr()], other.Addr(), dst[vip.Addr()], shot)
			}
		})
	}
}
