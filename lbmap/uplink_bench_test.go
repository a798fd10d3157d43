package lbmap

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

// BenchmarkUplink measures the uplink ingress program per packet
// (BPF_PROG_RUN with repeat): an established connection to a NodePort with a
// local backend, one with a remote backend (DNAT + SNAT + redirect), and a
// packet for no frontend. BPF_PROG_RUN runs the same buffer again and again,
// so each service maps the packet onto itself: the backend is the frontend
// and, for the remote one, the client is the SNAT address and its port the
// only NAT port. Every lookup and rewrite still happens. A forwarded packet
// (remote backend) loses a TTL each run, so it is measured one run per
// BPF_PROG_RUN only (-1run, which costs a little more per packet: compare
// the -1run figures with each other).
func BenchmarkUplink(b *testing.B) {
	client := netip.MustParseAddrPort("192.0.2.1:40000")
	local := netip.MustParseAddrPort("192.0.2.2:30080")
	remote := netip.MustParseAddrPort("192.0.2.2:30081")
	h := newUplinkHarness(b, Config{NATPortMin: client.Port(), NATPortMax: client.Port()}, UplinkConfig{SNAT4: client.Addr()})
	for _, s := range []Service{
		{Frontend: local, Protocol: TCP, Type: NodePort, Backends: []Backend{{Addr: local, Weight: 1, NodeLocal: true}}},
		{Frontend: remote, Protocol: TCP, Type: NodePort, Backends: []Backend{{Addr: remote, Weight: 1}}},
	} {
		if err := h.Upsert(s); err != nil {
			b.Fatal(err)
		}
	}
	pkt := func(dst netip.AddrPort) []byte {
		return testutil.BuildPacket(b, testutil.Packet{
			Src: client.Addr(), Dst: dst.Addr(), Proto: layers.IPProtocolTCP,
			SrcPort: client.Port(), DstPort: dst.Port(), TCPFlags: 0x10, Payload: make([]byte, 64),
		})
	}
	for _, bc := range []struct {
		name    string
		frame   []byte
		verdict uint32
	}{
		{"nodeport-local", pkt(local), tcxNext},
		{"nodeport-remote", pkt(remote), tcRedirect},
		{"non-service", pkt(netip.MustParseAddrPort("192.0.2.2:22")), tcxNext},
	} {
		if bc.verdict != tcRedirect { // a forwarded packet's TTL changes: it cannot be run again and again
			b.Run(bc.name, func(b *testing.B) {
				if verdict, out := h.in(b, bc.frame); verdict != bc.verdict || !bytes.Equal(out, bc.frame) {
					b.Fatalf("verdict %#x (want %#x), or packet changed", verdict, bc.verdict)
				}
				ret, perRun, err := h.uplink.Benchmark(bc.frame, b.N, b.ResetTimer)
				if err != nil || ret != bc.verdict {
					b.Fatalf("benchmark: verdict %#x, %v", ret, err)
				}
				b.ReportMetric(float64(perRun.Nanoseconds()), "ns/pkt")
			})
		}
		b.Run(bc.name+"-1run", func(b *testing.B) {
			var total time.Duration
			for range b.N {
				ret, d, err := h.uplink.Benchmark(bc.frame, 1, nil)
				if err != nil || ret != bc.verdict {
					b.Fatalf("benchmark: verdict %#x, %v", ret, err)
				}
				total += d
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
		})
	}
}
