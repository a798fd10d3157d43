package lbmap

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/testutil"
)

// Real traffic through the attached datapath. The topology, built per test:
//
//	client ns            node ns (routes, ip_forward)          backend ns
//	eth0 192.0.2.2  ---  cli0 192.0.2.1     (datapath here)
//	                     be0  198.51.100.1  ---  eth0 198.51.100.2 (backend 0)
//	                     be1  203.0.113.1   ---  eth0 203.0.113.2  (backend 1)
//
// and the same in IPv6 (2001:db8:c::/64, 2001:db8:b0::/64, 2001:db8:b1::/64).
// The client's default route points to the node. The service addresses
// (10.96.0.10, fd00:96::10) exist nowhere: the client sends to them by its
// default route, and the node's tc ingress on cli0 translates them to a
// backend before routing. Every backend runs echo servers on several ports
// that answer with their own address, so the client learns which backend
// served it.

// trafficWait bounds every single wait for the network.
const trafficWait = 5 * time.Second

// Ports: the services' frontends, and the backends' servers (each backend
// namespace listens on all of them, TCP and UDP, in both families).
const (
	trafficTCPFrontend = 80
	trafficUDPFrontend = 53
)

var (
	trafficTCPPorts = []uint16{8080}
	trafficUDPPorts = []uint16{5353, 5354, 5355}
)

// trafficFam is one IP family's addressing.
type trafficFam struct {
	name     string
	v6       bool
	vip      netip.Addr    // the ClusterIP: configured nowhere
	client   netip.Prefix  // the client's eth0
	gateway  netip.Prefix  // the node's cli0
	backends [2]netip.Addr // the backends' eth0 (the node's side is .1 / ::1 of the same prefix)
	bits     int
}

var trafficFamilies = []trafficFam{
	{
		name: "IPv4", vip: netip.MustParseAddr("10.96.0.10"),
		client: netip.MustParsePrefix("192.0.2.2/24"), gateway: netip.MustParsePrefix("192.0.2.1/24"),
		backends: [2]netip.Addr{netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("203.0.113.2")},
		bits:     24,
	},
	{
		name: "IPv6", v6: true, vip: netip.MustParseAddr("fd00:96::10"),
		client: netip.MustParsePrefix("2001:db8:c::2/64"), gateway: netip.MustParsePrefix("2001:db8:c::1/64"),
		backends: [2]netip.Addr{netip.MustParseAddr("2001:db8:b0::2"), netip.MustParseAddr("2001:db8:b1::2")},
		bits:     64,
	},
}

// network returns proto ("tcp", "udp") with the family's digit.
func (f trafficFam) network(proto string) string {
	if f.v6 {
		return proto + "6"
	}
	return proto + "4"
}

// backend is backend i's server on port.
func (f trafficFam) backend(i int, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(f.backends[i], port)
}

func (f trafficFam) tcpVIP() netip.AddrPort { return netip.AddrPortFrom(f.vip, trafficTCPFrontend) }
func (f trafficFam) udpVIP() netip.AddrPort { return netip.AddrPortFrom(f.vip, trafficUDPFrontend) }

// trafficEachFamily runs fn for IPv4 and IPv6 in parallel subtests.
func trafficEachFamily(t *testing.T, fn func(t *testing.T, fam trafficFam)) {
	t.Parallel()
	for _, fam := range trafficFamilies {
		t.Run(fam.name, func(t *testing.T) {
			t.Parallel()
			fn(t, fam)
		})
	}
}

// trafficRig is the topology with a Table whose datapath is attached to the
// node's cli0, and echo servers running in both backend namespaces.
type trafficRig struct {
	node, client *testutil.NetNS
	backends     [2]*testutil.NetNS
	ct           *conntrack.Table
	tbl          *Table
}

