package lbmap

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

// The MAC addresses of a pod's packet (testutil.Packet's defaults): the pod's
// own, and its gateway's (the host side of its veth).
var (
	podMAC     = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	gatewayMAC = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

// intoPod builds the packet of proto from src to dst as it must enter the
// pod: from its gateway's MAC address to its own.
func intoPod(tb testing.TB, proto Protocol, src, dst netip.AddrPort, flags uint8, payload string) []byte {
	tb.Helper()
	p := testutil.Packet{
		SrcMAC: gatewayMAC, DstMAC: podMAC,
		Src: src.Addr(), Dst: dst.Addr(), SrcPort: src.Port(), DstPort: dst.Port(), TCPFlags: flags, Payload: []byte(payload),
		Proto: layers.IPProtocolUDP,
	}
	if proto == TCP {
		p.Proto = layers.IPProtocolTCP
	}
	return testutil.BuildPacket(tb, p)
}

// checkFrame decodes frame and checks its addresses, ports and that every
// checksum in it is right, then compares it byte for byte with want.
func checkFrame(tb testing.TB, frame, want []byte, src, dst netip.AddrPort) {
	tb.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		tb.Fatalf("decode %x: %v", frame, el.Error())
	}
	eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !bytes.Equal(eth.DstMAC, podMAC) || !bytes.Equal(eth.SrcMAC, gatewayMAC) {
		tb.Errorf("Ethernet %v -> %v, want %v -> %v (into the pod)", eth.SrcMAC, eth.DstMAC, gatewayMAC, podMAC)
	}
	var gotSrc, gotDst netip.Addr
	var ipLayer gopacket.NetworkLayer = pkt.NetworkLayer()
	switch ip := ipLayer.(type) {
	case *layers.IPv4:
		gotSrc, _ = netip.AddrFromSlice(ip.SrcIP.To4())
		gotDst, _ = netip.AddrFromSlice(ip.DstIP.To4())
		hdr := frame[14 : 14+int(ip.IHL)*4]
		if s := internetChecksum(hdr); s != 0 {
			tb.Errorf("IPv4 header checksum %#04x wrong (sum %#04x)", ip.Checksum, s)
		}
	case *layers.IPv6:
		gotSrc, _ = netip.AddrFromSlice(ip.SrcIP)
		gotDst, _ = netip.AddrFromSlice(ip.DstIP)
	default:
		tb.Fatalf("no IP layer in %x", frame)
	}
	var sport, dport uint16
	var l4 []byte
	switch l := pkt.TransportLayer().(type) {
	case *layers.TCP:
		sport, dport, l4 = uint16(l.SrcPort), uint16(l.DstPort), append(l.Contents, l.Payload...)
	case *layers.UDP:
		sport, dport, l4 = uint16(l.SrcPort), uint16(l.DstPort), append(l.Contents, l.Payload...)
	default:
		tb.Fatalf("no TCP or UDP layer in %x", frame)
	}
	if got := netip.AddrPortFrom(gotSrc, sport); got != src {
		tb.Errorf("source %v, want %v", got, src)
	}
	if got := netip.AddrPortFrom(gotDst, dport); got != dst {
		tb.Errorf("destination %v, want %v", got, dst)
	}
	if s := internetChecksum(append(pseudoHeader(gotSrc, gotDst, pkt.TransportLayer().LayerType(), len(l4)), l4...)); s != 0 {
		tb.Errorf("L4 checksum wrong (sum over pseudo-header and segment %#04x)", s)
	}
	if !bytes.Equal(frame, want) {
		tb.Errorf("frame\n got  %x\n want %x", frame, want)
	}
}

// internetChecksum is RFC 1071's sum of b, folded and complemented: 0 over
// data that carries its right checksum.
func internetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// pseudoHeader is the TCP/UDP pseudo-header of a segment of n bytes.
func pseudoHeader(src, dst netip.Addr, l4 gopacket.LayerType, n int) []byte {
	proto := byte(layers.IPProtocolTCP)
	if l4 == layers.LayerTypeUDP {
		proto = byte(layers.IPProtocolUDP)
	}
	b := append(src.AsSlice(), dst.AsSlice()...)
	if src.Is4() {
		return append(b, 0, proto, byte(n>>8), byte(n))
	}
	return append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n), 0, 0, 0, proto)
}

