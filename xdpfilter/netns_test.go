package xdpfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/testutil"
)

// Namespace tests: real traffic from two clients (A and B) to a node whose
// interface has the filter attached.
//
// Topology (testutil.NewTopology with three nodes): the node (192.0.2.1,
// 2001:db8::1), client A (.2, ::2) and client B (.3, ::3) each have an eth0
// whose veth peer is a port of a bridge in a switch namespace. The filter is
// attached to the node's eth0: XDP sees what the clients send to the node.
//
// Native XDP on a veth: the receiving veth runs its XDP program in its NAPI
// poll, which the kernel enables when a program is attached; veth_xmit on
// the peer hands an skb to that NAPI only if it is "eligible for GRO", i.e.
// the peer has no TSO or the skb is a local socket's. Attaching XDP to a veth
// clears the software GSO features of its peer (veth_xdp_set), so traffic the
// bridge forwards to the node does reach the native program without an XDP
// program or GRO on the peer. These tests prove it: in Native mode a denied
// client's pings, TCP and UDP are dropped.

// trafficTimeout bounds each attempt that is expected to fail.
const trafficTimeout = time.Second

type trafficLab struct {
	node, a, b *testutil.Node
}

func newTrafficLab(t *testing.T) *trafficLab {
	t.Helper()
	top := testutil.NewTopology(t, testutil.TopologyConfig{Nodes: 3, Bridge: true})
	return &trafficLab{node: top.Nodes[0], a: top.Nodes[1], b: top.Nodes[2]}
}

// attach attaches f to the node's eth0 in mode and fails unless it attached
// in that very mode. It is detached at the end of the (sub)test.
func (l *trafficLab) attach(t *testing.T, f *Filter, mode AttachMode) *Attachment {
	t.Helper()
	var a *Attachment
	err := l.node.NS.Do(func() error {
		var err error
		a, err = f.Attach(l.node.Index, mode)
		return err
	})
	if err != nil {
		t.Fatalf("attach in %v mode to the node's %s: %v", mode, l.node.Link, err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("detach: %v", err)
		}
	})
	if a.Mode() != mode || a.Fallback() != nil {
		t.Fatalf("attached in %v mode (fallback %v), want %v", a.Mode(), a.Fallback(), mode)
	}
	return a
}

// hosts returns a node's addresses as /32 and /128 rules.
func hosts(n *testutil.Node) []netip.Prefix {
	return []netip.Prefix{
		netip.PrefixFrom(n.Addr.Addr(), 32),
		netip.PrefixFrom(n.Addr6.Addr(), 128),
	}
}

// icmpChecksum is the Internet checksum of b.
func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

var pingSeq atomic.Uint32

// ping sends one ICMP echo request from ns to dst over a raw socket and
// waits up to timeout for the matching reply.
func ping(ns *testutil.NetNS, dst netip.Addr, timeout time.Duration) error {
	network, laddr, req, rep := "ip4:icmp", "0.0.0.0", byte(8), byte(0)
	if dst.Is6() {
		network, laddr, req, rep = "ip6:ipv6-icmp", "::", 128, 129
	}
	var c net.PacketConn
	if err := ns.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return fmt.Errorf("open raw socket: %w", err)
	}
	defer c.Close()
	id, seq := uint16(os.Getpid()), uint16(pingSeq.Add(1))
	msg := []byte{req, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'n', 'b', 'x', 'f'}
	if dst.Is4() { // the kernel computes ICMPv6 checksums itself
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
	}
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("send echo request to %v: %w", dst, err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("echo reply from %v (seq %d): %w", dst, seq, err)
		}
		if n >= 8 && buf[0] == rep && binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
			return nil
		}
	}
}

// tcpServer accepts connections in the node's namespace and writes "ok" to
// each.
type tcpServer struct {
	addr4, addr6 netip.AddrPort
}

func serveTCP(t *testing.T, node *testutil.Node) *tcpServer {
	t.Helper()
	var ls []net.Listener
	err := node.NS.Do(func() error {
		for _, a := range []netip.Addr{node.Addr.Addr(), node.Addr6.Addr()} {
			l, err := net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
			if err != nil {
				return err
			}
			ls = append(ls, l)
		}
		return nil
	})
	for _, l := range ls {
		t.Cleanup(func() { l.Close() })
	}
	if err != nil {
		t.Fatalf("listen in the node: %v", err)
	}
	for _, l := range ls {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("ok"))
				c.Close()
			}
		}()
	}
	return &tcpServer{
		addr4: netip.MustParseAddrPort(ls[0].Addr().String()),
		addr6: netip.MustParseAddrPort(ls[1].Addr().String()),
	}
}

