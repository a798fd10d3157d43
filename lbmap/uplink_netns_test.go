package lbmap

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/testutil"
)

// North-south traffic through the uplink datapath. The topology, built per test:
//
//	client (LAN .1)     nodeA (LAN .2, datapath on eth0)     nodeB (LAN .3)
//	      \___________________ bridge (LAN) ___________________/
//	                    pod0 10.244.1.1                      pod0 10.244.2.1
//	                    backend A 10.244.1.2                 backend B 10.244.2.2
//
// LAN 192.0.2.0/24 and 2001:db8::/64; pods fd00:244:1::/64 and fd00:244:2::/64
// in IPv6. Each node routes the other's pod prefix via the other's LAN
// address; the client routes the LoadBalancer addresses via nodeA (what an
// L2 announcement would do). The servers answer "<own address> <peer
// address> <message>", so the client learns which backend served it and
// which address that backend saw.

type nsFam struct {
	name       string
	network    string // "4" or "6" suffix for net
	lan        netip.Prefix
	pods       [2]netip.Prefix
	lbVIP      netip.Addr // Cluster policy
	lbLocalVIP netip.Addr // Local policy
}

var nsFamilies = []nsFam{
	{"IPv4", "4", netip.MustParsePrefix("192.0.2.0/24"),
		[2]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")},
		netip.MustParseAddr("10.10.200.1"), netip.MustParseAddr("10.10.200.2")},
	{"IPv6", "6", netip.MustParsePrefix("2001:db8::/64"),
		[2]netip.Prefix{netip.MustParsePrefix("fd00:244:1::/64"), netip.MustParsePrefix("fd00:244:2::/64")},
		netip.MustParseAddr("fd00:200::1"), netip.MustParseAddr("fd00:200::2")},
}