// newTrafficRig builds everything; the test's cleanup removes it.
func newTrafficRig(t *testing.T, cfg Config) *trafficRig {
	t.Helper()
	testutil.RequirePrivileged(t)
	r := &trafficRig{node: testutil.NewNetNS(t), client: testutil.NewNetNS(t)}
	for i := range r.backends {
		r.backends[i] = testutil.NewNetNS(t)
	}
	if err := r.build(); err != nil {
		t.Fatal(err)
	}

	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ct.Close(); err != nil {
			t.Error(err)
		}
	})
	tbl, err := New(cfg, ct)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tbl.Close(); err != nil {
			t.Error(err)
		}
	})
	r.ct, r.tbl = ct, tbl

	cli0, err := r.node.Netlink().LinkByName("cli0")
	if err != nil {
		t.Fatal(err)
	}
	var dp *Datapath
	err = r.node.Do(func() error {
		var err error
		dp, err = tbl.Attach(cli0.Attrs().Index)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Error(err)
		}
	})

	srv := &trafficServers{conns: map[net.Conn]bool{}}
	t.Cleanup(func() {
		if err := srv.close(); err != nil {
			t.Error(err)
		}
	})
	for i, ns := range r.backends {
		for _, fam := range trafficFamilies {
			if err := srv.start(ns, fam, fam.backends[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	return r
}

// trafficSysctl writes a sysctl (a path under /proc/sys) inside ns.
func trafficSysctl(ns *testutil.NetNS, path, value string) error {
	err := ns.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0)
	})
	if err != nil {
		return fmt.Errorf("set sysctl %s in %s: %w", path, ns.Name(), err)
	}
	return nil
}

// build creates the links, addresses and routes, and turns forwarding on in
// the node.
func (r *trafficRig) build() error {
	// IPv6 addresses usable at once, link-local ones included: no DAD in any
	// namespace (set before the links exist, so they inherit it).
	for _, ns := range []*testutil.NetNS{r.node, r.client, r.backends[0], r.backends[1]} {
		if err := trafficSysctl(ns, "net/ipv6/conf/default/accept_dad", "0"); err != nil {
			return err
		}
	}
	gw := func(p netip.Prefix) netip.Prefix { // .1 or ::1 of p
		return netip.PrefixFrom(p.Masked().Addr().Next(), p.Bits())
	}
	v4, v6 := trafficFamilies[0], trafficFamilies[1]
	legs := []struct {
		name  string
		peer  *testutil.NetNS
		addrs []netip.Prefix // the peer's; the node takes .1 / ::1
	}{
		{"cli0", r.client, []netip.Prefix{v4.client, v6.client}},
		{"be0", r.backends[0], []netip.Prefix{netip.PrefixFrom(v4.backends[0], v4.bits), netip.PrefixFrom(v6.backends[0], v6.bits)}},
		{"be1", r.backends[1], []netip.Prefix{netip.PrefixFrom(v4.backends[1], v4.bits), netip.PrefixFrom(v6.backends[1], v6.bits)}},
	}
	nh := r.node.Netlink()
	for _, leg := range legs {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = leg.name
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(leg.peer.Handle()))}
		if err := nh.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", leg.name, err)
		}
		var nodeAddrs []netip.Prefix
		for _, a := range leg.addrs {
			nodeAddrs = append(nodeAddrs, gw(a))
		}
		if err := trafficConfigure(nh, leg.name, nodeAddrs, nil); err != nil {
			return fmt.Errorf("configure %s in the node: %w", leg.name, err)
		}
		if err := trafficConfigure(leg.peer.Netlink(), "eth0", leg.addrs, nodeAddrs); err != nil {
			return fmt.Errorf("configure eth0 in %s: %w", leg.peer.Name(), err)
		}
	}
	if err := trafficSysctl(r.node, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	return trafficSysctl(r.node, "net/ipv6/conf/all/forwarding", "1")
}

// trafficConfigure sets lo and the link name up, adds addrs to the link and,
// for each gateway, a default route through it.
func trafficConfigure(h *netlink.Handle, name string, addrs []netip.Prefix, gateways []netip.Prefix) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return err
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %v: %w", a, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return err
	}
	for _, g := range gateways {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: g.Addr().AsSlice()}); err != nil {
			return fmt.Errorf("add default route via %v: %w", g.Addr(), err)
		}
	}
	return nil
}

// trafficServers are the echo servers of the backends. A TCP server answers
// every line with "<its own address:port> <the line>"; a UDP server every
// datagram with "<its own address:port> <the datagram>".
type trafficServers struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	closers []io.Closer
	conns   map[net.Conn]bool
}

