package lbmap

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/testutil"
)

const tcRedirect = 7 // TC_ACT_REDIRECT: bpf_redirect_neigh's verdict

// uplinkHarness is a harness with the uplink ingress program loaded.
type uplinkHarness struct {
	*harness
	uplink *ebpf.Program
}

func newUplinkHarness(tb testing.TB, cfg Config, ucfg UplinkConfig) *uplinkHarness {
	tb.Helper()
	h := newHarness(tb, cfg)
	prog, err := h.loadUplink(ucfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return &uplinkHarness{harness: h, uplink: prog}
}

func (h *uplinkHarness) in(tb testing.TB, frame []byte) (uint32, []byte) {
	tb.Helper()
	verdict, out := run(tb, h.uplink, frame)
	return verdict, out[:len(frame)]
}

// checkChecksums decodes frame with gopacket and checks its IPv4 header and
// TCP/UDP checksums by serializing it again with checksums computed.
func checkChecksums(tb testing.TB, frame []byte) {
	tb.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		tb.Fatalf("decode %x: %v", frame, el.Error())
	}
	var ls []gopacket.SerializableLayer
	var nl gopacket.NetworkLayer
	for _, l := range pkt.Layers() {
		switch l := l.(type) {
		case *layers.Ethernet:
			ls = append(ls, l)
		case *layers.IPv4:
			nl = l
			ls = append(ls, l)
		case *layers.IPv6:
			nl = l
			ls = append(ls, l)
		case *layers.TCP:
			l.SetNetworkLayerForChecksum(nl)
			ls = append(ls, l, gopacket.Payload(l.Payload))
		case *layers.UDP:
			l.SetNetworkLayerForChecksum(nl)
			ls = append(ls, l, gopacket.Payload(l.Payload))
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ls...); err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), frame) {
		tb.Fatalf("checksums wrong:\n got  %x\n want %x", frame, buf.Bytes())
	}
}

type uplinkFam struct {
	name            string
	node, snat      netip.Addr // a node address (NodePort frontend), the SNAT address
	lbVIP           netip.Addr
	client, client2 netip.Addr
	remote, local   netip.Addr // backends
}

var uplinkFamilies = []uplinkFam{
	{"ipv4", netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("10.10.200.1"),
		netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8"),
		netip.MustParseAddr("10.244.2.5"), netip.MustParseAddr("10.244.1.5")},
	{"ipv6", netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fd00:200::1"),
		netip.MustParseAddr("2001:db8:c::7"), netip.MustParseAddr("2001:db8:c::8"),
		netip.MustParseAddr("fd00:244:2::5"), netip.MustParseAddr("fd00:244:1::5")},
}

func (f uplinkFam) cfg() UplinkConfig {
	if f.snat.Is4() {
		return UplinkConfig{SNAT4: f.snat}
	}
	return UplinkConfig{SNAT6: f.snat}
}

// natOf returns the NAT entry of the connection client -> backend.
func natOf(tb testing.TB, tbl *Table, client, backend netip.AddrPort) (NATEntry, bool) {
	tb.Helper()
	es, err := tbl.NATEntries()
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range es {
		if e.Flow.Src == client && e.Flow.Dst == backend {
			return e, true
		}
	}
	return NATEntry{}, false
}