func (f nsFam) host(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

func (f nsFam) client() netip.Addr       { return f.host(f.lan, 1) }
func (f nsFam) node(i int) netip.Addr    { return f.host(f.lan, 2+i) }
func (f nsFam) backend(i int) netip.Addr { return f.host(f.pods[i], 2) }
func (f nsFam) podGateway(i int) netip.Prefix {
	return netip.PrefixFrom(f.host(f.pods[i], 1), f.pods[i].Bits())
}

const (
	nsTCPPort      = 8080
	nsUDPPort      = 5353
	nsUDPPressure  = 5354
	nsNodePortTCP  = 30080
	nsNodePortUDP  = 30053
	nsNodePortPres = 30054
)

type uplinkRig struct {
	client   *testutil.NetNS
	nodes    [2]*testutil.NetNS
	backends [2]*testutil.NetNS
	ct       *conntrack.Table
	tbl      *Table
}

func newUplinkRig(t *testing.T, cfg Config) *uplinkRig {
	t.Helper()
	return newUplinkRigXDP(t, cfg, XDPOff)
}

// newUplinkRigXDP is newUplinkRig with the XDP program attached in mode
// (which it checks it got). For native mode, the bridge's port to nodeA gets
// an XDP program that passes everything (a veth drops the frames XDP_TX
// sends to a peer without one), and the senders whose packets XDP forwards
// compute their checksums: a veth hands native XDP the skbs of its peer as
// they are, with a partial checksum (CHECKSUM_PARTIAL) a NIC would have
// completed, which is lost with the skb.
func newUplinkRigXDP(t *testing.T, cfg Config, mode XDPMode) *uplinkRig {
	t.Helper()
	testutil.RequirePrivileged(t)
	top := testutil.NewTopology(t, testutil.TopologyConfig{Nodes: 3, Bridge: true})
	r := &uplinkRig{client: top.Nodes[0].NS, nodes: [2]*testutil.NetNS{top.Nodes[1].NS, top.Nodes[2].NS}}
	for i := range r.backends {
		r.backends[i] = testutil.NewNetNS(t)
	}
	if err := r.build(); err != nil {
		t.Fatal(err)
	}
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1 << 14})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ct.Close() })
	tbl, err := New(cfg, ct)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Close() })
	r.ct, r.tbl = ct, tbl
	if mode == XDPNative {
		passOnPeer(t, top.Switch, "node1")
		for _, ns := range []*testutil.NetNS{r.client, r.backends[1]} {
			if out, err := ns.Exec("ethtool", "-K", "eth0", "tx", "off"); err != nil {
				t.Fatalf("turn checksum offload off: %v: %s", err, out)
			}
		}
	}
	var up *Uplink
	err = r.nodes[0].Do(func() error {
		var err error
		up, err = tbl.AttachUplink(top.Nodes[1].Index, UplinkConfig{SNAT4: nsFamilies[0].node(0), SNAT6: nsFamilies[1].node(0), XDP: mode})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if up.XDPMode() != mode {
		t.Fatalf("XDP attached in mode %v, want %v", up.XDPMode(), mode)
	}

	srv := &nsServers{}
	t.Cleanup(srv.close)
	for i, ns := range r.backends {
		for _, fam := range nsFamilies {
			if err := srv.start(ns, fam.backend(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return r
}

func (r *uplinkRig) build() error {
	for _, ns := range append([]*testutil.NetNS{r.client}, append(r.nodes[:], r.backends[:]...)...) {
		if err := trafficSysctl(ns, "net/ipv6/conf/default/accept_dad", "0"); err != nil {
			return err
		}
	}
	for i, node := range r.nodes {
		if err := errors.Join(trafficSysctl(node, "net/ipv4/ip_forward", "1"),
			trafficSysctl(node, "net/ipv6/conf/all/forwarding", "1")); err != nil {
			return err
		}
		nh := node.Netlink()
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "pod0"
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(r.backends[i].Handle()))}
		if err := nh.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth pod0: %w", err)
		}
		var gws, addrs []netip.Prefix
		for _, fam := range nsFamilies {
			gws = append(gws, fam.podGateway(i))
			addrs = append(addrs, netip.PrefixFrom(fam.backend(i), fam.pods[i].Bits()))
		}
		if err := trafficConfigure(nh, "pod0", gws, nil); err != nil {
			return fmt.Errorf("configure pod0: %w", err)
		}
		if err := trafficConfigure(r.backends[i].Netlink(), "eth0", addrs, gws); err != nil {
			return fmt.Errorf("configure backend %d: %w", i, err)
		}
		eth0, err := nh.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, fam := range nsFamilies {
			other := fam.pods[1-i]
			if err := nh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: prefixNet(other), Gw: fam.node(1 - i).AsSlice()}); err != nil {
				return fmt.Errorf("add route to %v: %w", other, err)
			}
		}
	}
	ch := r.client.Netlink()
	eth0, err := ch.LinkByName("eth0")
	if err != nil {
		return err
	}
	for _, fam := range nsFamilies {
		for _, vip := range []netip.Addr{fam.lbVIP, fam.lbLocalVIP} {
			if err := ch.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: prefixNet(netip.PrefixFrom(vip, vip.BitLen())), Gw: fam.node(0).AsSlice()}); err != nil {
				return fmt.Errorf("add route to %v: %w", vip, err)
			}
		}
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// nsServers answer "<own address> <peer address> <message>" on TCP (per
// line) and UDP (per datagram).
type nsServers struct {
	mu      sync.Mutex
	closers []func() error
	wg      sync.WaitGroup
}

func (s *nsServers) start(ns *testutil.NetNS, addr netip.Addr) error {
	var ln *net.TCPListener
	var pcs []*net.UDPConn
	err := ns.Do(func() error {
		var err error
		if ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, nsTCPPort))); err != nil {
			return err
		}
		for _, port := range []uint16{nsUDPPort, nsUDPPressure} {
			pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listen in %s: %w", ns.Name(), err)
	}
	s.mu.Lock()
	s.closers = append(s.closers, ln.Close)
	for _, pc := range pcs {
		s.closers = append(s.closers, pc.Close)
	}
	s.mu.Unlock()
	s.wg.Add(1 + len(pcs))
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.closers = append(s.closers, c.Close)
			s.mu.Unlock()
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%v %v %s", trafficAddrPort(c.LocalAddr()), trafficAddrPort(c.RemoteAddr()), line)
				}
			}()
		}
	}()
	for _, pc := range pcs {
		go func() {
			defer s.wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
				pc.WriteToUDPAddrPort([]byte(fmt.Sprintf("%v %v %s", trafficAddrPort(pc.LocalAddr()), from, buf[:n])), from)
			}
		}()
	}
	return nil
}

