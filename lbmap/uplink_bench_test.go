package lbmap

import (
	"bytes"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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

// BenchmarkUplinkXDP compares the XDP program with the tc one on an
// established connection to a NodePort with a remote backend (DNAT + SNAT +
// TTL + next hop: XDP_TX, against bpf_redirect_neigh), in the same run and
// namespace, as BenchmarkUplink maps the packet onto itself. Each
// BPF_PROG_RUN repeats 200 times on one buffer (the packet starts with TTL
// 255, so it stays a forwarded one); the figure is the kernel's per-run
// time. BPF_PROG_RUN leaves out what XDP saves besides the program (the skb,
// the stack up to tc) and what bpf_redirect_neigh costs after the program,
// so the ratio understates the gain.
func BenchmarkUplinkXDP(b *testing.B) {
	client := netip.MustParseAddrPort("192.0.2.1:40000")
	remote := netip.MustParseAddrPort("192.0.2.2:30081")
	r := newXDPRig(b, Config{NATPortMin: client.Port(), NATPortMax: client.Port()}, UplinkConfig{SNAT4: client.Addr()})
	if err := r.Upsert(Service{Frontend: remote, Protocol: TCP, Type: NodePort, Backends: []Backend{{Addr: remote, Weight: 1}}}); err != nil {
		b.Fatal(err)
	}
	if err := r.ns.Netlink().NeighAdd(&netlink.Neigh{LinkIndex: r.ifindex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: remote.Addr().AsSlice(), HardwareAddr: xdpNextMAC}); err != nil {
		b.Fatal(err)
	}
	frame := testutil.BuildPacket(b, testutil.Packet{
		Src: client.Addr(), Dst: remote.Addr(), Proto: layers.IPProtocolTCP, TTL: 255,
		SrcPort: client.Port(), DstPort: remote.Port(), TCPFlags: 0x10, Payload: make([]byte, 64),
	})
	const repeat = 200
	if verdict, _ := r.xdpRun(b, frame); verdict != xdpTX {
		b.Fatalf("XDP verdict %d, want XDP_TX", verdict)
	}
	for _, bc := range []struct {
		name string
		run  func() (uint32, time.Duration, error)
		want uint32
	}{
		{"tc", func() (uint32, time.Duration, error) { return r.uplink.Benchmark(frame, repeat, nil) }, tcRedirect},
		{"xdp", func() (uint32, time.Duration, error) { return progRunXDP(r.xdp, frame, r.ifindex, repeat) }, xdpTX},
	} {
		b.Run("nodeport-remote-"+bc.name, func(b *testing.B) {
			var total time.Duration
			var n int
			err := r.ns.Do(func() error {
				for n = 0; n < b.N; n += repeat {
					ret, d, err := bc.run()
					if err != nil {
						return err
					}
					if ret != bc.want {
						return fmt.Errorf("verdict %d, want %d", ret, bc.want)
					}
					total += d * repeat
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(n), "ns/pkt")
		})
	}
}

// progRunXDP is Program.Benchmark for an XDP program, arriving on ifindex
// (which Program.Benchmark cannot say): BPF_PROG_TEST_RUN by hand. It
// returns the verdict and the kernel's time per run.
func progRunXDP(prog *ebpf.Program, frame []byte, ifindex, repeat int) (uint32, time.Duration, error) {
	ctx := xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}
	attr := struct {
		progFD, retval, sizeIn, sizeOut uint32
		dataIn, dataOut                 uint64
		repeat, duration                uint32
		ctxSizeIn, ctxSizeOut           uint32
		ctxIn, ctxOut                   uint64
		flags, cpu, batchSize, _        uint32
	}{
		progFD: uint32(prog.FD()), sizeIn: uint32(len(frame)), dataIn: uint64(uintptr(unsafe.Pointer(&frame[0]))),
		repeat: uint32(repeat), ctxSizeIn: uint32(unsafe.Sizeof(ctx)), ctxIn: uint64(uintptr(unsafe.Pointer(&ctx))),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(frame)
	runtime.KeepAlive(&ctx)
	if errno != 0 {
		return 0, 0, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
	}
	return attr.retval, time.Duration(attr.duration), nil
}