// TestHairpinRewrite checks the hairpin rewrite with BPF_PROG_RUN, TCP and
// UDP, v4 and v6, ClusterIP and LoadBalancer frontends: a pod's packet to a
// service whose only backend is the pod goes back into the pod (redirected)
// from the hairpin address to the backend; the pod's reply to the hairpin
// address goes back in from the frontend to the pod's port. Both byte-exact,
// checksums checked by decoding.
func TestHairpinRewrite(t *testing.T) {
	for _, fam := range families {
		for _, typ := range []Type{ClusterIP, LoadBalancer} {
			for _, proto := range []Protocol{TCP, UDP} {
				t.Run(fam.name+"/"+typ.String()+"/"+proto.String(), func(t *testing.T) {
					h := newHarness(t, Config{})
					hp := DefaultHairpinAddr4
					if fam.client.Is6() {
						hp = DefaultHairpinAddr6
					}
					vip := netip.AddrPortFrom(fam.vip, 8080)
					pod := netip.AddrPortFrom(fam.client, 40000) // the client: its connection's port
					be := netip.AddrPortFrom(fam.client, 9000)   // the pod's server
					if err := h.Upsert(Service{Frontend: vip, Protocol: proto, Type: typ, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
						t.Fatal(err)
					}
					for i, flags := range []uint8{0x02, 0x10, 0x18} {
						verdict, out := h.fromClient(t, flowPkt(t, proto, pod, vip, flags, "request"))
						if verdict != tcRedirect {
							t.Fatalf("packet %d: verdict %#x, want a redirect", i, verdict)
						}
						hpClient := netip.AddrPortFrom(hp, pod.Port())
						checkFrame(t, out[:len(intoPod(t, proto, hpClient, be, flags, "request"))], intoPod(t, proto, hpClient, be, flags, "request"), hpClient, be)

						// The pod's server answers the hairpin address, by its gateway.
						verdict, out = h.fromClient(t, flowPkt(t, proto, be, hpClient, flags|0x10, "reply"))
						if verdict != tcRedirect {
							t.Fatalf("reply %d: verdict %#x, want a redirect", i, verdict)
						}
						want := intoPod(t, proto, vip, pod, flags|0x10, "reply")
						checkFrame(t, out[:len(want)], want, vip, pod)
					}
					st, err := h.Stats()
					if err != nil {
						t.Fatal(err)
					}
					if st.Hairpin != 6 || st.DNAT != 3 || st.RevNAT != 3 {
						t.Errorf("stats %+v, want 6 Hairpin, 3 DNAT, 3 RevNAT", st)
					}

					// A packet to the hairpin address that is no reply passes untouched.
					other := flowPkt(t, proto, be, netip.AddrPortFrom(hp, 1234), 0x10, "x")
					if verdict, out := h.fromClient(t, other); verdict != tcxNext || !bytes.Equal(out[:len(other)], other) {
						t.Errorf("unrelated packet to the hairpin address changed or dropped (verdict %#x)", verdict)
					}
					// Another client of the same service is not hairpinned.
					peer := netip.AddrPortFrom(fam.bes[0], 40000)
					if got, ok := h.dnat(t, proto, peer, vip, 0x02, []netip.AddrPort{be}); !ok || got != be {
						t.Errorf("another client: translated to %v (ok %v), want %v, not hairpinned", got, ok, be)
					}
				})
			}
		}
	}
}

// TestHairpinConfig checks a configured hairpin address is the one used, and
// that addresses of the wrong family are refused.
func TestHairpinConfig(t *testing.T) {
	for _, cfg := range []Config{
		{HairpinAddr4: netip.MustParseAddr("2001:db8::1")},
		{HairpinAddr4: netip.IPv4Unspecified()},
		{HairpinAddr6: netip.MustParseAddr("192.0.2.1")},
		{HairpinAddr6: netip.MustParseAddr("::ffff:192.0.2.1")},
		{HairpinAddr6: netip.MustParseAddr("fe80::1%eth0")},
	} {
		if _, err := cfg.withDefaults(); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			hp4, hp6 := netip.MustParseAddr("169.254.7.7"), netip.MustParseAddr("fd00:77::7")
			h := newHarness(t, Config{HairpinAddr4: hp4, HairpinAddr6: hp6})
			hp := hp4
			if fam.client.Is6() {
				hp = hp6
			}
			vip := netip.AddrPortFrom(fam.vip, 53)
			pod, be := netip.AddrPortFrom(fam.client, 40000), netip.AddrPortFrom(fam.client, 5353)
			if err := h.Upsert(Service{Frontend: vip, Protocol: UDP, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
				t.Fatal(err)
			}
			verdict, out := h.fromClient(t, flowPkt(t, UDP, pod, vip, 0, "q"))
			want := intoPod(t, UDP, netip.AddrPortFrom(hp, pod.Port()), be, 0, "q")
			if verdict != tcRedirect {
				t.Fatalf("verdict %#x, want a redirect", verdict)
			}
			checkFrame(t, out[:len(want)], want, netip.AddrPortFrom(hp, pod.Port()), be)
		})
	}
}

// Hairpin through real sockets. In the traffic rig's client namespace (the
// pod, behind cli0 where the datapath is attached), servers on the pod's own
// address answer with the address they see the peer at; services whose only
// backend is the pod are reached by the pod itself.