func (s *nsServers) close() {
	s.mu.Lock()
	for _, c := range s.closers {
		c()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// nsAnswer is what a server said: who it is and whom it saw.
type nsAnswer struct{ backend, peer netip.AddrPort }

func nsParse(reply, sent string) (nsAnswer, error) {
	f := strings.SplitN(strings.TrimSuffix(reply, "\n"), " ", 3)
	if len(f) != 3 || f[2] != sent {
		return nsAnswer{}, fmt.Errorf("reply %q to %q", reply, sent)
	}
	be, err1 := netip.ParseAddrPort(f[0])
	peer, err2 := netip.ParseAddrPort(f[1])
	if err := errors.Join(err1, err2); err != nil {
		return nsAnswer{}, fmt.Errorf("reply %q: %w", reply, err)
	}
	return nsAnswer{be, peer}, nil
}

// tcp connects from the client to fe (the socket is connected to fe, so
// every reply comes from it), exchanges a line, and closes.
func (r *uplinkRig) tcp(fe netip.AddrPort, msg string) (nsAnswer, error) {
	var c net.Conn
	err := r.client.Do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: trafficWait}).Dial("tcp", fe.String())
		return err
	})
	if err != nil {
		return nsAnswer{}, fmt.Errorf("connect to %v: %w", fe, err)
	}
	defer c.Close()
	if got := trafficAddrPort(c.RemoteAddr()); got != fe {
		return nsAnswer{}, fmt.Errorf("connected to %v, want %v", got, fe)
	}
	c.SetDeadline(time.Now().Add(trafficWait))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return nsAnswer{}, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return nsAnswer{}, fmt.Errorf("read from %v: %w", fe, err)
	}
	return nsParse(line, msg)
}

// udp sends msg from the client's port sport to fe and checks the answer
// comes from fe.
func (r *uplinkRig) udp(fam nsFam, sport uint16, fe netip.AddrPort, msg string, wait time.Duration) (nsAnswer, error) {
	var pc *net.UDPConn
	err := r.client.Do(func() error {
		var err error
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.client(), sport)))
		return err
	})
	if err != nil {
		return nsAnswer{}, err
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(wait))
	if _, err := pc.WriteToUDPAddrPort([]byte(msg), fe); err != nil {
		return nsAnswer{}, err
	}
	buf := make([]byte, 2048)
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nsAnswer{}, fmt.Errorf("answer from %v: %w", fe, err)
	}
	if from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()); from != fe {
		return nsAnswer{}, fmt.Errorf("answer to %v came from %v", fe, from)
	}
	return nsParse(string(buf[:n]), msg)
}

func nsService(fam nsFam, fe netip.AddrPort, proto Protocol, typ Type, port uint16) Service {
	s := Service{Frontend: fe, Protocol: proto, Type: typ}
	for i := range 2 {
		s.Backends = append(s.Backends, Backend{Addr: netip.AddrPortFrom(fam.backend(i), port), Weight: 1, NodeLocal: i == 0})
	}
	return s
}

