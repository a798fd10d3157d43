package wireguard

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/testutil"
)

// The namespace lab: two node namespaces joined by a veth pair (the
// underlay, testutil.NewTopology: 192.0.2.1 and .2, 2001:db8::1 and ::2),
// each with one pod namespace behind it.
//
// Node i (from 0) has pod CIDRs 10.244.(i+1).0/24 and fd00:10:244:(i+1)::/64.
// Its pod's eth0 is a veth to the node ("pod0" there, MTU 1420 on both sides)
// holding host address .2 (::2) of each CIDR; the node side holds the gateway
// .1 (::1). Each side
// routes the other's address to the veth, and the pod routes everything else
// via the gateway. Forwarding is on in the node namespaces only.

// labNode is one node of the lab.
type labNode struct {
	*testutil.Node
	cidrs    []netip.Prefix
	pod      *testutil.NetNS
	podAddrs []netip.Addr // one per CIDR, IPv4 first
	dev      *Device
	cfg      Config // dev's configuration, to recreate it
}

// lab is two nodes, each with a pod and, once started, a WireGuard device.
type lab struct {
	top   *testutil.Topology
	nodes []*labNode
}

// newLab builds the namespaces of the lab, without WireGuard devices.
func newLab(t testing.TB) *lab {
	t.Helper()
	l := &lab{top: testutil.NewTopology(t, testutil.TopologyConfig{})}
	for i, n := range l.top.Nodes {
		ln := &labNode{Node: n, cidrs: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
			netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", i+1)),
		}}
		for _, p := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
			if err := setSysctl(n.NS, p, "1"); err != nil {
				t.Fatalf("enable forwarding in %s: %v", n.NS.Name(), err)
			}
		}
		if err := ln.addPod(t); err != nil {
			t.Fatalf("add pod to %s: %v", n.NS.Name(), err)
		}
		l.nodes = append(l.nodes, ln)
	}
	return l
}

// start creates a device on every node from cfg (Name and NetNS filled in
// per node, KeyFile in a temporary directory unless set) and makes the nodes
// each other's peers.
func (l *lab) start(t testing.TB, cfg Config) {
	t.Helper()
	dir := t.TempDir()
	for i, n := range l.nodes {
		c := cfg
		c.Name = uniqueName()
		c.NetNS = n.NS.Handle()
		if c.KeyFile == "" {
			c.KeyFile = filepath.Join(dir, fmt.Sprintf("node%d.key", i))
		}
		if c.Logger == nil {
			c.Logger = testLogger(t)
		}
		n.cfg = c
		n.dev = newDevice(t, c)
	}
	l.connect(t)
}

// connect makes each node the other's peer, with its current public key.
func (l *lab) connect(t testing.TB) {
	t.Helper()
	for i, n := range l.nodes {
		if err := n.dev.SetPeers([]Peer{l.nodes[1-i].peer()}); err != nil {
			t.Fatalf("set peers of %s: %v", n.NS.Name(), err)
		}
	}
}

// peer returns the node as its peers see it.
func (n *labNode) peer() Peer {
	return Peer{
		PublicKey:  n.dev.PublicKey(),
		Endpoint:   netip.AddrPortFrom(n.Addr.Addr(), n.dev.ListenPort()),
		AllowedIPs: n.cidrs,
	}
}

// podAddr returns the pod's IPv4 or IPv6 address.
func (n *labNode) podAddr(v6 bool) netip.Addr {
	if v6 {
		return n.podAddrs[1]
	}
	return n.podAddrs[0]
}

// newDevice creates a device from cfg and closes it when the test ends.
func newDevice(t testing.TB, cfg Config) *Device {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("create device: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close device %s: %v", d.Name(), err)
		}
	})
	return d
}

// uniqueName returns a device name no other test uses: the embedded
// backend's UAPI socket directory is shared by every namespace.
func uniqueName() string {
	return fmt.Sprintf("nbwg%08x", rand.Uint32())
}

// testLogger returns a logger writing to t's log at Info level and above,
// which drops what comes after the test has ended.
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(b), "\n"))
	}
	return len(b), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// setSysctl writes value to the sysctl at path (under /proc/sys) inside ns.
func setSysctl(ns *testutil.NetNS, path, value string) error {
	return ns.Do(func() error {
		return os.WriteFile("/proc/sys/"+path, []byte(value), 0o644)
	})
}

