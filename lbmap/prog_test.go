package lbmap

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/testutil"
)

// Verdicts as BPF_PROG_RUN returns them.
const (
	tcxNext = 0xffffffff // TC_ACT_UNSPEC: pass on
	tcShot  = 2          // TC_ACT_SHOT: dropped
)

// harness is a Table and conntrack table with the datapath loaded, run with
// BPF_PROG_RUN.
type harness struct {
	*Table
	ct    *conntrack.Table
	progs lbPrograms
}

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1 << 16})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ct.Close() })
	tbl, err := New(cfg, ct)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tbl.Close() })
	progs, err := tbl.loadDatapath()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { progs.Close() })
	return &harness{Table: tbl, ct: ct, progs: *progs}
}

// run runs prog on frame and returns its verdict and output frame.
func run(tb testing.TB, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	tb.Helper()
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)}
	ret, err := prog.Run(opts)
	if err != nil {
		tb.Fatalf("run %v: %v", prog, err)
	}
	return ret, opts.DataOut
}

// fromClient runs a client's packet through ingress and returns the result.
func (h *harness) fromClient(tb testing.TB, frame []byte) (uint32, []byte) {
	return run(tb, h.progs.NbLbFromClient, frame)
}

// toClient runs a packet toward the client through egress.
func (h *harness) toClient(tb testing.TB, frame []byte) (uint32, []byte) {
	return run(tb, h.progs.NbLbToClient, frame)
}

// flowPkt builds a packet of proto from src to dst.
func flowPkt(tb testing.TB, proto Protocol, src, dst netip.AddrPort, flags uint8, payload string) []byte {
	tb.Helper()
	p := testutil.Packet{Src: src.Addr(), Dst: dst.Addr(), SrcPort: src.Port(), DstPort: dst.Port(), TCPFlags: flags, Payload: []byte(payload)}
	p.Proto = layers.IPProtocolUDP
	if proto == TCP {
		p.Proto = layers.IPProtocolTCP
	}
	return testutil.BuildPacket(tb, p)
}

type family struct {
	name   string
	vip    netip.Addr
	client netip.Addr
	bes    []netip.Addr
}

var families = []family{
	{"ipv4", netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("192.0.2.7"),
		[]netip.Addr{netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("192.0.2.51"), netip.MustParseAddr("192.0.2.52")}},
	{"ipv6", netip.MustParseAddr("fd00:96::10"), netip.MustParseAddr("2001:db8::7"),
		[]netip.Addr{netip.MustParseAddr("2001:db8::50"), netip.MustParseAddr("2001:db8::51"), netip.MustParseAddr("2001:db8::52")}},
}

// dnat sends a client packet to the service and returns the backend it was
// translated to, checking the output byte for byte (so every checksum)
// against the same packet built with the backend as destination.
func (h *harness) dnat(tb testing.TB, proto Protocol, client, vip netip.AddrPort, flags uint8, backends []netip.AddrPort) (netip.AddrPort, bool) {
	tb.Helper()
	verdict, out := h.fromClient(tb, flowPkt(tb, proto, client, vip, flags, "payload"))
	if verdict == tcShot {
		return netip.AddrPort{}, false
	}
	if verdict != tcxNext {
		tb.Fatalf("verdict %#x", verdict)
	}
	for _, be := range backends {
		if bytes.Equal(out, flowPkt(tb, proto, client, be, flags, "payload")) {
			return be, true
		}
	}
	tb.Fatalf("packet to %v left as %x: not translated to any of %v", vip, out, backends)
	return netip.AddrPort{}, false
}

