package lbmap

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/testutil"
)

// xdpMD is struct xdp_md, the context BPF_PROG_RUN gives an XDP program.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

const (
	xdpAborted = 0
	xdpPass    = 2
	xdpTX      = 3
)

// xdpRig runs the uplink XDP program with BPF_PROG_RUN in a namespace of its
// own, whose interface up0 (the uplink, holding the node addresses) routes
// the remote backends' prefixes via a LAN neighbour ("next") and everything
// else via a gateway ("gw"), both permanent neighbours, and a prefix with
// no resolved neighbour ("unresolved"), so that bpf_fib_lookup has answers.
type xdpRig struct {
	*uplinkHarness
	xdp     *ebpf.Program
	ns      *testutil.NetNS
	ifindex int
	own     net.HardwareAddr // up0's address
}

var (
	xdpNextMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x03}
	xdpGwMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
)

// xdpHops are per family: the LAN, the remote backends' prefix and its next
// hop, the gateway, and a prefix routed via an unresolved neighbour.
var xdpHops = map[string]struct {
	lan, remote, unresolved netip.Prefix
	next, gw, nowhere       netip.Addr
}{
	"ipv4": {netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("10.244.3.0/24"),
		netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.254"), netip.MustParseAddr("192.0.2.4")},
	"ipv6": {netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("fd00:244:2::/64"), netip.MustParsePrefix("fd00:244:3::/64"),
		netip.MustParseAddr("2001:db8::3"), netip.MustParseAddr("2001:db8::fe"), netip.MustParseAddr("2001:db8::4")},
}

func newXDPRig(tb testing.TB, cfg Config, ucfg UplinkConfig) *xdpRig {
	tb.Helper()
	h := newUplinkHarness(tb, cfg, ucfg)
	prog, err := h.loadUplinkXDP(ucfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	r := &xdpRig{uplinkHarness: h, xdp: prog, ns: testutil.NewNetNS(tb)}
	if err := r.build(); err != nil {
		tb.Fatal(err)
	}
	return r
}

func (r *xdpRig) build() error {
	if err := trafficSysctl(r.ns, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	if err := trafficSysctl(r.ns, "net/ipv6/conf/all/forwarding", "1"); err != nil {
		return err
	}
	nh := r.ns.Netlink()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "up0"
	if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "up1"}); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	peer, err := nh.LinkByName("up1")
	if err != nil {
		return err
	}
	if err := nh.LinkSetUp(peer); err != nil {
		return err
	}
	var lans []netip.Prefix
	for _, hop := range xdpHops {
		lans = append(lans, hop.lan)
	}
	if err := trafficConfigure(nh, "up0", lans, nil); err != nil {
		return err
	}
	up, err := nh.LinkByName("up0")
	if err != nil {
		return err
	}
	r.ifindex, r.own = up.Attrs().Index, up.Attrs().HardwareAddr
	for _, hop := range xdpHops {
		for _, rt := range []struct {
			dst netip.Prefix
			gw  netip.Addr
		}{{hop.remote, hop.next}, {hop.unresolved, hop.nowhere}, {netip.PrefixFrom(hop.gw, 0).Masked(), hop.gw}} {
			if err := nh.RouteAdd(&netlink.Route{LinkIndex: r.ifindex, Dst: prefixNet(rt.dst), Gw: rt.gw.AsSlice()}); err != nil {
				return fmt.Errorf("add route to %v: %w", rt.dst, err)
			}
		}
		for _, n := range []struct {
			ip  netip.Addr
			mac net.HardwareAddr
		}{{hop.next, xdpNextMAC}, {hop.gw, xdpGwMAC}} {
			family := netlink.FAMILY_V4
			if n.ip.Is6() {
				family = netlink.FAMILY_V6
			}
			if err := nh.NeighAdd(&netlink.Neigh{LinkIndex: r.ifindex, Family: family, State: netlink.NUD_PERMANENT, IP: n.ip.AsSlice(), HardwareAddr: n.mac}); err != nil {
				return fmt.Errorf("add neighbour %v: %w", n.ip, err)
			}
		}
	}
	return nil
}

// xdp runs frame through the XDP program, arriving on up0, in the rig's
// namespace, and returns the verdict and the frame after it.
func (r *xdpRig) xdpRun(tb testing.TB, frame []byte) (uint32, []byte) {
	tb.Helper()
	opts := &ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+64),
		Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(r.ifindex)},
	}
	var ret uint32
	err := r.ns.Do(func() error {
		var err error
		ret, err = r.xdp.Run(opts)
		return err
	})
	if err != nil {
		tb.Fatalf("run XDP: %v", err)
	}
	return ret, opts.DataOut[:len(frame)]
}