// TestUplinkSNAT checks a remote backend of a NodePort and a LoadBalancer
// service, TCP and UDP, v4 and v6: the client's packets leave DNATed and
// SNATed (byte-exact, checksums checked), on one NAT port for the
// connection; the backend's replies come back to the client from the
// frontend.
func TestUplinkSNAT(t *testing.T) {
	for _, fam := range uplinkFamilies {
		for _, typ := range []Type{NodePort, LoadBalancer, ExternalIP} {
			for _, proto := range []Protocol{TCP, UDP} {
				t.Run(fam.name+"/"+typ.String()+"/"+proto.String(), func(t *testing.T) {
					h := newUplinkHarness(t, Config{}, fam.cfg())
					fe := netip.AddrPortFrom(fam.node, 30080)
					if typ != NodePort {
						fe = netip.AddrPortFrom(fam.lbVIP, 80)
					}
					be := netip.AddrPortFrom(fam.remote, 8080)
					if err := h.Upsert(Service{Frontend: fe, Protocol: proto, Type: typ, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
						t.Fatal(err)
					}
					client := netip.AddrPortFrom(fam.client, 40000)
					var snat netip.AddrPort
					for i := range 3 {
						flags := uint8(0x10)
						if i == 0 {
							flags = 0x02
						}
						verdict, out := h.in(t, flowPkt(t, proto, client, fe, flags, "payload"))
						if verdict != tcRedirect {
							t.Fatalf("verdict %#x, want redirect", verdict)
						}
						e, ok := natOf(t, h.Table, client, be)
						if !ok {
							t.Fatal("no NAT entry")
						}
						if i > 0 && e.SNAT != snat {
							t.Fatalf("NAT port moved from %v to %v", snat, e.SNAT)
						}
						snat = e.SNAT
						if snat.Addr() != fam.snat || snat.Port() < DefaultNATPortMin {
							t.Fatalf("SNAT to %v, want %v and a port from %d", snat, fam.snat, DefaultNATPortMin)
						}
						checkChecksums(t, out)
						if want := forwarded(t, proto, snat, be, flags, "payload"); !bytes.Equal(out, want) {
							t.Fatalf("DNAT+SNAT:\n got  %x\n want %x", out, want)
						}
					}
					verdict, out := h.in(t, flowPkt(t, proto, be, snat, 0x12, "reply"))
					if verdict != tcRedirect {
						t.Fatalf("reply verdict %#x, want redirect", verdict)
					}
					checkChecksums(t, out)
					if want := forwarded(t, proto, fe, client, 0x12, "reply"); !bytes.Equal(out, want) {
						t.Fatalf("reply:\n got  %x\n want %x", out, want)
					}
					// The connection's conntrack entry saw the reply.
					e, err := h.ct.Lookup(natFlow(proto, client, be))
					if err != nil || e.TxPackets != 1 || e.RxPackets != 3 {
						t.Fatalf("conntrack entry %v, %v: want 3 packets in, 1 reply", e, err)
					}
					// A packet to the SNAT address on another port is not ours.
					other := flowPkt(t, proto, be, netip.AddrPortFrom(fam.snat, snat.Port()+1), 0x12, "x")
					if verdict, out := h.in(t, other); verdict != tcxNext || !bytes.Equal(out, other) {
						t.Fatalf("unrelated packet to the node changed or dropped (verdict %#x)", verdict)
					}
					st, err := h.Stats()
					if err != nil {
						t.Fatal(err)
					}
					if st.DNAT != 3 || st.SNAT != 3 || st.RevSNAT != 1 {
						t.Errorf("stats %+v, want 3 DNAT, 3 SNAT, 1 RevSNAT", st)
					}
				})
			}
		}
	}
}

// TestUplinkLocalBackend checks that a backend on this node gets the
// client's address (no SNAT, no NAT entry, passed to the stack), and that
// the egress program translates its replies.
func TestUplinkLocalBackend(t *testing.T) {
	for _, fam := range uplinkFamilies {
		t.Run(fam.name, func(t *testing.T) {
			h := newUplinkHarness(t, Config{}, fam.cfg())
			fe := netip.AddrPortFrom(fam.node, 30080)
			be := netip.AddrPortFrom(fam.local, 8080)
			if err := h.Upsert(Service{Frontend: fe, Protocol: TCP, Type: NodePort, Backends: []Backend{{Addr: be, Weight: 1, NodeLocal: true}}}); err != nil {
				t.Fatal(err)
			}
			client := netip.AddrPortFrom(fam.client, 40000)
			verdict, out := h.in(t, flowPkt(t, TCP, client, fe, 0x02, "payload"))
			if want := flowPkt(t, TCP, client, be, 0x02, "payload"); verdict != tcxNext || !bytes.Equal(out, want) {
				t.Fatalf("verdict %#x\n got  %x\n want %x", verdict, out, want)
			}
			checkChecksums(t, out)
			if es, _ := h.NATEntries(); len(es) != 0 {
				t.Fatalf("NAT entries %v for a local backend", es)
			}
			verdict, out = h.toClient(t, flowPkt(t, TCP, be, client, 0x12, "reply"))
			if want := flowPkt(t, TCP, fe, client, 0x12, "reply"); verdict != tcxNext || !bytes.Equal(out[:len(want)], want) {
				t.Fatalf("reply: verdict %#x\n got  %x\n want %x", verdict, out, want)
			}
		})
	}
}

// TestUplinkTrafficPolicyLocal checks policy Local: only local backends,
// with the client's address; none: dropped and counted; and
// HasLocalBackends. Policy Cluster spreads over both.
func TestUplinkTrafficPolicyLocal(t *testing.T) {
	for _, fam := range uplinkFamilies {
		t.Run(fam.name, func(t *testing.T) {
			h := newUplinkHarness(t, Config{}, fam.cfg())
			fe := netip.AddrPortFrom(fam.lbVIP, 80)
			local, remote := netip.AddrPortFrom(fam.local, 8080), netip.AddrPortFrom(fam.remote, 8080)
			svc := Service{Frontend: fe, Protocol: TCP, Type: LoadBalancer, TrafficPolicy: Local,
				Backends: []Backend{{Addr: remote, Weight: 1}, {Addr: local, Weight: 1, NodeLocal: true}}}
			if err := h.Upsert(svc); err != nil {
				t.Fatal(err)
			}
			if ok, err := h.HasLocalBackends(svc.Key()); err != nil || !ok {
				t.Fatalf("HasLocalBackends = %v, %v; want true", ok, err)
			}
			for i := range 32 {
				client := netip.AddrPortFrom(fam.client, uint16(40000+i))
				verdict, out := h.in(t, flowPkt(t, TCP, client, fe, 0x02, "p"))
				if want := flowPkt(t, TCP, client, local, 0x02, "p"); verdict != tcxNext || !bytes.Equal(out, want) {
					t.Fatalf("connection %d: verdict %#x, not to the local backend with the client's address", i, verdict)
				}
			}
			// No local backend: dropped and counted.
			svc.Backends = svc.Backends[:1]
			if err := h.Upsert(svc); err != nil {
				t.Fatal(err)
			}
			if ok, err := h.HasLocalBackends(svc.Key()); err != nil || ok {
				t.Fatalf("HasLocalBackends = %v, %v; want false", ok, err)
			}
			if verdict, _ := h.in(t, flowPkt(t, TCP, netip.AddrPortFrom(fam.client2, 1), fe, 0x02, "p")); verdict != tcShot {
				t.Fatalf("verdict %#x, want drop", verdict)
			}
			if st, _ := h.Stats(); st.DropNoBackend != 1 {
				t.Errorf("DropNoBackend %d, want 1", st.DropNoBackend)
			}
			if _, err := h.HasLocalBackends(ServiceKey{Frontend: netip.AddrPortFrom(fam.lbVIP, 81), Protocol: TCP}); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("HasLocalBackends of no service: %v", err)
			}
			// Policy Cluster: both backends, the remote one SNATed.
			svc.TrafficPolicy = Cluster
			svc.Backends = []Backend{{Addr: remote, Weight: 1}, {Addr: local, Weight: 1, NodeLocal: true}}
			if err := h.Upsert(svc); err != nil {
				t.Fatal(err)
			}
			seen := map[uint32]int{}
			for i := range 64 {
				verdict, _ := h.in(t, flowPkt(t, TCP, netip.AddrPortFrom(fam.client2, uint16(50000+i)), fe, 0x02, "p"))
				seen[verdict]++
			}
			if seen[tcxNext] == 0 || seen[tcRedirect] == 0 || seen[tcxNext]+seen[tcRedirect] != 64 {
				t.Fatalf("verdicts %v: want local (next) and remote (redirect) backends", seen)
			}
		})
	}
}