// start listens in ns on addr, on every port of trafficTCPPorts and trafficUDPPorts.
func (s *trafficServers) start(ns *testutil.NetNS, fam trafficFam, addr netip.Addr) error {
	var lns []*net.TCPListener
	var pcs []*net.UDPConn
	err := ns.Do(func() error {
		for _, port := range trafficTCPPorts {
			ln, err := net.ListenTCP(fam.network("tcp"), net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		for _, port := range trafficUDPPorts {
			pc, err := net.ListenUDP(fam.network("udp"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
		}
		return nil
	})
	s.mu.Lock()
	for _, ln := range lns {
		s.closers = append(s.closers, ln)
	}
	for _, pc := range pcs {
		s.closers = append(s.closers, pc)
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("listen in %s: %w", ns.Name(), err)
	}
	for _, ln := range lns {
		s.wg.Add(1)
		go s.serveTCP(ln)
	}
	for _, pc := range pcs {
		s.wg.Add(1)
		go s.serveUDP(pc)
	}
	return nil
}

func (s *trafficServers) serveTCP(ln *net.TCPListener) {
	defer s.wg.Done()
	id := trafficAddrPort(ln.Addr()).String()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.conns == nil { // closing
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := io.WriteString(c, id+" "+line); err != nil {
					return
				}
			}
		}()
	}
}

func (s *trafficServers) serveUDP(pc *net.UDPConn) {
	defer s.wg.Done()
	id := []byte(trafficAddrPort(pc.LocalAddr()).String() + " ")
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed
		}
		pc.WriteToUDPAddrPort(append(slices.Clip(id), buf[:n]...), from)
	}
}

// close stops every server and waits for their goroutines, at most trafficWait.
func (s *trafficServers) close() error {
	s.mu.Lock()
	for _, c := range s.closers {
		c.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(trafficWait):
		return errors.New("echo servers still running after close")
	}
}

// trafficAddrPort converts a socket address to a netip.AddrPort without the
// IPv4-mapped form.
func trafficAddrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// trafficParse splits an echo reply into the server's address and the echoed
// message, checking the message is sent.
func trafficParse(reply, sent string) (netip.AddrPort, error) {
	id, msg, ok := strings.Cut(reply, " ")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("reply %.40q has no server address", reply)
	}
	be, err := netip.ParseAddrPort(id)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reply %.40q: %w", reply, err)
	}
	if msg != sent {
		return be, fmt.Errorf("%v echoed %d bytes (%.20q...), want the %d sent (%.20q...)", be, len(msg), msg, len(sent), sent)
	}
	return be, nil
}

// trafficConn is a TCP connection from the client to a service.
type trafficConn struct{ *net.TCPConn }

// dialTCP connects from the client namespace to vip. The connection's remote
// address is vip: every reply must come from it, or the client's kernel
// would reset the connection.
func (r *trafficRig) dialTCP(fam trafficFam, vip netip.AddrPort) (trafficConn, error) {
	var c *net.TCPConn
	err := r.client.Do(func() error {
		d := net.Dialer{Timeout: trafficWait}
		conn, err := d.Dial(fam.network("tcp"), vip.String())
		if err != nil {
			return err
		}
		c = conn.(*net.TCPConn)
		return nil
	})
	if err != nil {
		return trafficConn{}, fmt.Errorf("connect to %v: %w", vip, err)
	}
	if got := trafficAddrPort(c.RemoteAddr()); got != vip {
		c.Close()
		return trafficConn{}, fmt.Errorf("connected to %v, want %v", got, vip)
	}
	return trafficConn{c}, nil
}

// exchange sends msg (without a newline) and returns the backend that echoed it.
func (c trafficConn) exchange(msg string) (netip.AddrPort, error) {
	c.SetDeadline(time.Now().Add(trafficWait))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return netip.AddrPort{}, fmt.Errorf("send on %v: %w", c.LocalAddr(), err)
	}
	// A reply is one line, and nothing follows it before the next message.
	var sb strings.Builder
	buf := make([]byte, 64*1024)
	for !strings.HasSuffix(sb.String(), "\n") {
		n, err := c.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("read reply on %v after %d bytes: %w", c.LocalAddr(), sb.Len(), err)
		}
	}
	return trafficParse(strings.TrimSuffix(sb.String(), "\n"), msg)
}

// tcpOnce makes one short connection to vip, exchanges msg and closes.
func (r *trafficRig) tcpOnce(fam trafficFam, vip netip.AddrPort, msg string) (netip.AddrPort, error) {
	c, err := r.dialTCP(fam, vip)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	return c.exchange(msg)
}