// TestUplinkTraffic sends real TCP and UDP from a client outside the nodes to
// a NodePort and a LoadBalancer address of nodeA: both nodes' backends
// serve, replies come from the frontend, the remote backend sees nodeA's
// address and the local one the client's; with traffic policy Local only the
// local backend serves, and sees the client's address.
func TestUplinkTraffic(t *testing.T) {
	r := newUplinkRig(t, Config{})
	for _, fam := range nsFamilies {
		t.Run(fam.name, func(t *testing.T) {
			np := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(fam.node(0), port) }
			lb := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(fam.lbVIP, port) }
			local := Service{Frontend: netip.AddrPortFrom(fam.lbLocalVIP, 80), Protocol: TCP, Type: LoadBalancer, TrafficPolicy: Local}
			local.Backends = nsService(fam, local.Frontend, TCP, LoadBalancer, nsTCPPort).Backends
			for _, s := range []Service{
				nsService(fam, np(nsNodePortTCP), TCP, NodePort, nsTCPPort),
				nsService(fam, np(nsNodePortUDP), UDP, NodePort, nsUDPPort),
				nsService(fam, lb(80), TCP, LoadBalancer, nsTCPPort),
				nsService(fam, lb(53), UDP, LoadBalancer, nsUDPPort),
				local,
			} {
				if err := r.tbl.Upsert(s); err != nil {
					t.Fatal(err)
				}
			}
			check := func(a nsAnswer, port uint16) {
				t.Helper()
				switch a.backend {
				case netip.AddrPortFrom(fam.backend(0), port):
					if a.peer.Addr() != fam.client() {
						t.Errorf("local backend saw %v, want the client %v", a.peer, fam.client())
					}
				case netip.AddrPortFrom(fam.backend(1), port):
					if a.peer.Addr() != fam.node(0) {
						t.Errorf("remote backend saw %v, want nodeA %v", a.peer, fam.node(0))
					}
				default:
					t.Errorf("served by %v", a.backend)
				}
			}
			for _, fe := range []netip.AddrPort{np(nsNodePortTCP), lb(80)} {
				seen := map[netip.AddrPort]int{}
				for i := 0; i < 40 && len(seen) < 2; i++ {
					a, err := r.tcp(fe, fmt.Sprintf("tcp %d", i))
					if err != nil {
						t.Fatal(err)
					}
					check(a, nsTCPPort)
					seen[a.backend]++
				}
				if len(seen) != 2 {
					t.Errorf("TCP to %v served by %v, want both nodes' backends", fe, seen)
				}
			}
			for _, fe := range []netip.AddrPort{np(nsNodePortUDP), lb(53)} {
				seen := map[netip.AddrPort]int{}
				for i := 0; i < 40 && len(seen) < 2; i++ {
					a, err := r.udp(fam, uint16(20000+i), fe, fmt.Sprintf("udp %d", i), trafficWait)
					if err != nil {
						t.Fatal(err)
					}
					check(a, nsUDPPort)
					seen[a.backend]++
				}
				if len(seen) != 2 {
					t.Errorf("UDP to %v served by %v, want both nodes' backends", fe, seen)
				}
			}
			for i := range 10 {
				a, err := r.tcp(local.Frontend, fmt.Sprintf("local %d", i))
				if err != nil {
					t.Fatal(err)
				}
				if a.backend.Addr() != fam.backend(0) || a.peer.Addr() != fam.client() {
					t.Fatalf("policy Local: served by %v, which saw %v; want %v seeing the client %v", a.backend, a.peer, fam.backend(0), fam.client())
				}
			}
		})
	}
	st, err := r.tbl.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.SNAT == 0 || st.RevSNAT == 0 || st.RevNAT == 0 {
		t.Errorf("stats %+v: want SNAT, RevSNAT and RevNAT", st)
	}
}