// TestUplinkSourceRanges checks that a client outside the source ranges is
// dropped and counted, one inside served.
func TestUplinkSourceRanges(t *testing.T) {
	for _, fam := range uplinkFamilies {
		t.Run(fam.name, func(t *testing.T) {
			h := newUplinkHarness(t, Config{}, fam.cfg())
			fe := netip.AddrPortFrom(fam.lbVIP, 80)
			be := netip.AddrPortFrom(fam.remote, 8080)
			if err := h.Upsert(Service{Frontend: fe, Protocol: UDP, Type: LoadBalancer, Backends: []Backend{{Addr: be, Weight: 1}},
				SourceRanges: []netip.Prefix{netip.PrefixFrom(fam.client, fam.client.BitLen())}}); err != nil {
				t.Fatal(err)
			}
			if verdict, _ := h.in(t, flowPkt(t, UDP, netip.AddrPortFrom(fam.client2, 1000), fe, 0, "p")); verdict != tcShot {
				t.Fatalf("outside: verdict %#x, want drop", verdict)
			}
			if verdict, _ := h.in(t, flowPkt(t, UDP, netip.AddrPortFrom(fam.client, 1000), fe, 0, "p")); verdict != tcRedirect {
				t.Fatalf("inside: verdict %#x, want redirect", verdict)
			}
			if st, _ := h.Stats(); st.DropSourceRange != 1 || st.SNAT != 1 {
				t.Errorf("stats %+v, want 1 DropSourceRange, 1 SNAT", st)
			}
		})
	}
}