// checkForwarded checks that out is in translated to src -> dst, one TTL
// (hop limit) less, from up0's address to mac, with correct checksums and
// the same payload.
func checkForwarded(tb testing.TB, in, out []byte, src, dst netip.AddrPort, own, mac net.HardwareAddr) {
	tb.Helper()
	checkChecksums(tb, out)
	pin := gopacket.NewPacket(in, layers.LayerTypeEthernet, gopacket.Default)
	pout := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	eth := pout.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !bytes.Equal(eth.SrcMAC, own) || !bytes.Equal(eth.DstMAC, mac) {
		tb.Errorf("Ethernet %v -> %v, want %v -> %v", eth.SrcMAC, eth.DstMAC, own, mac)
	}
	var gotSrc, gotDst netip.Addr
	var ttlIn, ttlOut uint8
	switch ip := pout.NetworkLayer().(type) {
	case *layers.IPv4:
		gotSrc, _ = netip.AddrFromSlice(ip.SrcIP.To4())
		gotDst, _ = netip.AddrFromSlice(ip.DstIP.To4())
		ttlOut, ttlIn = ip.TTL, pin.NetworkLayer().(*layers.IPv4).TTL
	case *layers.IPv6:
		gotSrc, _ = netip.AddrFromSlice(ip.SrcIP)
		gotDst, _ = netip.AddrFromSlice(ip.DstIP)
		ttlOut, ttlIn = ip.HopLimit, pin.NetworkLayer().(*layers.IPv6).HopLimit
	}
	if ttlOut != ttlIn-1 {
		tb.Errorf("TTL %d, want %d", ttlOut, ttlIn-1)
	}
	var sp, dp uint16
	switch l4 := pout.TransportLayer().(type) {
	case *layers.TCP:
		sp, dp = uint16(l4.SrcPort), uint16(l4.DstPort)
	case *layers.UDP:
		sp, dp = uint16(l4.SrcPort), uint16(l4.DstPort)
	}
	if got := [2]netip.AddrPort{netip.AddrPortFrom(gotSrc, sp), netip.AddrPortFrom(gotDst, dp)}; got != [2]netip.AddrPort{src, dst} {
		tb.Errorf("translated to %v -> %v, want %v -> %v", got[0], got[1], src, dst)
	}
	if !bytes.Equal(pout.TransportLayer().LayerPayload(), pin.TransportLayer().LayerPayload()) {
		tb.Error("payload changed")
	}
}