// hostN returns host number n of p.
func hostN(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// ipNet converts p to a *net.IPNet.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// addPod gives n a pod namespace with an address in each of its CIDRs.
func (n *labNode) addPod(t testing.TB) error {
	pod := testutil.NewNetNS(t)
	for _, ns := range []*testutil.NetNS{pod, n.NS} {
		if err := setSysctl(ns, "net/ipv6/conf/default/accept_dad", "0"); err != nil {
			return err
		}
	}
	nh, ph := n.NS.Netlink(), pod.Netlink()

	// Pods get the tunnel's MTU, as a CNI plugin would give them.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "pod0"
	attrs.MTU = DefaultUnderlayMTU - Overhead
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(pod.Handle()), PeerMTU: uint32(attrs.MTU)}
	if err := nh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	host, err := nh.LinkByName("pod0")
	if err != nil {
		return err
	}
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		return err
	}
	lo, err := ph.LinkByName("lo")
	if err != nil {
		return err
	}
	for _, up := range []struct {
		h *netlink.Handle
		l netlink.Link
	}{{nh, host}, {ph, eth0}, {ph, lo}} {
		if err := up.h.LinkSetUp(up.l); err != nil {
			return fmt.Errorf("set %s up: %w", up.l.Attrs().Name, err)
		}
	}

	n.pod = pod
	for _, c := range n.cidrs {
		gw, addr := hostN(c, 1), hostN(c, 2)
		bits := addr.BitLen()
		n.podAddrs = append(n.podAddrs, addr)
		if err := nh.AddrAdd(host, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gw, bits)), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("add gateway %s: %w", gw, err)
		}
		if err := ph.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, bits)), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("add pod address %s: %w", addr, err)
		}
		anyDst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if addr.Is6() {
			anyDst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		for _, r := range []struct {
			h  *netlink.Handle
			rt *netlink.Route
		}{
			{nh, &netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(addr, bits)), Scope: netlink.SCOPE_LINK}},
			{ph, &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.PrefixFrom(gw, bits)), Scope: netlink.SCOPE_LINK}},
			{ph, &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(anyDst), Gw: gw.AsSlice()}},
		} {
			if err := r.h.RouteAdd(r.rt); err != nil {
				return fmt.Errorf("add route %s: %w", r.rt, err)
			}
		}
	}
	return nil
}

// requireTool fails t unless the named program is installed.
func requireTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("this test needs %s (Debian package %s): %v", name, pkg, err)
	}
}

// ping runs iputils ping in ns: count echo requests to dst, 0.1 s apart, and
// returns an error unless every one got a reply within wait.
func ping(ns *testutil.NetNS, dst netip.Addr, count int, wait time.Duration) (string, error) {
	args := []string{"-n", "-q", "-c", fmt.Sprint(count), "-i", "0.1", "-w", fmt.Sprint(int(wait.Seconds()))}
	if dst.Is6() {
		args = append(args, "-6")
	}
	out, err := ns.Exec("ping", append(args, dst.String())...)
	return string(out), err
}

// checkPing fails t unless 3 pings from the pod of src to the pod of dst get
// replies.
func checkPing(t testing.TB, src, dst *labNode, v6 bool) {
	t.Helper()
	if out, err := ping(src.pod, dst.podAddr(v6), 3, 5*time.Second); err != nil {
		t.Fatalf("ping %s from pod of %s: %v\n%s", dst.podAddr(v6), src.NS.Name(), err, out)
	}
}

// listenIn opens a TCP listener on addr (port 0: any) inside ns.
func listenIn(ns *testutil.NetNS, addr netip.Addr) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns.Name(), err)
	}
	return ln, nil
}

// dialIn connects from ns to addr over network.
func dialIn(ns *testutil.NetNS, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// tcpTransfer sends size random bytes over TCP from a socket in src to a
// listener on dst in dstNS and checks that they all arrive intact.
func tcpTransfer(src, dstNS *testutil.NetNS, dst netip.Addr, size int) error {
	ln, err := listenIn(dstNS, dst)
	if err != nil {
		return err
	}
	defer ln.Close()

	type result struct {
		n   int64
		sum [32]byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		h := sha256.New()
		n, err := io.Copy(h, c)
		got <- result{n: n, sum: [32]byte(h.Sum(nil)), err: err}
	}()

	c, err := dialIn(src, "tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", ln.Addr(), err)
	}
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), 7))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, werr := c.Write(data)
	c.Close()
	if werr != nil {
		return fmt.Errorf("send to %s: %w", ln.Addr(), werr)
	}
	r := <-got
	switch {
	case r.err != nil:
		return fmt.Errorf("receive on %s: %w", ln.Addr(), r.err)
	case r.n != int64(size):
		return fmt.Errorf("received %d bytes on %s, sent %d", r.n, ln.Addr(), size)
	case r.sum != sha256.Sum256(data):
		return fmt.Errorf("received corrupt data on %s", ln.Addr())
	}
	return nil
}

// checkTCP fails t unless 4 MiB cross over TCP from the pod of src to the pod
// of dst.
func checkTCP(t testing.TB, src, dst *labNode, v6 bool) {
	t.Helper()
	if err := tcpTransfer(src.pod, dst.pod, dst.podAddr(v6), 4<<20); err != nil {
		t.Fatalf("TCP from pod of %s to pod of %s: %v", src.NS.Name(), dst.NS.Name(), err)
	}
}

// udpEcho answers every datagram sent to it with the same bytes, from a
// socket in a namespace, until closed.
type udpEcho struct {
	conn net.PacketConn
	done chan struct{}
}