// TestUplinkNATPorts checks port allocation: with a range of 4 ports, 4
// connections to one backend get 4 distinct ports, a fifth is dropped and
// counted; another backend has its own 4; GCNAT frees the ports of
// connections conntrack forgot, and the fifth then gets one.
func TestUplinkNATPorts(t *testing.T) {
	for _, fam := range uplinkFamilies {
		t.Run(fam.name, func(t *testing.T) {
			h := newUplinkHarness(t, Config{NATPortMin: 62000, NATPortMax: 62003}, fam.cfg())
			fe := netip.AddrPortFrom(fam.node, 30080)
			be := netip.AddrPortFrom(fam.remote, 8080)
			if err := h.Upsert(Service{Frontend: fe, Protocol: UDP, Type: NodePort, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
				t.Fatal(err)
			}
			ports := map[uint16]bool{}
			for i := range 4 {
				client := netip.AddrPortFrom(fam.client, uint16(1000+i))
				if verdict, _ := h.in(t, flowPkt(t, UDP, client, fe, 0, "p")); verdict != tcRedirect {
					t.Fatalf("connection %d: verdict %#x", i, verdict)
				}
				e, ok := natOf(t, h.Table, client, be)
				if !ok || e.SNAT.Port() < 62000 || e.SNAT.Port() > 62003 || ports[e.SNAT.Port()] {
					t.Fatalf("connection %d: NAT %v (ok %v), taken %v", i, e.SNAT, ok, ports)
				}
				ports[e.SNAT.Port()] = true
			}
			fifth := flowPkt(t, UDP, netip.AddrPortFrom(fam.client2, 1000), fe, 0, "p")
			if verdict, _ := h.in(t, fifth); verdict != tcShot {
				t.Fatalf("fifth connection: verdict %#x, want drop", verdict)
			}
			if st, _ := h.Stats(); st.DropNATFull != 1 {
				t.Errorf("DropNATFull %d, want 1", st.DropNATFull)
			}
			// Another backend port has its own range.
			be2 := netip.AddrPortFrom(fam.remote, 8081)
			fe2 := netip.AddrPortFrom(fam.node, 30081)
			if err := h.Upsert(Service{Frontend: fe2, Protocol: UDP, Type: NodePort, Backends: []Backend{{Addr: be2, Weight: 1}}}); err != nil {
				t.Fatal(err)
			}
			if verdict, _ := h.in(t, flowPkt(t, UDP, netip.AddrPortFrom(fam.client, 1000), fe2, 0, "p")); verdict != tcRedirect {
				t.Fatalf("other backend: verdict %#x", verdict)
			}
			// Nothing is reclaimed while conntrack has the connections.
			time.Sleep(natMinAge + 100*time.Millisecond)
			if n, err := h.GCNAT(time.Now()); err != nil || n != 0 {
				t.Fatalf("GCNAT = %d, %v; want 0", n, err)
			}
			if _, err := h.ct.Flush(); err != nil {
				t.Fatal(err)
			}
			if n, err := h.GCNAT(time.Now()); err != nil || n != 5 {
				t.Fatalf("GCNAT = %d, %v; want 5", n, err)
			}
			var nk lbNATKey
			var nv lbNAT
			if err := h.maps[mapNAT].NextKey(nil, &nk); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("NAT table not empty after GC (%v, %+v %+v)", err, nk, nv)
			}
			if verdict, _ := h.in(t, fifth); verdict != tcRedirect {
				t.Fatalf("fifth connection after GC: verdict %#x", verdict)
			}
		})
	}
}