// udpOnce sends msg from the client's port sport (0: an ephemeral port) to
// vip on an unconnected socket and returns the backend that answered,
// checking the answer came from vip.
func (r *trafficRig) udpOnce(fam trafficFam, sport uint16, vip netip.AddrPort, msg string) (netip.AddrPort, error) {
	var pc *net.UDPConn
	err := r.client.Do(func() error {
		var err error
		pc, err = net.ListenUDP(fam.network("udp"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.client.Addr(), sport)))
		return err
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("open UDP socket on port %d: %w", sport, err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(trafficWait))
	if _, err := pc.WriteToUDPAddrPort([]byte(msg), vip); err != nil {
		return netip.AddrPort{}, fmt.Errorf("send to %v: %w", vip, err)
	}
	buf := make([]byte, 65536)
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("answer to %v from %v: %w", vip, pc.LocalAddr(), err)
	}
	if from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()); from != vip {
		return netip.AddrPort{}, fmt.Errorf("answer to %v came from %v", vip, from)
	}
	return trafficParse(string(buf[:n]), msg)
}

// flush empties the conntrack table, so the next packet of every flow selects
// its backend afresh.
func (r *trafficRig) flush(t *testing.T) {
	t.Helper()
	if _, err := r.ct.Flush(); err != nil {
		t.Fatal(err)
	}
}

// trafficService is a service of fam to the backends' servers on port.
func trafficService(fam trafficFam, proto Protocol, alg Algorithm, port uint16, weights ...uint16) Service {
	s := Service{Frontend: fam.tcpVIP(), Protocol: proto, Algorithm: alg}
	if proto == UDP {
		s.Frontend = fam.udpVIP()
	}
	for i, w := range weights {
		s.Backends = append(s.Backends, Backend{Addr: fam.backend(i, port), Weight: w})
	}
	return s
}