// TestUplinkTrafficNATPressure fills a 4-port NAT range with UDP flows to the
// remote backend: a fifth flow gets no answer (and is counted), and once
// conntrack has forgotten the flows, GCNAT reclaims their ports and the fifth
// flow is served.
func TestUplinkTrafficNATPressure(t *testing.T) {
	r := newUplinkRig(t, Config{NATPortMin: 63000, NATPortMax: 63003})
	fam := nsFamilies[0]
	fe := netip.AddrPortFrom(fam.node(0), nsNodePortPres)
	s := nsService(fam, fe, UDP, NodePort, nsUDPPressure)
	s.Backends = s.Backends[1:] // the remote one only
	if err := r.tbl.Upsert(s); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		a, err := r.udp(fam, uint16(21000+i), fe, "x", trafficWait)
		if err != nil {
			t.Fatal(err)
		}
		if a.peer.Addr() != fam.node(0) || a.peer.Port() < 63000 || a.peer.Port() > 63003 {
			t.Fatalf("remote backend saw %v, want nodeA on a port of 63000-63003", a.peer)
		}
	}
	if _, err := r.udp(fam, 21004, fe, "x", 500*time.Millisecond); err == nil {
		t.Fatal("a fifth flow was served with 4 NAT ports taken")
	}
	if st, _ := r.tbl.Stats(); st.DropNATFull == 0 {
		t.Errorf("DropNATFull %d, want > 0", st.DropNATFull)
	}
	time.Sleep(natMinAge)
	if _, err := r.ct.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, err := r.tbl.GCNAT(time.Now()); err != nil || n != 4 {
		t.Fatalf("GCNAT = %d, %v; want 4", n, err)
	}
	if _, err := r.udp(fam, 21004, fe, "x", trafficWait); err != nil {
		t.Fatalf("after GC: %v", err)
	}
}

// TestUplinkTrafficXDP sends real TCP and UDP from the client to NodePorts
// whose only backend is on nodeB, with the XDP program attached in native
// and in generic mode: the backend sees nodeA's address, the replies come
// from the frontend, and the XDP program's counters show it translated the
// connections both ways (so the tc program did not).
func TestUplinkTrafficXDP(t *testing.T) {
	for _, mode := range []XDPMode{XDPNative, XDPGeneric} {
		t.Run(mode.String(), func(t *testing.T) {
			r := newUplinkRigXDP(t, Config{}, mode)
			for _, fam := range nsFamilies {
				np := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(fam.node(0), port) }
				for _, s := range []Service{
					nsService(fam, np(nsNodePortTCP), TCP, NodePort, nsTCPPort),
					nsService(fam, np(nsNodePortUDP), UDP, NodePort, nsUDPPort),
				} {
					s.Backends = s.Backends[1:] // the remote one only
					if err := r.tbl.Upsert(s); err != nil {
						t.Fatal(err)
					}
				}
				remote := func(a nsAnswer, port uint16) {
					t.Helper()
					if a.backend != netip.AddrPortFrom(fam.backend(1), port) || a.peer.Addr() != fam.node(0) {
						t.Errorf("%s: served by %v, which saw %v; want %v seeing nodeA %v", fam.name, a.backend, a.peer, fam.backend(1), fam.node(0))
					}
				}
				for i := range 5 {
					a, err := r.tcp(np(nsNodePortTCP), fmt.Sprintf("tcp %d", i))
					if err != nil {
						t.Fatalf("%s: %v", fam.name, err)
					}
					remote(a, nsTCPPort)
					a, err = r.udp(fam, uint16(20000+i), np(nsNodePortUDP), fmt.Sprintf("udp %d", i), trafficWait)
					if err != nil {
						t.Fatalf("%s: %v", fam.name, err)
					}
					remote(a, nsUDPPort)
				}
			}
			st, err := r.tbl.Stats()
			if err != nil {
				t.Fatal(err)
			}
			// At least a SYN, its ACK and a request per TCP connection, a datagram per UDP flow; as many back.
			if st.XDPForward < 40 || st.XDPReverse < 40 {
				t.Errorf("stats %+v: want the XDP program to have forwarded (XDPForward, XDPReverse) both ways", st)
			}
			t.Logf("%v: XDPForward %d of SNAT %d, XDPReverse %d of RevSNAT %d", mode, st.XDPForward, st.SNAT, st.XDPReverse, st.RevSNAT)
		})
	}
}

// passOnPeer attaches an XDP program that passes every frame to the
// interface name in ns, in native mode, for as long as the test runs.
func passOnPeer(t *testing.T, ns *testutil.NetNS, name string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	err = ns.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPDriverMode})
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	})
	if err != nil {
		t.Fatalf("attach XDP to %s: %v", name, err)
	}
}