// TestUplinkNonService checks that packets not for a north-south frontend
// pass untouched: other addresses and ports, ClusterIP services, ICMP.
func TestUplinkNonService(t *testing.T) {
	fam := uplinkFamilies[0]
	h := newUplinkHarness(t, Config{}, fam.cfg())
	cip := netip.MustParseAddrPort("10.96.0.10:80")
	be := netip.AddrPortFrom(fam.remote, 8080)
	if err := h.Upsert(Service{Frontend: cip, Protocol: TCP, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	client := netip.AddrPortFrom(fam.client, 40000)
	for _, frame := range [][]byte{
		flowPkt(t, TCP, client, cip, 0x02, ""),
		flowPkt(t, TCP, client, netip.AddrPortFrom(fam.node, 22), 0x02, ""),
		flowPkt(t, UDP, client, netip.AddrPortFrom(fam.node, 53), 0, "x"),
	} {
		if verdict, out := h.in(t, frame); verdict != tcxNext || !bytes.Equal(out, frame) {
			t.Errorf("packet %x changed or dropped (verdict %#x)", frame, verdict)
		}
	}
	if _, err := newHarness(t, Config{}).loadUplink(UplinkConfig{SNAT4: netip.MustParseAddr("2001:db8::1")}); err == nil {
		t.Error("an IPv6 SNAT4 address was accepted")
	}
}

func natFlow(proto Protocol, src, dst netip.AddrPort) conntrack.Flow {
	return conntrack.Flow{Src: src, Dst: dst, Proto: conntrack.Protocol(proto)}
}

// TestUplinkSharedTuple checks a client port that reaches one remote backend
// through two frontends, one after the other (the tuple after DNAT is the
// same): replies come from the frontend the client used last, as on the
// east-west datapath.
func TestUplinkSharedTuple(t *testing.T) {
	fam := uplinkFamilies[0]
	h := newUplinkHarness(t, Config{}, fam.cfg())
	be := netip.AddrPortFrom(fam.remote, 5353)
	np, lb := netip.AddrPortFrom(fam.node, 30053), netip.AddrPortFrom(fam.lbVIP, 53)
	for _, fe := range []netip.AddrPort{np, lb} {
		if err := h.Upsert(Service{Frontend: fe, Protocol: UDP, Type: NodePort, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	client := netip.AddrPortFrom(fam.client, 20000)
	for _, fe := range []netip.AddrPort{np, lb} {
		if verdict, _ := h.in(t, flowPkt(t, UDP, client, fe, 0, "q")); verdict != tcRedirect {
			t.Fatalf("to %v: verdict %#x", fe, verdict)
		}
		e, ok := natOf(t, h.Table, client, be)
		if !ok {
			t.Fatal("no NAT entry")
		}
		verdict, out := h.in(t, flowPkt(t, UDP, be, e.SNAT, 0, "a"))
		if want := forwarded(t, UDP, fe, client, 0, "a"); verdict != tcRedirect || !bytes.Equal(out, want) {
			t.Fatalf("reply to a packet for %v: verdict %#x\n got  %x\n want %x", fe, verdict, out, want)
		}
	}
}

// forwarded is flowPkt as the uplink datapath forwards it: TTL 63.
func forwarded(tb testing.TB, proto Protocol, src, dst netip.AddrPort, flags uint8, payload string) []byte {
	tb.Helper()
	p := testutil.Packet{Src: src.Addr(), Dst: dst.Addr(), SrcPort: src.Port(), DstPort: dst.Port(), TCPFlags: flags, Payload: []byte(payload), TTL: 63}
	p.Proto = layers.IPProtocolUDP
	if proto == TCP {
		p.Proto = layers.IPProtocolTCP
	}
	return testutil.BuildPacket(tb, p)
}

// TestUplinkTTL checks that a packet the node forwards itself with TTL 1 is
// dropped.
func TestUplinkTTL(t *testing.T) {
	for _, fam := range uplinkFamilies {
		t.Run(fam.name, func(t *testing.T) {
			h := newUplinkHarness(t, Config{}, fam.cfg())
			fe := netip.AddrPortFrom(fam.node, 30080)
			if err := h.Upsert(Service{Frontend: fe, Protocol: UDP, Type: NodePort, Backends: []Backend{{Addr: netip.AddrPortFrom(fam.remote, 53), Weight: 1}}}); err != nil {
				t.Fatal(err)
			}
			frame := testutil.BuildPacket(t, testutil.Packet{Src: fam.client, Dst: fe.Addr(), Proto: layers.IPProtocolUDP, SrcPort: 1, DstPort: fe.Port(), TTL: 1})
			if verdict, _ := h.in(t, frame); verdict != tcShot {
				t.Fatalf("verdict %#x, want drop", verdict)
			}
		})
	}
}