// stats reads the datapath's counters.
func (r *trafficRig) stats(t *testing.T) Stats {
	t.Helper()
	st, err := r.tbl.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestTrafficEcho sends real TCP connections and UDP exchanges from the
// client to the ClusterIP: every one is served by a backend of the service,
// both backends serve, replies come from the ClusterIP (the TCP socket is
// connected to it; the UDP socket checks the answer's source), and a large
// message (many segments both ways) arrives intact.
func TestTrafficEcho(t *testing.T) {
	trafficEachFamily(t, func(t *testing.T, fam trafficFam) {
		r := newTrafficRig(t, Config{})
		tcp := trafficService(fam, TCP, Random, trafficTCPPorts[0], 1, 1)
		udp := trafficService(fam, UDP, Random, trafficUDPPorts[0], 1, 1)
		if _, err := r.tbl.Reconcile([]Service{tcp, udp}); err != nil {
			t.Fatal(err)
		}

		const n = 40
		for _, c := range []struct {
			svc  Service
			once func(i int) (netip.AddrPort, error)
		}{
			{tcp, func(i int) (netip.AddrPort, error) { return r.tcpOnce(fam, tcp.Frontend, fmt.Sprintf("hello %d", i)) }},
			{udp, func(i int) (netip.AddrPort, error) {
				return r.udpOnce(fam, 0, udp.Frontend, fmt.Sprintf("hello %d", i))
			}},
		} {
			served := map[netip.AddrPort]int{}
			for i := range n {
				be, err := c.once(i)
				if err != nil {
					t.Fatalf("%v exchange %d: %v", c.svc.Key(), i, err)
				}
				served[be]++
			}
			for _, b := range c.svc.Backends {
				if served[b.Addr] == 0 {
					t.Errorf("%v: backend %v served none of %d (served: %v)", c.svc.Key(), b.Addr, n, served)
				}
				delete(served, b.Addr)
			}
			if len(served) > 0 {
				t.Errorf("%v: served by servers that are not its backends: %v", c.svc.Key(), served)
			}
		}

		// One large message: many full-size segments (and GSO packets) both ways.
		big := strings.Repeat("netblocks lbmap ", 16*1024) // 256 KiB
		be, err := r.tcpOnce(fam, tcp.Frontend, big)
		if err != nil {
			t.Fatalf("large echo: %v", err)
		}
		if be != tcp.Backends[0].Addr && be != tcp.Backends[1].Addr {
			t.Errorf("large echo served by %v, not a backend", be)
		}

		st := r.stats(t)
		t.Logf("%+v", st)
		if st.DNAT == 0 || st.RevNAT == 0 {
			t.Errorf("stats %+v: want DNAT and RevNAT counted", st)
		}
		if st.DropNoBackend != 0 || st.DropSourceRange != 0 || st.Reselect != 0 {
			t.Errorf("stats %+v: want no drops and no reselections", st)
		}
	})
}

// TestTrafficDistribution opens n TCP connections (each from a new ephemeral
// port) per case and checks each backend's share of them against its weight:
// within 4 binomial standard deviations, sqrt(p(1-p)/n) (±6.3% at p=0.5,
// ±5.5% at p=0.25 for n=1000), which a correct balancer misses about once in
// 16,000 checks.
func TestTrafficDistribution(t *testing.T) {
	trafficEachFamily(t, func(t *testing.T, fam trafficFam) {
		const n = 1000
		r := newTrafficRig(t, Config{})
		for _, c := range []struct {
			alg     Algorithm
			weights []uint16
		}{
			{Random, []uint16{1, 1}},
			{Random, []uint16{1, 3}},
			{Maglev, []uint16{1, 1}},
			{Maglev, []uint16{1, 3}},
		} {
			name := fmt.Sprintf("%v-%d:%d", c.alg, c.weights[0], c.weights[1])
			t.Run(name, func(t *testing.T) {
				svc := trafficService(fam, TCP, c.alg, trafficTCPPorts[0], c.weights...)
				if err := r.tbl.Upsert(svc); err != nil {
					t.Fatal(err)
				}
				r.flush(t)
				served := map[netip.AddrPort]int{}
				failed := 0
				for i := range n {
					be, err := r.tcpOnce(fam, svc.Frontend, fmt.Sprintf("%s %d", name, i))
					if err != nil {
						if failed++; failed <= 5 {
							t.Errorf("connection %d: %v", i, err)
						}
						if failed == 20 {
							t.Fatalf("%d connections failed; giving up", failed)
						}
						continue
					}
					served[be]++
				}
				if failed > 0 {
					t.Fatalf("%d of %d connections failed", failed, n)
				}
				total := 0
				for _, w := range c.weights {
					total += int(w)
				}
				for i, w := range c.weights {
					be := fam.backend(i, trafficTCPPorts[0])
					p := float64(w) / float64(total)
					share := float64(served[be]) / n
					tol := 4 * math.Sqrt(p*(1-p)/n)
					t.Logf("%v: %d of %d connections (%.1f%%), want %.1f%% ± %.1f%%", be, served[be], n, 100*share, 100*p, 100*tol)
					if math.Abs(share-p) > tol {
						t.Errorf("%v served %.1f%% of the connections, want %.1f%% ± %.1f%%", be, 100*share, 100*p, 100*tol)
					}
					delete(served, be)
				}
				if len(served) > 0 {
					t.Errorf("served by servers that are not backends: %v", served)
				}
			})
		}
	})
}

// TestTrafficMaglevDisruption sends m UDP flows, each from a fixed client
// port, to a Maglev service of five backends, and records each flow's
// backend; conntrack is flushed between runs so every run selects afresh.
//   - The same flows again select the same backends (Maglev is a function of
//     the tuple and the backend set).
//   - With one backend removed, all its flows move and at most 5% of the
//     other flows do (Maglev's minimal disruption; a modulo hash would move
//     ~80%).
//   - Without a flush, established flows keep their backends when the backend
//     comes back (conntrack wins over a changed table); after a flush the
//     original assignment returns exactly.
func TestTrafficMaglevDisruption(t *testing.T) {
	trafficEachFamily(t, func(t *testing.T, fam trafficFam) {
		const (
			m        = 500
			basePort = 20000
		)
		r := newTrafficRig(t, Config{})
		svc := Service{Frontend: fam.udpVIP(), Protocol: UDP, Algorithm: Maglev}
		for _, b := range []netip.AddrPort{
			fam.backend(0, trafficUDPPorts[0]), fam.backend(0, trafficUDPPorts[1]), fam.backend(0, trafficUDPPorts[2]),
			fam.backend(1, trafficUDPPorts[0]), fam.backend(1, trafficUDPPorts[1]),
		} {
			svc.Backends = append(svc.Backends, Backend{Addr: b, Weight: 1})
		}
		removed := svc.Backends[1].Addr
		without := svc
		without.Backends = slices.DeleteFunc(slices.Clone(svc.Backends), func(b Backend) bool { return b.Addr == removed })

		runFlows := func(what string) []netip.AddrPort {
			t.Helper()
			got := make([]netip.AddrPort, m)
			for i := range m {
				be, err := r.udpOnce(fam, uint16(basePort+i), svc.Frontend, fmt.Sprintf("flow %d", i))
				if err != nil {
					t.Fatalf("%s: flow %d: %v", what, i, err)
				}
				got[i] = be
			}
			return got
		}
		shares := func(got []netip.AddrPort) map[netip.AddrPort]int {
			c := map[netip.AddrPort]int{}
			for _, be := range got {
				c[be]++
			}
			return c
		}

		if err := r.tbl.Upsert(svc); err != nil {
			t.Fatal(err)
		}
		before := runFlows("five backends")
		t.Logf("five backends: flows per backend %v", shares(before))
		for be, c := range shares(before) {
			if !slices.ContainsFunc(svc.Backends, func(b Backend) bool { return b.Addr == be }) {
				t.Fatalf("%d flows served by %v, not a backend", c, be)
			}
		}
		r.flush(t)
		if again := runFlows("five backends again"); !slices.Equal(again, before) {
			t.Errorf("the same flows selected differently the second time: %d of %d differ", trafficDiffer(before, again), m)
		}

		if err := r.tbl.Upsert(without); err != nil {
			t.Fatal(err)
		}
		r.flush(t)
		after := runFlows("four backends")
		t.Logf("four backends: flows per backend %v", shares(after))
		onRemoved, survivors, moved := 0, 0, 0
		for i := range m {
			switch {
			case after[i] == removed:
				t.Errorf("flow %d still served by the removed backend %v", i, removed)
			case before[i] == removed:
				onRemoved++
			default:
				survivors++
				if after[i] != before[i] {
					moved++
				}
			}
		}
		frac := float64(moved) / float64(survivors)
		t.Logf("removing 1 of 5 backends: all %d flows of the removed backend moved; %d of %d other flows (%.2f%%) moved",
			onRemoved, moved, survivors, 100*frac)
		if frac > 0.05 {
			t.Errorf("%d of %d flows whose backend stayed moved (%.2f%%), want at most 5%%", moved, survivors, 100*frac)
		}
		if onRemoved == 0 {
			t.Errorf("no flow was on the removed backend %v before: the test proves nothing", removed)
		}

		// The backend comes back. Without a flush, conntrack keeps every
		// flow where it is.
		if err := r.tbl.Upsert(svc); err != nil {
			t.Fatal(err)
		}
		if kept := runFlows("five backends, conntrack kept"); !slices.Equal(kept, after) {
			t.Errorf("with conntrack entries kept, %d of %d flows changed backend when one was added", trafficDiffer(after, kept), m)
		}
		r.flush(t)
		if restored := runFlows("five backends restored"); !slices.Equal(restored, before) {
			t.Errorf("with the backend restored, %d of %d flows differ from the original assignment", trafficDiffer(before, restored), m)
		}
		if st := r.stats(t); st.DropNoBackend != 0 || st.Reselect != 0 {
			t.Errorf("stats %+v: want no drops and no reselections", st)
		}
	})
}

// trafficDiffer counts the positions where a and b differ.
func trafficDiffer(a, b []netip.AddrPort) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// trafficFailures collects the failures of goroutines, for the test goroutine to report.
type trafficFailures struct {
	mu   sync.Mutex
	n    int
	errs []error // the first few
}

func (f *trafficFailures) add(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if len(f.errs) < 10 {
		f.errs = append(f.errs, err)
	}
}

func (f *trafficFailures) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// trafficOthers are the services a reconcile loop churns beside the tested
// ones: present or not, and each with a backend set drawn from a pool that
// includes the tested backends (so a backend's references are shared).
type trafficOthers struct {
	rng     *rand.Rand
	svcs    []Service
	present []bool
	pool    map[Protocol][2][]netip.AddrPort // per protocol, per family (IPv4, IPv6)
}

func newTrafficOthers(n int, seed uint64) *trafficOthers {
	o := &trafficOthers{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), pool: map[Protocol][2][]netip.AddrPort{}}
	for _, proto := range []Protocol{TCP, UDP} {
		var pools [2][]netip.AddrPort
		for fi, fam := range trafficFamilies {
			port := trafficTCPPorts[0]
			if proto == UDP {
				port = trafficUDPPorts[0]
			}
			pools[fi] = append(pools[fi], fam.backend(0, port), fam.backend(1, port)) // the tested ones
			for i := range 30 {
				var a netip.Addr
				if fam.v6 {
					a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xb0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, byte(i)})
				} else {
					a = netip.AddrFrom4([4]byte{198, 51, 100, byte(100 + i)})
				}
				pools[fi] = append(pools[fi], netip.AddrPortFrom(a, port))
			}
		}
		o.pool[proto] = pools
	}
	for i := range n {
		fi := i % 2
		var a netip.Addr
		if fi == 1 {
			a = netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x97, 14: byte(i >> 8), 15: byte(i)})
		} else {
			a = netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)})
		}
		proto := TCP
		if i%4 >= 2 {
			proto = UDP
		}
		s := Service{Frontend: netip.AddrPortFrom(a, 80), Protocol: proto}
		o.reshape(&s, fi)
		o.svcs = append(o.svcs, s)
		o.present = append(o.present, true)
	}
	return o
}