// startUDPEcho starts an echo server on addr (any port) in ns and stops it
// when the test ends.
func startUDPEcho(t testing.TB, ns *testutil.NetNS, addr netip.Addr) *udpEcho {
	t.Helper()
	e := &udpEcho{done: make(chan struct{})}
	if err := ns.Do(func() error {
		var err error
		e.conn, err = net.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		t.Fatalf("listen on UDP %s in %s: %v", addr, ns.Name(), err)
	}
	go func() {
		defer close(e.done)
		b := make([]byte, 2048)
		for {
			n, from, err := e.conn.ReadFrom(b)
			if err != nil {
				return
			}
			e.conn.WriteTo(b[:n], from)
		}
	}()
	t.Cleanup(func() {
		e.conn.Close()
		<-e.done
	})
	return e
}

// waitExchange sends a numbered datagram from a socket in ns to the echo
// server at dst every interval until one comes back, or until ctx is done,
// and returns when the first echo arrived.
func waitExchange(ctx context.Context, ns *testutil.NetNS, dst net.Addr, interval time.Duration) (time.Time, error) {
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = net.Dial("udp", dst.String())
		return err
	}); err != nil {
		return time.Time{}, fmt.Errorf("open UDP socket in %s: %w", ns.Name(), err)
	}
	defer c.Close()

	got := make(chan time.Time, 1)
	go func() {
		b := make([]byte, 64)
		for {
			if _, err := c.Read(b); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP unreachable while the tunnel has no peer
			}
			got <- time.Now()
			return
		}
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		c.Write([]byte(fmt.Sprintf("probe %d", seq)))
		select {
		case at := <-got:
			return at, nil
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("no echo from %s: %w", dst, ctx.Err())
		case <-tick.C:
		}
	}
}

// capture records the frames an interface sends and receives, through an
// AF_PACKET socket opened in the interface's namespace.
type capture struct {
	fd   int
	mu   sync.Mutex
	buf  [][]byte
	stop chan struct{}
	done chan struct{}
}

// startCapture starts capturing on the interface with index ifindex in ns.
// The capture stops at capture.frames, or when the test ends.
func startCapture(t testing.TB, ns *testutil.NetNS, ifindex int) *capture {
	t.Helper()
	c := &capture{fd: -1, stop: make(chan struct{}), done: make(chan struct{})}
	proto := uint16(unix.ETH_P_ALL)
	proto = proto<<8 | proto>>8 // network byte order
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		c.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifindex})
	})
	if err == nil {
		err = unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000})
	}
	if err == nil {
		// Room for a burst of TCP at tunnel speed.
		err = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
	}
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("open capture in %s: %v", ns.Name(), err)
	}
	go c.run()
	t.Cleanup(c.close)
	return c
}

func (c *capture) run() {
	defer close(c.done)
	b := make([]byte, 1<<17)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, b, 0)
		if err != nil {
			continue // timeout or interrupt: check stop
		}
		c.mu.Lock()
		c.buf = append(c.buf, bytes.Clone(b[:n]))
		c.mu.Unlock()
	}
}

func (c *capture) close() {
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	<-c.done
	unix.Close(c.fd)
}

// frames stops the capture and returns what it saw.
func (c *capture) frames() [][]byte {
	c.close()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf
}

// underlayReport classifies the IP packets of an underlay capture.
type underlayReport struct {
	wireguard int      // UDP to or from the WireGuard port, with a valid WireGuard message type
	byType    [5]int   // WireGuard messages by type: 1 initiation, 2 response, 3 cookie, 4 data
	other     []string // every other IP packet, described
}

// classifyUnderlay decodes frames with gopacket and sorts their IP packets
// into WireGuard messages on port and anything else.
func classifyUnderlay(frames [][]byte, port uint16) underlayReport {
	var r underlayReport
	for _, f := range frames {
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		if p.NetworkLayer() == nil {
			continue // ARP
		}
		if icmp6, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
			// Neighbour discovery and MLD between the nodes are not pod
			// traffic.
			switch icmp6.TypeCode.Type() {
			case layers.ICMPv6TypeNeighborSolicitation, layers.ICMPv6TypeNeighborAdvertisement,
				layers.ICMPv6TypeRouterSolicitation, layers.ICMPv6TypeMLDv2MulticastListenerReportMessageV2:
				continue
			}
		}
		udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if ok && (uint16(udp.DstPort) == port || uint16(udp.SrcPort) == port) {
			// A WireGuard message starts with its type (1-4) and three
			// reserved zero bytes.
			pl := udp.Payload
			if len(pl) >= 4 && pl[0] >= 1 && pl[0] <= 4 && pl[1] == 0 && pl[2] == 0 && pl[3] == 0 {
				r.wireguard++
				r.byType[pl[0]]++
				continue
			}
		}
		desc := p.NetworkLayer().NetworkFlow().String()
		if t := p.TransportLayer(); t != nil {
			desc += " " + t.LayerType().String() + " " + t.TransportFlow().String()
		} else if len(p.Layers()) > 2 {
			desc += " " + p.Layers()[2].LayerType().String()
		}
		r.other = append(r.other, desc)
	}
	return r
}