// TestDNATServiceTypes checks every service type, TCP and UDP, v4 and v6:
// the connection's packets go to one backend, replies come back from the
// frontend, byte-exact.
func TestDNATServiceTypes(t *testing.T) {
	for _, fam := range families {
		for _, typ := range []Type{ClusterIP, NodePort, LoadBalancer, ExternalIP} {
			for _, proto := range []Protocol{TCP, UDP} {
				t.Run(fam.name+"/"+typ.String()+"/"+proto.String(), func(t *testing.T) {
					h := newHarness(t, Config{})
					vip := netip.AddrPortFrom(fam.vip, 8080)
					var bes []netip.AddrPort
					var backends []Backend
					for i, a := range fam.bes {
						bes = append(bes, netip.AddrPortFrom(a, uint16(9000+i)))
						backends = append(backends, Backend{Addr: bes[i], Weight: 1})
					}
					if err := h.Upsert(Service{Frontend: vip, Protocol: proto, Type: typ, Backends: backends}); err != nil {
						t.Fatal(err)
					}
					client := netip.AddrPortFrom(fam.client, 40000)
					be, ok := h.dnat(t, proto, client, vip, 0x02, bes)
					if !ok {
						t.Fatal("first packet dropped")
					}
					// Later packets of the connection stay on its backend.
					for range 20 {
						if again, _ := h.dnat(t, proto, client, vip, 0x10, bes); again != be {
							t.Fatalf("connection moved from %v to %v", be, again)
						}
					}
					reply := flowPkt(t, proto, be, client, 0x12, "reply")
					verdict, out := h.toClient(t, reply)
					if want := flowPkt(t, proto, vip, client, 0x12, "reply"); verdict != tcxNext || !bytes.Equal(out, want) {
						t.Fatalf("reply: verdict %#x\n got  %x\n want %x", verdict, out, want)
					}
					// A packet from a backend that is not a reply passes untouched.
					other := flowPkt(t, proto, be, netip.AddrPortFrom(fam.client, 1), 0x02, "x")
					if verdict, out := h.toClient(t, other); verdict != tcxNext || !bytes.Equal(out, other) {
						t.Fatalf("unrelated packet changed or dropped (verdict %#x)", verdict)
					}
					st, err := h.Stats()
					if err != nil {
						t.Fatal(err)
					}
					if st.DNAT != 21 || st.RevNAT != 1 {
						t.Errorf("stats %+v, want 21 DNAT and 1 RevNAT", st)
					}
				})
			}
		}
	}
}