// reshape gives s a new algorithm and backend set, possibly empty.
func (o *trafficOthers) reshape(s *Service, fi int) {
	pool := o.pool[s.Protocol][fi]
	s.Algorithm, s.MaglevTableSize = Random, 0
	if o.rng.IntN(8) == 0 {
		s.Algorithm, s.MaglevTableSize = Maglev, MaglevMinTableSize
	}
	s.Backends = nil
	k := o.rng.IntN(6) // 0 to 5 backends
	for _, j := range o.rng.Perm(len(pool))[:k] {
		s.Backends = append(s.Backends, Backend{Addr: pool[j], Weight: uint16(1 + o.rng.IntN(3)), State: BackendState(o.rng.IntN(2))})
	}
}

// round changes some services and returns the present ones.
func (o *trafficOthers) round() []Service {
	for range 8 {
		i := o.rng.IntN(len(o.svcs))
		switch o.rng.IntN(4) {
		case 0:
			o.present[i] = !o.present[i]
		default:
			o.reshape(&o.svcs[i], i%2)
		}
	}
	var out []Service
	for i, s := range o.svcs {
		if o.present[i] {
			out = append(out, s)
		}
	}
	return out
}

// TestTrafficReconcileUnderLoad keeps 20 TCP connections open (10 per
// family) and a loop of short TCP connections and UDP exchanges running, while
// another goroutine calls Reconcile with ~100 services, at least 2000 times
// and for at least 3 s (the traffic runs as long): the
// tested services (TCP and UDP, both families) keep their two backends, but
// every ~10th round their backends come in another order with other weights
// (one of them sometimes 0) or another algorithm; the other services are
// added, deleted and changed every round, sharing backends with the tested
// ones. No connection or exchange may fail, every long-lived connection
// keeps the backend it started with, nothing is dropped or reselected, and
// no ICMP error comes back.
func TestTrafficReconcileUnderLoad(t *testing.T) {
	t.Parallel()
	const (
		minRounds   = 2000
		longLived   = 20
		minDuration = 3 * time.Second
		maxDuration = 3 * time.Minute
		seed        = 1
	)
	// Maglev sets of 1021 slots: a set of the default 16381 costs ~18 ms to
	// write and later collect (one hash-map entry a slot; see
	// BenchmarkUpsertOne/maglev), which would make the churn, not the
	// traffic, the test's length. Garbage lives a
	// second: the replaced sets of many rounds need room.
	r := newTrafficRig(t, Config{MaxSlots: 1 << 22, MaglevTableSize: 1021})

	rng := rand.New(rand.NewPCG(seed, 2))
	tested := func(shuffle bool) []Service {
		var out []Service
		for _, fam := range trafficFamilies {
			for _, proto := range []Protocol{TCP, UDP} {
				port := trafficTCPPorts[0]
				if proto == UDP {
					port = trafficUDPPorts[0]
				}
				s := trafficService(fam, proto, Random, port, 1, 1)
				if shuffle {
					for i := range s.Backends {
						s.Backends[i].Weight = uint16(rng.IntN(4)) // 0 to 3
					}
					if s.Backends[0].Weight == 0 && s.Backends[1].Weight == 0 {
						s.Backends[rng.IntN(2)].Weight = 1
					}
					rng.Shuffle(len(s.Backends), func(i, j int) { s.Backends[i], s.Backends[j] = s.Backends[j], s.Backends[i] })
					if rng.IntN(3) == 0 {
						s.Algorithm = Maglev
					}
				}
				out = append(out, s)
			}
		}
		return out
	}
	others := newTrafficOthers(96, seed)
	if _, err := r.tbl.Reconcile(append(tested(false), others.round()...)); err != nil {
		t.Fatal(err)
	}
	valid := map[netip.AddrPort]bool{}
	for _, s := range tested(false) {
		for _, b := range s.Backends {
			valid[b.Addr] = true
		}
	}

	// The long-lived connections, and the backend each started with.
	type longConn struct {
		trafficConn
		backend netip.AddrPort
	}
	var conns []longConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range longLived {
		fam := trafficFamilies[i%2]
		c, err := r.dialTCP(fam, fam.tcpVIP())
		if err != nil {
			t.Fatal(err)
		}
		be, err := c.exchange("hello")
		if err != nil {
			c.Close()
			t.Fatal(err)
		}
		conns = append(conns, longConn{c, be})
	}
	perBackend := map[netip.AddrPort]int{}
	for _, c := range conns {
		perBackend[c.backend]++
	}
	t.Logf("long-lived connections per backend: %v", perBackend)

	var (
		wg                     sync.WaitGroup
		stop                   = make(chan struct{})
		reconciled             = make(chan struct{})
		fails, moves, recFails trafficFailures
		mu                     sync.Mutex
		short                  = map[string]int{} // exchanges done, by kind
		longRounds             int
	)
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}

	// New connections and exchanges.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stopped(); i++ {
			fam := trafficFamilies[i%2]
			kind := fam.name + "/TCP"
			var be netip.AddrPort
			var err error
			if i%4 < 2 {
				be, err = r.tcpOnce(fam, fam.tcpVIP(), fmt.Sprintf("short %d", i))
			} else {
				kind = fam.name + "/UDP"
				be, err = r.udpOnce(fam, 0, fam.udpVIP(), fmt.Sprintf("short %d", i))
			}
			switch {
			case err != nil:
				fails.add(fmt.Errorf("%s exchange %d: %w", kind, i, err))
			case !valid[be]:
				fails.add(fmt.Errorf("%s exchange %d served by %v, not a backend", kind, i, be))
			}
			mu.Lock()
			short[kind]++
			mu.Unlock()
		}
	}()

	// The long-lived connections talk every few milliseconds.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for round := 0; !stopped(); round++ {
			for i, c := range conns {
				be, err := c.exchange(fmt.Sprintf("long %d round %d", i, round))
				switch {
				case err != nil:
					fails.add(fmt.Errorf("long-lived connection %d (%v), round %d: %w", i, c.LocalAddr(), round, err))
				case be != c.backend:
					moves.add(fmt.Errorf("long-lived connection %d (%v), round %d: served by %v, started on %v", i, c.LocalAddr(), round, be, c.backend))
				}
			}
			mu.Lock()
			longRounds++
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()

	// The reconciler.
	var (
		res    ReconcileResult
		rounds int
	)
	start := time.Now()
	go func() {
		defer close(reconciled)
		for i := 0; i < minRounds || time.Since(start) < minDuration; i++ {
			if stopped() {
				return
			}
			rounds++
			desired := append(tested(i%10 == 9), others.round()...)
			rr, err := r.tbl.Reconcile(desired)
			if err != nil {
				recFails.add(fmt.Errorf("round %d: %w", i, err))
				return
			}
			res.Added += rr.Added
			res.Updated += rr.Updated
			res.Deleted += rr.Deleted
			res.Unchanged += rr.Unchanged
		}
	}()

	var timedOut bool
	select {
	case <-reconciled:
	case <-time.After(maxDuration):
		timedOut = true
	}
	close(stop)
	<-reconciled
	elapsed := time.Since(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * trafficWait):
		t.Fatal("traffic loops did not stop")
	}

	mu.Lock()
	t.Logf("%d reconciles in %v (%v each) %+v; short exchanges %v; %d rounds over %d long-lived connections",
		rounds, elapsed.Round(time.Millisecond), (elapsed / time.Duration(max(rounds, 1))).Round(time.Microsecond), res, short, longRounds, longLived)
	mu.Unlock()
	if timedOut {
		t.Errorf("%d reconciles took more than %v", minRounds, maxDuration)
	}
	for _, f := range []struct {
		what string
		f    *trafficFailures
	}{{"Reconcile failed", &recFails}, {"connections or exchanges failed", &fails}, {"long-lived connections changed backend", &moves}} {
		if n := f.f.count(); n > 0 {
			t.Errorf("%s %d times; the first: %v", f.what, n, errors.Join(f.f.errs...))
		}
	}
	// The connections still work after the churn.
	for i, c := range conns {
		if be, err := c.exchange("last"); err != nil || be != c.backend {
			t.Errorf("long-lived connection %d after the churn: served by %v (%v), started on %v", i, be, err, c.backend)
		}
	}
	st := r.stats(t)
	t.Logf("%+v", st)
	// An ICMP error would mean a packet went somewhere no tested backend is.
	if st.DropNoBackend != 0 || st.Reselect != 0 || st.RevNATICMP != 0 {
		t.Errorf("stats %+v: want no drops, no reselections and no ICMP errors", st)
	}
}