// dialTCP connects from ns to dst and reads the server's "ok", within timeout.
func dialTCP(ns *testutil.NetNS, dst netip.AddrPort, timeout time.Duration) error {
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: timeout}).Dial("tcp", dst.String())
		return err
	}); err != nil {
		return fmt.Errorf("connect to %v: %w", dst, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ok" {
		return fmt.Errorf("read from %v: %q, %v", dst, buf, err)
	}
	return nil
}

// reach checks ping and TCP, v4 and v6, from client to the node. It returns
// one error per failed probe, or nil.
func reach(client *testutil.Node, node *testutil.Node, srv *tcpServer, attempts int) []error {
	var errs []error
	probes := []struct {
		name string
		run  func() error
	}{
		{"ping v4", func() error { return ping(client.NS, node.Addr.Addr(), trafficTimeout) }},
		{"ping v6", func() error { return ping(client.NS, node.Addr6.Addr(), trafficTimeout) }},
		{"tcp v4", func() error { return dialTCP(client.NS, srv.addr4, trafficTimeout) }},
		{"tcp v6", func() error { return dialTCP(client.NS, srv.addr6, trafficTimeout) }},
	}
	for _, p := range probes {
		var err error
		for range attempts {
			if err = p.run(); err == nil {
				break
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
		}
	}
	return errs
}

func TestTrafficDenyAndAllowOnly(t *testing.T) {
	for _, attachMode := range []AttachMode{Native, Generic} {
		t.Run(attachMode.String(), func(t *testing.T) {
			lab := newTrafficLab(t)
			srv := serveTCP(t, lab.node)
			// Before any filter: both clients reach the node (and resolve
			// their neighbours).
			for _, c := range []*testutil.Node{lab.a, lab.b} {
				if errs := reach(c, lab.node, srv, 3); errs != nil {
					t.Fatalf("no filter: client %v: %v", c.Addr.Addr(), errors.Join(errs...))
				}
			}
			for _, tt := range []struct {
				name  string
				mode  Mode
				rules []netip.Prefix // A's or B's addresses
			}{
				{"deny A", Deny, hosts(lab.a)},
				{"allow-only B", AllowOnly, hosts(lab.b)},
			} {
				t.Run(tt.name, func(t *testing.T) {
					f, err := New(Config{Mode: tt.mode})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { f.Close() })
					for _, r := range tt.rules {
						if err := f.Add(r); err != nil {
							t.Fatal(err)
						}
					}
					lab.attach(t, f, attachMode)

					if errs := reach(lab.b, lab.node, srv, 3); errs != nil {
						t.Errorf("client B (%v) should reach the node: %v", lab.b.Addr.Addr(), errors.Join(errs...))
					}
					errs := reach(lab.a, lab.node, srv, 1)
					if len(errs) != 4 {
						t.Errorf("client A (%v) should reach nothing, yet %d of 4 probes succeeded (failures: %v)",
							lab.a.Addr.Addr(), 4-len(errs), errors.Join(errs...))
					}

					st, err := f.Stats()
					if err != nil {
						t.Fatal(err)
					}
					hits, err := f.Hits()
					if err != nil {
						t.Fatal(err)
					}
					t.Logf("stats %+v, hits %v", st, hits)
					// A sent at least an echo request and a SYN per family.
					if st.Dropped < 4 {
						t.Errorf("Stats.Dropped = %d, want at least 4", st.Dropped)
					}
					if st.Passed == 0 {
						t.Errorf("Stats.Passed = 0: B's traffic passed")
					}
					if tt.mode == Deny && st.Dropped != st.Matched {
						t.Errorf("deny mode: Dropped %d != Matched %d", st.Dropped, st.Matched)
					}
					for _, r := range tt.rules {
						if hits[r] < 2 {
							t.Errorf("Hits[%v] = %d, want at least 2 (a ping and a SYN)", r, hits[r])
						}
					}
				})
			}
		})
	}
}

