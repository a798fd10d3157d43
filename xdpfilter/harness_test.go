package xdpfilter

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

// XDP verdicts as BPF_PROG_RUN returns them.
const (
	xdpDrop = 1
	xdpPass = 2
)

// harness is a Filter with its program loaded, run with BPF_PROG_RUN.
type harness struct {
	*Filter
	progs xdpfilterPrograms
}

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	f, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	return loadOn(tb, f)
}

// loadOn loads the program onto an existing filter's maps (as Attach does),
// for BPF_PROG_RUN.
func loadOn(tb testing.TB, f *Filter) *harness {
	tb.Helper()
	progs, err := f.loadProgram()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { progs.Close() })
	return &harness{Filter: f, progs: *progs}
}

// verdict runs frame through the filter.
func (h *harness) verdict(tb testing.TB, frame []byte) uint32 {
	tb.Helper()
	ret, err := h.progs.NbXdpFilter.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		tb.Fatalf("run filter on %d bytes: %v", len(frame), err)
	}
	return ret
}

// udpFrom builds a UDP frame from src.
func udpFrom(tb testing.TB, src string) []byte {
	tb.Helper()
	a := netip.MustParseAddr(src)
	dst := netip.MustParseAddr("192.0.2.1")
	if a.Is6() {
		dst = netip.MustParseAddr("2001:db8::1")
	}
	return testutil.BuildPacket(tb, testutil.Packet{Src: a, Dst: dst, Proto: layers.IPProtocolUDP, SrcPort: 1, DstPort: 2})
}