// hairpinServe starts, in ns, a TCP and a UDP server on addr that answer
// every line (datagram) with "<peer address:port> <message>". The test's
// cleanup stops them.
func hairpinServe(t *testing.T, ns *testutil.NetNS, fam trafficFam, addr netip.AddrPort) {
	t.Helper()
	var ln *net.TCPListener
	var pc *net.UDPConn
	err := ns.Do(func() error {
		var err error
		if ln, err = net.ListenTCP(fam.network("tcp"), net.TCPAddrFromAddrPort(addr)); err != nil {
			return err
		}
		pc, err = net.ListenUDP(fam.network("udp"), net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		t.Fatalf("listen on %v: %v", addr, err)
	}
	done := make(chan struct{}, 2)
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
		for range 2 {
			select {
			case <-done:
			case <-time.After(trafficWait):
				t.Error("hairpin servers still running after close")
				return
			}
		}
	})
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(trafficWait))
				buf := make([]byte, 4096)
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				io.WriteString(c, trafficAddrPort(c.RemoteAddr()).String()+" "+string(buf[:n]))
			}()
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			pc.WriteToUDPAddrPort(append([]byte(from.String()+" "), buf[:n]...), from)
		}
	}()
}

// hairpinTCP connects from the pod to vip, sends msg and returns the pod's
// local address and the peer address the server saw.
func (r *trafficRig) hairpinTCP(fam trafficFam, vip netip.AddrPort, msg string) (local, seen netip.AddrPort, err error) {
	c, err := r.dialTCP(fam, vip)
	if err != nil {
		return local, seen, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(trafficWait))
	if _, err := io.WriteString(c, msg); err != nil {
		return local, seen, fmt.Errorf("send to %v: %w", vip, err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		return local, seen, fmt.Errorf("read from %v: %w", vip, err)
	}
	seen, err = trafficParse(string(reply), msg)
	return trafficAddrPort(c.LocalAddr()), seen, err
}

// hairpinUDP sends msg from the pod to vip and returns the pod's local
// address and the peer address the server saw, checking the answer came
// from vip.
func (r *trafficRig) hairpinUDP(fam trafficFam, vip netip.AddrPort, msg string) (local, seen netip.AddrPort, err error) {
	var pc *net.UDPConn
	err = r.client.Do(func() error {
		var err error
		pc, err = net.ListenUDP(fam.network("udp"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.client.Addr(), 0)))
		return err
	})
	if err != nil {
		return local, seen, fmt.Errorf("open UDP socket: %w", err)
	}
	defer pc.Close()
	local = trafficAddrPort(pc.LocalAddr())
	pc.SetDeadline(time.Now().Add(trafficWait))
	if _, err := pc.WriteToUDPAddrPort([]byte(msg), vip); err != nil {
		return local, seen, fmt.Errorf("send to %v: %w", vip, err)
	}
	buf := make([]byte, 4096)
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return local, seen, fmt.Errorf("answer to %v: %w", vip, err)
	}
	if from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()); from != vip {
		return local, seen, fmt.Errorf("answer to %v came from %v", vip, from)
	}
	seen, err = trafficParse(string(buf[:n]), msg)
	return local, seen, err
}

// TestTrafficHairpin has the pod reach a ClusterIP and a LoadBalancer
// address, TCP and UDP, whose only backend is the pod itself: every exchange
// works, the pod's server sees the hairpin address (and the client's port),
// and the pod's client sees the frontend.
func TestTrafficHairpin(t *testing.T) {
	trafficEachFamily(t, func(t *testing.T, fam trafficFam) {
		r := newTrafficRig(t, Config{})
		hp := DefaultHairpinAddr4
		lbAddr := netip.MustParseAddr("10.10.200.1")
		if fam.v6 {
			hp, lbAddr = DefaultHairpinAddr6, netip.MustParseAddr("fd00:200::1")
		}
		server := netip.AddrPortFrom(fam.client.Addr(), 7000)
		hairpinServe(t, r.client, fam, server)
		var svcs []Service
		for _, typ := range []Type{ClusterIP, LoadBalancer} {
			addr := fam.vip
			if typ == LoadBalancer {
				addr = lbAddr
			}
			for _, proto := range []Protocol{TCP, UDP} {
				svcs = append(svcs, Service{
					Frontend: netip.AddrPortFrom(addr, 80), Protocol: proto, Type: typ,
					Backends: []Backend{{Addr: server, Weight: 1, NodeLocal: true}},
				})
			}
		}
		if _, err := r.tbl.Reconcile(svcs); err != nil {
			t.Fatal(err)
		}
		for _, svc := range svcs {
			exchange := r.hairpinTCP
			if svc.Protocol == UDP {
				exchange = r.hairpinUDP
			}
			for i := range 5 {
				msg := fmt.Sprintf("hairpin %v %d", svc.Key(), i)
				local, seen, err := exchange(fam, svc.Frontend, msg)
				if err != nil {
					t.Fatalf("%v exchange %d: %v", svc.Key(), i, err)
				}
				if want := netip.AddrPortFrom(hp, local.Port()); seen != want {
					t.Errorf("%v: the pod's server saw %v, want %v (the hairpin address, the client's port)", svc.Key(), seen, want)
				}
			}
		}
		st := r.stats(t)
		t.Logf("%+v", st)
		if st.Hairpin == 0 || st.DropNoBackend != 0 {
			t.Errorf("stats %+v: want hairpinned packets and no drops", st)
		}
	})
}