// replaceSet returns a rule set of about 100k rules that denies a's
// addresses and never matches b's: random exact and prefix rules from
// 198.18.0.0/15, 10.0.0.0/8 and 2001:db8:X::/48 with X != 0.
func replaceSet(seed uint64, a, b *testutil.Node) []netip.Prefix {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	seen := map[netip.Prefix]bool{}
	var set []netip.Prefix
	add := func(n int, gen func() netip.Prefix) {
		for added := 0; added < n; {
			p := gen()
			if !seen[p] {
				seen[p] = true
				set = append(set, p)
				added++
			}
		}
	}
	add(70000, func() netip.Prefix { // /32 in 198.18.0.0/15
		v := 198<<24 | 18<<16 | rng.Uint32N(1<<17)
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 32)
	})
	add(10000, func() netip.Prefix { // /24 in 10.0.0.0/8
		v := rng.Uint32N(1 << 16)
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(v >> 8), byte(v), 0}), 24)
	})
	v6 := func(bits int) func() netip.Prefix {
		return func() netip.Prefix {
			var x [16]byte
			copy(x[:], []byte{0x20, 0x01, 0x0d, 0xb8})
			binary.BigEndian.PutUint16(x[4:], uint16(1+rng.IntN(0xfffe)))
			binary.BigEndian.PutUint64(x[8:], rng.Uint64())
			binary.BigEndian.PutUint16(x[6:], uint16(rng.Uint32()))
			return netip.PrefixFrom(netip.AddrFrom16(x), bits).Masked()
		}
	}
	add(15000, v6(128))
	add(5000, v6(64))
	set = append(set, hosts(a)...)
	for _, p := range set {
		for _, addr := range []netip.Addr{b.Addr.Addr(), b.Addr6.Addr()} {
			if p.Contains(addr) {
				panic(fmt.Sprintf("rule %v contains B's %v", p, addr))
			}
		}
	}
	rng.Shuffle(len(set), func(i, j int) { set[i], set[j] = set[j], set[i] })
	return set
}

// udpSink counts datagrams carrying an 8-byte sequence number, per source.
type udpSink struct {
	conns []net.PacketConn
	mu    sync.Mutex
	got   map[netip.Addr]map[uint64]bool
	wg    sync.WaitGroup
}

func newUDPSink(t *testing.T, node *testutil.Node) (*udpSink, netip.AddrPort, netip.AddrPort) {
	t.Helper()
	s := &udpSink{got: map[netip.Addr]map[uint64]bool{}}
	err := node.NS.Do(func() error {
		for _, a := range []netip.Addr{node.Addr.Addr(), node.Addr6.Addr()} {
			c, err := net.ListenPacket("udp", netip.AddrPortFrom(a, 0).String())
			if err != nil {
				return err
			}
			s.conns = append(s.conns, c)
			// A big buffer, so that the sink's socket is never what drops.
			rc, err := c.(*net.UDPConn).SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("set SO_RCVBUFFORCE: %w", serr)
			}
		}
		return nil
	})
	t.Cleanup(s.close)
	if err != nil {
		t.Fatalf("open UDP sink in the node: %v", err)
	}
	for _, c := range s.conns {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			buf := make([]byte, 64)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				if n != 8 {
					continue
				}
				src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
				s.mu.Lock()
				if s.got[src] == nil {
					s.got[src] = map[uint64]bool{}
				}
				s.got[src][binary.BigEndian.Uint64(buf)] = true
				s.mu.Unlock()
			}
		}()
	}
	return s, netip.MustParseAddrPort(s.conns[0].LocalAddr().String()), netip.MustParseAddrPort(s.conns[1].LocalAddr().String())
}

func (s *udpSink) close() {
	for _, c := range s.conns {
		c.Close()
	}
	s.wg.Wait()
}

// received returns how many distinct sequence numbers below n came from src,
// and the first missing one (or -1).
func (s *udpSink) received(src netip.Addr, n uint64) (int, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	got, first := 0, int64(-1)
	for i := range n {
		if s.got[src][i] {
			got++
		} else if first < 0 {
			first = int64(i)
		}
	}
	return got, first
}

// total is every datagram from src, whatever its sequence.
func (s *udpSink) total(src netip.Addr) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got[src])
}

// udpStream sends numbered datagrams from a client to dst every interval
// until stop is closed.
type udpStream struct {
	src  netip.Addr
	sent atomic.Uint64
	err  error
	done chan struct{}
}

func startUDPStream(t *testing.T, ns *testutil.NetNS, src netip.Addr, dst netip.AddrPort, interval time.Duration, stop <-chan struct{}) *udpStream {
	t.Helper()
	var c net.PacketConn
	if err := ns.Do(func() error {
		var err error
		c, err = net.ListenPacket("udp", netip.AddrPortFrom(src, 0).String())
		return err
	}); err != nil {
		t.Fatalf("open UDP socket on %v: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	s := &udpStream{src: src, done: make(chan struct{})}
	to := net.UDPAddrFromAddrPort(dst)
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		buf := make([]byte, 8)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(buf, s.sent.Load())
			if _, err := c.WriteTo(buf, to); err != nil {
				s.err = fmt.Errorf("send datagram %d from %v: %w", s.sent.Load(), src, err)
				return
			}
			s.sent.Add(1)
		}
	}()
	return s
}