// TestNonServiceUntouched checks that traffic to anything but a frontend
// passes unchanged, and that a port or protocol other than the service's is
// not the service.
func TestNonServiceUntouched(t *testing.T) {
	h := newHarness(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	if err := h.Upsert(Service{Frontend: vip, Protocol: TCP, Backends: []Backend{{Addr: netip.MustParseAddrPort("192.0.2.50:80"), Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("192.0.2.7:40000")
	for _, frame := range [][]byte{
		flowPkt(t, TCP, client, netip.MustParseAddrPort("10.96.0.11:80"), 0x02, ""),
		flowPkt(t, TCP, client, netip.MustParseAddrPort("10.96.0.10:81"), 0x02, ""),
		flowPkt(t, UDP, client, vip, 0, "udp to a TCP service"),
		testutil.BuildPacket(t, testutil.Packet{Src: client.Addr(), Dst: vip.Addr(), Proto: layers.IPProtocolICMPv4, ICMPID: 1}),
		testutil.BuildPacket(t, testutil.Packet{EtherType: layers.EthernetTypeARP, Payload: make([]byte, 28)}),
	} {
		if verdict, out := h.fromClient(t, frame); verdict != tcxNext || !bytes.Equal(out, frame) {
			t.Errorf("packet %x changed or dropped (verdict %#x)", frame, verdict)
		}
	}
}

// TestBackendStates checks Kubernetes' rule: new connections go to active
// backends; to terminating ones only when no backend is active; never to
// quarantined or maintenance ones, nor to weight 0. Existing connections keep
// their backend whatever its state.
func TestBackendStates(t *testing.T) {
	h := newHarness(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	a, b, c, d := netip.MustParseAddrPort("192.0.2.50:80"), netip.MustParseAddrPort("192.0.2.51:80"),
		netip.MustParseAddrPort("192.0.2.52:80"), netip.MustParseAddrPort("192.0.2.53:80")
	all := []netip.AddrPort{a, b, c, d}
	svc := func(states [4]BackendState, weights [4]uint16) Service {
		s := Service{Frontend: vip, Protocol: TCP}
		for i, be := range all {
			s.Backends = append(s.Backends, Backend{Addr: be, State: states[i], Weight: weights[i]})
		}
		return s
	}
	port := uint16(1000)
	chosen := func(n int) map[netip.AddrPort]int {
		seen := map[netip.AddrPort]int{}
		for range n {
			port++
			be, ok := h.dnat(t, TCP, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.7"), port), vip, 0x02, all)
			if !ok {
				seen[netip.AddrPort{}]++
				continue
			}
			seen[be]++
		}
		return seen
	}
	steps := []struct {
		name    string
		states  [4]BackendState
		weights [4]uint16
		want    []netip.AddrPort // the only backends new connections may use; nil: dropped
	}{
		{"active ones only", [4]BackendState{Active, Terminating, Quarantined, Maintenance}, [4]uint16{1, 1, 1, 1}, []netip.AddrPort{a}},
		{"weight 0 takes none", [4]BackendState{Active, Active, Active, Active}, [4]uint16{0, 1, 0, 1}, []netip.AddrPort{b, d}},
		{"terminating when none is active", [4]BackendState{Terminating, Terminating, Quarantined, Maintenance}, [4]uint16{1, 1, 1, 1}, []netip.AddrPort{a, b}},
		{"none usable: drop", [4]BackendState{Quarantined, Maintenance, Maintenance, Quarantined}, [4]uint16{1, 1, 1, 1}, nil},
	}
	// A connection opened first keeps its backend through every step.
	long := netip.MustParseAddrPort("192.0.2.8:50000")
	if err := h.Upsert(svc(steps[0].states, steps[0].weights)); err != nil {
		t.Fatal(err)
	}
	first, _ := h.dnat(t, TCP, long, vip, 0x02, all)
	for _, st := range steps {
		if err := h.Upsert(svc(st.states, st.weights)); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		seen := chosen(40)
		for be := range seen {
			if st.want == nil && be != (netip.AddrPort{}) || st.want != nil && !slicesContains(st.want, be) {
				t.Errorf("%s: a new connection went to %v; allowed %v (all: %v)", st.name, be, st.want, seen)
			}
		}
		if st.want != nil && len(seen) != len(st.want) {
			t.Errorf("%s: new connections used %v, want each of %v", st.name, seen, st.want)
		}
		if be, _ := h.dnat(t, TCP, long, vip, 0x10, all); be != first {
			t.Errorf("%s: the existing connection moved from %v to %v", st.name, first, be)
		}
	}
	if st, _ := h.Stats(); st.DropNoBackend != 40 {
		t.Errorf("%d packets counted as dropped for no backend, want 40", st.DropNoBackend)
	}
}

func slicesContains(s []netip.AddrPort, v netip.AddrPort) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestRemovedBackendReselects checks that a connection whose backend is
// removed moves to another (after the grace period frees it).
func TestRemovedBackendReselects(t *testing.T) {
	h := newHarness(t, Config{GracePeriod: time.Millisecond})
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	a, b := netip.MustParseAddrPort("192.0.2.50:80"), netip.MustParseAddrPort("192.0.2.51:80")
	if err := h.Upsert(Service{Frontend: vip, Protocol: TCP, Backends: []Backend{{Addr: a, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("192.0.2.7:40000")
	if be, _ := h.dnat(t, TCP, client, vip, 0x02, []netip.AddrPort{a}); be != a {
		t.Fatalf("went to %v", be)
	}
	if err := h.Upsert(Service{Frontend: vip, Protocol: TCP, Backends: []Backend{{Addr: b, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	if _, err := h.Reconcile(h.List()); err != nil { // no change: collects the garbage
		t.Fatal(err)
	}
	if be, _ := h.dnat(t, TCP, client, vip, 0x10, []netip.AddrPort{a, b}); be != b {
		t.Fatalf("after its backend was removed, the connection went to %v, want %v", be, b)
	}
	if st, _ := h.Stats(); st.Reselect != 1 {
		t.Errorf("Reselect %d, want 1", st.Reselect)
	}
}

// TestAffinity checks that a client keeps its backend across connections
// while affinity lasts, and that clients spread without it.
func TestAffinity(t *testing.T) {
	for _, algo := range []Algorithm{Random, Maglev} {
		t.Run(algo.String(), func(t *testing.T) {
			h := newHarness(t, Config{})
			vip := netip.MustParseAddrPort("10.96.0.10:80")
			var bes []netip.AddrPort
			var backends []Backend
			for i := range 8 {
				bes = append(bes, netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(50 + i)}), 80))
				backends = append(backends, Backend{Addr: bes[i], Weight: 1})
			}
			if err := h.Upsert(Service{Frontend: vip, Protocol: TCP, Backends: backends, Algorithm: algo, Affinity: time.Hour}); err != nil {
				t.Fatal(err)
			}
			for c := range 4 {
				client := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + c)})
				first, _ := h.dnat(t, TCP, netip.AddrPortFrom(client, 1), vip, 0x02, bes)
				for port := uint16(2); port < 40; port++ {
					if be, _ := h.dnat(t, TCP, netip.AddrPortFrom(client, port), vip, 0x02, bes); be != first {
						t.Fatalf("client %v: connection from port %d went to %v, not its affinity backend %v", client, port, be, first)
					}
				}
			}
			// Without affinity, one client's connections spread.
			s := h.List()[0]
			s.Affinity = 0
			if err := h.Upsert(s); err != nil {
				t.Fatal(err)
			}
			seen := map[netip.AddrPort]bool{}
			for port := uint16(100); port < 200; port++ {
				be, _ := h.dnat(t, TCP, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.100"), port), vip, 0x02, bes)
				seen[be] = true
			}
			if len(seen) < 4 {
				t.Errorf("without affinity 100 connections used only %d of 8 backends", len(seen))
			}
		})
	}
}

// TestSourceRanges checks that only clients within a service's source ranges reach it.
func TestSourceRanges(t *testing.T) {
	h := newHarness(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	be := netip.MustParseAddrPort("192.0.2.50:80")
	if err := h.Upsert(Service{Frontend: vip, Protocol: TCP, Backends: []Backend{{Addr: be, Weight: 1}},
		SourceRanges: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28"), netip.MustParsePrefix("198.51.100.7/32")}}); err != nil {
		t.Fatal(err)
	}
	for client, ok := range map[string]bool{"192.0.2.7:1": true, "192.0.2.15:1": true, "192.0.2.16:1": false, "198.51.100.7:1": true, "198.51.100.8:1": false} {
		_, got := h.dnat(t, TCP, netip.MustParseAddrPort(client), vip, 0x02, []netip.AddrPort{be})
		if got != ok {
			t.Errorf("client %s: admitted %v, want %v", client, got, ok)
		}
	}
	if st, _ := h.Stats(); st.DropSourceRange != 2 {
		t.Errorf("DropSourceRange %d, want 2", st.DropSourceRange)
	}
	// Dropping the ranges opens the service to all.
	s := h.List()[0]
	s.SourceRanges = nil
	if err := h.Upsert(s); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.dnat(t, TCP, netip.MustParseAddrPort("203.0.113.1:1"), vip, 0x02, []netip.AddrPort{be}); !ok {
		t.Error("without source ranges a client was dropped")
	}
}

// TestICMPErrorRevNAT checks that an ICMP error about a load-balanced
// connection (from the backend, or a router on the way) reaches the client
// translated back to the frontend, every checksum right.
func TestICMPErrorRevNAT(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			vip := netip.AddrPortFrom(fam.vip, 53)
			be := netip.AddrPortFrom(fam.bes[0], 5353)
			client := netip.AddrPortFrom(fam.client, 40000)
			if err := h.Upsert(Service{Frontend: vip, Protocol: UDP, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
				t.Fatal(err)
			}
			orig := testutil.Packet{Src: client.Addr(), Dst: vip.Addr(), Proto: layers.IPProtocolUDP, SrcPort: client.Port(), DstPort: vip.Port(), Payload: []byte("query")}
			_, natted := h.fromClient(t, testutil.BuildPacket(t, orig))
			quote := func(frame []byte) []byte { // the IP header and 8 bytes, as the sender quotes it
				hdr := 20
				if fam.vip.Is6() {
					hdr = 40
				}
				return frame[14 : 14+hdr+8]
			}
			proto, unreach := layers.IPProtocolICMPv4, uint8(3)
			if fam.vip.Is6() {
				proto, unreach = layers.IPProtocolICMPv6, 1
			}
			origFrame := testutil.BuildPacket(t, orig)
			for name, src := range map[string]netip.Addr{"from the backend": be.Addr(), "from a router": fam.bes[2]} {
				errPkt := testutil.Packet{Src: src, Dst: client.Addr(), Proto: proto, ICMPType: unreach, ICMPCode: 3, Payload: quote(natted)}
				verdict, out := h.toClient(t, testutil.BuildPacket(t, errPkt))
				want := errPkt
				want.Payload = quote(origFrame)
				if src == be.Addr() {
					want.Src = vip.Addr()
				}
				if verdict != tcxNext || !bytes.Equal(out, testutil.BuildPacket(t, want)) {
					t.Errorf("%s: verdict %#x\n got  %x\n want %x", name, verdict, out, testutil.BuildPacket(t, want))
				}
			}
			if st, _ := h.Stats(); st.RevNATICMP != 2 {
				t.Errorf("RevNATICMP %d, want 2", st.RevNATICMP)
			}
		})
	}
}