// TestUplinkXDP checks the XDP program on a remote backend of a NodePort and
// a LoadBalancer service, TCP and UDP, v4 and v6: the client's packets go
// back out (XDP_TX) DNATed and SNATed, byte-exact with checksums, TTL and
// next hop; the tc program, given the same connection, agrees on its NAT
// port; the backend's replies go back out to the client from the frontend,
// via the gateway. The XDP counters count both.
func TestUplinkXDP(t *testing.T) {
	for _, fam := range uplinkFamilies {
		for _, typ := range []Type{NodePort, LoadBalancer} {
			for _, proto := range []Protocol{TCP, UDP} {
				t.Run(fam.name+"/"+typ.String()+"/"+proto.String(), func(t *testing.T) {
					r := newXDPRig(t, Config{}, fam.cfg())
					fe := netip.AddrPortFrom(fam.node, 30080)
					if typ != NodePort {
						fe = netip.AddrPortFrom(fam.lbVIP, 80)
					}
					be := netip.AddrPortFrom(fam.remote, 8080)
					if err := r.Upsert(Service{Frontend: fe, Protocol: proto, Type: typ, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
						t.Fatal(err)
					}
					client := netip.AddrPortFrom(fam.client, 40000)
					var snat netip.AddrPort
					for i := range 3 {
						in := flowPkt(t, proto, client, fe, 0x10, fmt.Sprintf("request %d", i))
						verdict, out := r.xdpRun(t, in)
						if verdict != xdpTX {
							t.Fatalf("packet %d: verdict %d, want XDP_TX", i, verdict)
						}
						e, ok := natOf(t, r.Table, client, be)
						if !ok {
							t.Fatal("no NAT entry")
						}
						if i > 0 && e.SNAT != snat {
							t.Fatalf("NAT port moved from %v to %v", snat, e.SNAT)
						}
						snat = e.SNAT
						if snat.Addr() != fam.snat {
							t.Fatalf("SNAT to %v, want %v", snat, fam.snat)
						}
						checkForwarded(t, in, out, snat, be, r.own, xdpNextMAC)
					}
					// The tc program sees the same connection (as it would with XDP in generic mode detached).
					in := flowPkt(t, proto, client, fe, 0x10, "via tc")
					if verdict, out := r.in(t, in); verdict != tcRedirect {
						t.Fatalf("tc verdict %d, want redirect", verdict)
					} else if src := srcOf(t, out); src != snat {
						t.Fatalf("tc SNATed to %v, XDP to %v", src, snat)
					}
					reply := flowPkt(t, proto, be, snat, 0x18, "reply")
					verdict, out := r.xdpRun(t, reply)
					if verdict != xdpTX {
						t.Fatalf("reply: verdict %d, want XDP_TX", verdict)
					}
					checkForwarded(t, reply, out, fe, client, r.own, xdpGwMAC)
					st, err := r.Stats()
					if err != nil {
						t.Fatal(err)
					}
					if st.XDPForward != 3 || st.XDPReverse != 1 || st.SNAT != 4 || st.RevSNAT != 1 {
						t.Errorf("stats %+v: want XDPForward 3, XDPReverse 1, SNAT 4, RevSNAT 1", st)
					}
				})
			}
		}
	}
}

// srcOf returns the source address and port of a TCP or UDP frame.
func srcOf(tb testing.TB, frame []byte) netip.AddrPort {
	tb.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var a netip.Addr
	switch ip := p.NetworkLayer().(type) {
	case *layers.IPv4:
		a, _ = netip.AddrFromSlice(ip.SrcIP.To4())
	case *layers.IPv6:
		a, _ = netip.AddrFromSlice(ip.SrcIP)
	}
	switch l4 := p.TransportLayer().(type) {
	case *layers.TCP:
		return netip.AddrPortFrom(a, uint16(l4.SrcPort))
	case *layers.UDP:
		return netip.AddrPortFrom(a, uint16(l4.SrcPort))
	}
	tb.Fatalf("no TCP or UDP in %x", frame)
	return netip.AddrPort{}
}

// TestUplinkXDPPass checks what the XDP program leaves to the tc program,
// unchanged and without NAT entries: a local backend, traffic policy Local,
// a packet for no frontend, a remote backend whose next hop is not resolved,
// an expiring TTL, and a reply to a NAT port no connection has.
func TestUplinkXDPPass(t *testing.T) {
	for _, fam := range uplinkFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newXDPRig(t, Config{}, fam.cfg())
			hop := xdpHops[fam.name]
			unresolved := hop.unresolved.Addr().Next().Next()
			fe := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(fam.node, port) }
			for _, s := range []Service{
				{Frontend: fe(30001), Protocol: TCP, Type: NodePort, Backends: []Backend{{Addr: netip.AddrPortFrom(fam.local, 80), Weight: 1, NodeLocal: true}}},
				{Frontend: fe(30002), Protocol: TCP, Type: NodePort, TrafficPolicy: Local, Backends: []Backend{{Addr: netip.AddrPortFrom(fam.local, 80), Weight: 1, NodeLocal: true}}},
				{Frontend: fe(30003), Protocol: TCP, Type: NodePort, Backends: []Backend{{Addr: netip.AddrPortFrom(unresolved, 80), Weight: 1}}},
				{Frontend: fe(30004), Protocol: TCP, Type: NodePort, Backends: []Backend{{Addr: netip.AddrPortFrom(fam.remote, 80), Weight: 1}}},
				{Frontend: fe(30005), Protocol: TCP, Type: ClusterIP, Backends: []Backend{{Addr: netip.AddrPortFrom(fam.remote, 80), Weight: 1}}},
			} {
				if err := r.Upsert(s); err != nil {
					t.Fatal(err)
				}
			}
			client := netip.AddrPortFrom(fam.client, 40000)
			ttl1 := testutil.BuildPacket(t, testutil.Packet{Src: client.Addr(), Dst: fam.node, Proto: layers.IPProtocolTCP,
				SrcPort: client.Port(), DstPort: 30004, TTL: 1, TCPFlags: 0x02})
			for _, c := range []struct {
				name  string
				frame []byte
			}{
				{"local-backend", flowPkt(t, TCP, client, fe(30001), 0x02, "x")},
				{"policy-local", flowPkt(t, TCP, client, fe(30002), 0x02, "x")},
				{"unresolved-next-hop", flowPkt(t, TCP, client, fe(30003), 0x02, "x")},
				{"non-service", flowPkt(t, TCP, client, fe(22), 0x02, "x")},
				{"udp-non-service", flowPkt(t, UDP, client, fe(30001), 0, "x")},
				{"cluster-ip", flowPkt(t, TCP, client, fe(30005), 0x02, "x")},
				{"ttl-1", ttl1},
				{"reply-unknown-nat-port", flowPkt(t, TCP, netip.AddrPortFrom(fam.remote, 80), fe(61000), 0x12, "x")},
			} {
				verdict, out := r.xdpRun(t, c.frame)
				if verdict != xdpPass || !bytes.Equal(out, c.frame) {
					t.Errorf("%s: verdict %d (want XDP_PASS), changed %v", c.name, verdict, !bytes.Equal(out, c.frame))
				}
			}
			if es, err := r.NATEntries(); err != nil || len(es) != 0 {
				t.Errorf("NAT entries %v, %v; want none", es, err)
			}
			if st, err := r.Stats(); err != nil || st.XDPForward != 0 || st.DNAT != 0 {
				t.Errorf("stats %+v, %v; want nothing translated", st, err)
			}
		})
	}
}

// TestUplinkConfigXDPMode checks that an unknown XDP mode is an error.
func TestUplinkConfigXDPMode(t *testing.T) {
	if err := (UplinkConfig{XDP: XDPAuto + 1}).validate(); err == nil {
		t.Error("XDP mode 4: no error")
	}
	for _, m := range []XDPMode{XDPOff, XDPNative, XDPGeneric, XDPAuto} {
		if err := (UplinkConfig{XDP: m}).validate(); err != nil {
			t.Errorf("XDP mode %v: %v", m, err)
		}
	}
}