// udpRcvbufErrors reads Udp and Udp6 RcvbufErrors of the node's namespace.
func udpRcvbufErrors(ns *testutil.NetNS) string {
	var out []string
	ns.Do(func() error {
		for _, file := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/snmp6"} {
			b, err := os.ReadFile(file)
			if err != nil {
				out = append(out, err.Error())
				continue
			}
			lines := strings.Split(string(b), "\n")
			for i, l := range lines {
				if strings.HasPrefix(l, "Udp6RcvbufErrors") {
					out = append(out, strings.Join(strings.Fields(l), "="))
				}
				if strings.HasPrefix(l, "Udp: ") && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "Udp: ") {
					names, vals := strings.Fields(l), strings.Fields(lines[i+1])
					for j := range names {
						if names[j] == "RcvbufErrors" && j < len(vals) {
							out = append(out, "UdpRcvbufErrors="+vals[j])
						}
					}
				}
			}
		}
		return nil
	})
	return strings.Join(out, " ")
}

func TestTrafficReplaceUnderLoad(t *testing.T) {
	const (
		replaces = 6
		interval = 500 * time.Microsecond // per stream; four streams
		budget   = 2 * time.Minute
	)
	for _, attachMode := range []AttachMode{Native, Generic} {
		t.Run(attachMode.String(), func(t *testing.T) {
			lab := newTrafficLab(t)
			sets := make([][]netip.Prefix, replaces+1)
			for i := range sets {
				sets[i] = replaceSet(uint64(i)+1, lab.a, lab.b)
			}
			f, err := New(Config{Mode: Deny, MaxPrefixes: 1 << 15, MaxExact: 1 << 17})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			if err := f.Replace(sets[0]); err != nil {
				t.Fatal(err)
			}
			// Resolve both clients' neighbours before attaching, so that no
			// datagram waits for ARP or NDP, and A's IPv6 datagrams leave A
			// although A's neighbour solicitations would be dropped.
			for _, c := range []*testutil.Node{lab.a, lab.b} {
				for _, dst := range []netip.Addr{lab.node.Addr.Addr(), lab.node.Addr6.Addr()} {
					if err := ping(c.NS, dst, 2*time.Second); err != nil {
						t.Fatalf("before the filter: %v", err)
					}
				}
			}
			lab.attach(t, f, attachMode)
			sink, dst4, dst6 := newUDPSink(t, lab.node)

			stop := make(chan struct{})
			var streams []*udpStream
			for _, c := range []*testutil.Node{lab.a, lab.b} {
				streams = append(streams,
					startUDPStream(t, c.NS, c.Addr.Addr(), dst4, interval, stop),
					startUDPStream(t, c.NS, c.Addr6.Addr(), dst6, interval, stop))
			}
			start := time.Now()
			var durations []time.Duration
			var replaceErr error
			for i := 1; i <= replaces && time.Since(start) < budget; i++ {
				t0 := time.Now()
				if err := f.Replace(sets[i]); err != nil {
					replaceErr = fmt.Errorf("replace %d: %w", i, err)
					break
				}
				durations = append(durations, time.Since(t0))
				time.Sleep(50 * time.Millisecond)
			}
			close(stop)
			for _, s := range streams {
				<-s.done
			}
			if replaceErr != nil {
				t.Fatal(replaceErr)
			}
			t.Logf("%d Replaces of %d rules under traffic in %v: %v", len(durations), len(sets[1]), time.Since(start), durations)

			// Wait until B's datagrams are all in, or 3 s.
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				all := true
				for _, s := range streams[2:] {
					if got, _ := sink.received(s.src, s.sent.Load()); got != int(s.sent.Load()) {
						all = false
					}
				}
				if all {
					break
				}
			}
			time.Sleep(100 * time.Millisecond) // a late A datagram would show too
			for i, s := range streams {
				if s.err != nil {
					t.Errorf("%v", s.err)
				}
				n := s.sent.Load()
				got, first := sink.received(s.src, n)
				if i < 2 { // A
					if total := sink.total(s.src); total != 0 {
						t.Errorf("A (%v): %d of %d datagrams reached the sink, want 0", s.src, total, n)
					}
					continue
				}
				t.Logf("B (%v): %d of %d datagrams received", s.src, got, n)
				if n < 1000 {
					t.Errorf("B (%v) sent only %d datagrams", s.src, n)
				}
				if got != int(n) {
					t.Errorf("B (%v): %d of %d datagrams lost (first missing: %d); node's %s",
						s.src, int(n)-got, n, first, udpRcvbufErrors(lab.node.NS))
				}
			}
			st, err := f.Stats()
			if err != nil {
				t.Fatal(err)
			}
			hits, err := f.Hits()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("stats %+v; hits of A's rules: %d, %d", st, hits[hosts(lab.a)[0]], hits[hosts(lab.a)[1]])
			for i, r := range hosts(lab.a) {
				if sent := streams[i].sent.Load(); hits[r] < sent {
					t.Errorf("Hits[%v] = %d, want at least the %d datagrams A sent (the rule keeps its id through every Replace)",
						r, hits[r], sent)
				}
			}
		})
	}
}
