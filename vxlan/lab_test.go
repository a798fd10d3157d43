package vxlan

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
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

// The namespace lab: node namespaces joined by an underlay
// (testutil.NewTopology: a veth pair, or a bridge in a switch namespace),
// each node with one pod namespace.
//
// A pod is a namespace whose eth0 is a veth to the node ("pod0" there). Node
// i (from 0) has pod CIDRs 10.244.(i+1).0/24 and fd00:10:244:(i+1)::/64; its
// pod has host address .2 (::2) of each, as /32 and /128; the node side of
// the veth holds the gateway .1 (::1) as /32 and /128 and routes the pod's
// address to pod0. The pod routes the gateway to eth0 and everything else
// via the gateway. Forwarding is on in the node namespaces only.

// labNode is one node of the lab.
type labNode struct {
	*testutil.Node
	// cidrs are the node's pod CIDRs.
	cidrs []netip.Prefix
	// pod is the node's pod namespace; podAddrs its addresses, one per
	// CIDR.
	pod      *testutil.NetNS
	podAddrs []netip.Addr
	// ov is the node's overlay.
	ov *Overlay
}

// underlayAddr returns the node's underlay address of the family asked for.
func (n *labNode) underlayAddr(v6 bool) netip.Addr {
	if v6 {
		return n.Addr6.Addr()
	}
	return n.Addr.Addr()
}

// podAddr returns the pod's address of the family asked for.
func (n *labNode) podAddr(v6 bool) netip.Addr {
	for _, a := range n.podAddrs {
		if a.Is6() == v6 {
			return a
		}
	}
	panic(fmt.Sprintf("pod of %s has no IPv6=%t address", n.NS.Name(), v6))
}

// labCIDRs returns the pod CIDRs of node i, of the families asked for.
func labCIDRs(i int, v4, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	if v4 {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24))
	}
	if v6 {
		out = append(out, netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", i+1)))
	}
	return out
}

// hostN returns host number n of p.
func hostN(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// setSysctl writes value to the sysctl at path (under /proc/sys) inside ns.
func setSysctl(ns *testutil.NetNS, path, value string) error {
	return ns.Do(func() error {
		return os.WriteFile("/proc/sys/"+path, []byte(value), 0o644)
	})
}

// enableForwarding turns IPv4 and IPv6 forwarding on in ns.
func enableForwarding(t testing.TB, ns *testutil.NetNS) {
	t.Helper()
	for _, p := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := setSysctl(ns, p, "1"); err != nil {
			t.Fatalf("enable forwarding in %s: %v", ns.Name(), err)
		}
	}
}

// labNodes wraps the nodes of top, preparing each with prepareNode, and
// gives node i the pod CIDRs labCIDRs(i, v4, v6).
func labNodes(t testing.TB, top *testutil.Topology, v4, v6 bool) []*labNode {
	t.Helper()
	var nodes []*labNode
	for i, n := range top.Nodes {
		prepareNode(t, n)
		nodes = append(nodes, &labNode{Node: n, cidrs: labCIDRs(i, v4, v6)})
	}
	return nodes
}

// prepareNode turns forwarding on in a node's namespace, and duplicate
// address detection off for the interfaces created in it from now on.
//
// A router sends the neighbour solicitations for packets it forwards from its
// link-local address, which is unusable while DAD runs (a second or two after
// the link comes up): without this, the first forwarded packets wait for it.
// addPod waits for the DAD of the interfaces that already exist.
func prepareNode(t testing.TB, n *testutil.Node) {
	t.Helper()
	enableForwarding(t, n.NS)
	if err := setSysctl(n.NS, "net/ipv6/conf/default/accept_dad", "0"); err != nil {
		t.Fatal(err)
	}
}

// waitDAD waits until no IPv6 address in ns is tentative, for 10 s at most.
func waitDAD(t testing.TB, ns *testutil.NetNS) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		addrs, err := addrList(ns.Netlink(), nil, netlink.FAMILY_V6)
		if err != nil {
			t.Fatalf("list addresses in %s: %v", ns.Name(), err)
		}
		tentative := ""
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 && a.Flags&unix.IFA_F_DADFAILED == 0 {
				tentative = a.IPNet.String()
			}
		}
		if tentative == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("address %s in %s still tentative after 10 s", tentative, ns.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newOverlay creates the node's overlay from cfg, filling in NetNS and
// PodCIDRs, and deletes it when the test ends.
func newOverlay(t testing.TB, n *labNode, cfg Config) *Overlay {
	t.Helper()
	cfg.NetNS = n.NS.Handle()
	if cfg.PodCIDRs == nil {
		cfg.PodCIDRs = n.cidrs
	}
	ov, err := New(cfg)
	if err != nil {
		t.Fatalf("create overlay on %s: %v", n.NS.Name(), err)
	}
	t.Cleanup(func() {
		if err := ov.Delete(); err != nil && !errors.Is(err, os.ErrClosed) {
			t.Errorf("delete overlay on %s: %v", n.NS.Name(), err)
		}
	})
	n.ov = ov
	return ov
}

// syncAll syncs every node's overlay with every other node as a peer, as
// published by Self.
func syncAll(t testing.TB, nodes []*labNode) {
	t.Helper()
	for _, n := range nodes {
		var peers []Peer
		for _, p := range nodes {
			if p != n {
				peers = append(peers, p.ov.Self())
			}
		}
		if _, err := n.ov.Sync(peers); err != nil {
			t.Fatalf("sync %s: %v", n.NS.Name(), err)
		}
	}
}

// ipNet converts p, keeping its address, to a *net.IPNet.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// addPod gives n a pod namespace with an eth0 of the given MTU and an
// address in each of n's pod CIDRs, once n's own IPv6 addresses are usable
// (see prepareNode).
func addPod(t testing.TB, n *labNode, mtu int) {
	t.Helper()
	waitDAD(t, n.NS)
	if err := n.addPod(t, mtu); err != nil {
		t.Fatalf("add pod to %s: %v", n.NS.Name(), err)
	}
}

func (n *labNode) addPod(t testing.TB, mtu int) error {
	pod := testutil.NewNetNS(t)
	if err := setSysctl(pod, "net/ipv6/conf/default/accept_dad", "0"); err != nil {
		return err
	}
	nh, ph := n.NS.Netlink(), pod.Netlink()

	attrs := netlink.NewLinkAttrs()
	attrs.Name = "pod0"
	attrs.MTU = mtu
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(pod.Handle()), PeerMTU: uint32(mtu)}
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

	n.pod, n.podAddrs = pod, nil
	for _, c := range n.cidrs {
		gw, addr := hostN(c, 1), hostN(c, 2)
		n.podAddrs = append(n.podAddrs, addr)
		if err := nh.AddrAdd(host, hostAddr(gw)); err != nil {
			return fmt.Errorf("add gateway %s: %w", gw, err)
		}
		if err := ph.AddrAdd(eth0, hostAddr(addr)); err != nil {
			return fmt.Errorf("add pod address %s: %w", addr, err)
		}
		bits := addr.BitLen()
		for _, r := range []struct {
			h  *netlink.Handle
			rt *netlink.Route
		}{
			{nh, &netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(addr, bits)), Scope: netlink.SCOPE_LINK}},
			{ph, &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.PrefixFrom(gw, bits)), Scope: netlink.SCOPE_LINK}},
			{ph, &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)), Gw: gw.AsSlice()}},
		} {
			if addr.Is6() && r.rt.Gw != nil {
				r.rt.Dst = ipNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0))
			}
			if err := r.h.RouteAdd(r.rt); err != nil {
				return fmt.Errorf("add route %s: %w", r.rt, err)
			}
		}
	}
	return nil
}

// ping runs iputils ping in ns: count echo requests to dst, 0.2 s apart,
// with extra arguments, and returns its output and an error unless every
// request got a reply within five seconds.
func ping(ns *testutil.NetNS, dst netip.Addr, count int, extra ...string) (string, error) {
	args := []string{"-n", "-c", fmt.Sprint(count), "-i", "0.2", "-w", "5"}
	if dst.Is6() {
		args = append(args, "-6")
	}
	args = append(args, extra...)
	args = append(args, dst.String())
	out, err := ns.Exec("ping", args...)
	return string(out), err
}

// requirePing fails t unless iputils ping is installed.
func requirePing(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatal("these tests need ping from iputils (Debian package iputils-ping): ", err)
	}
}

// checkPing fails t unless count pings from src to dst all get replies.
func checkPing(t testing.TB, src *testutil.NetNS, dst netip.Addr, extra ...string) {
	t.Helper()
	if out, err := ping(src, dst, 3, extra...); err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", dst, src.Name(), err, out)
	}
}

// tcpTransfer sends size random bytes over TCP from a socket in src to a
// listener on dst:any port in dstNS and checks that they all arrive intact.
func tcpTransfer(src, dstNS *testutil.NetNS, dst netip.Addr, size int) error {
	var ln net.Listener
	if err := dstNS.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		return fmt.Errorf("listen on %s: %w", dst, err)
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

	var c net.Conn
	if err := src.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
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

// checkTCP fails t unless 4 MiB cross from src to dst over TCP.
func checkTCP(t testing.TB, src *labNode, dst *labNode, v6 bool) {
	t.Helper()
	if err := tcpTransfer(src.pod, dst.pod, dst.podAddr(v6), 4<<20); err != nil {
		t.Fatalf("TCP from pod of %s to pod of %s: %v", src.NS.Name(), dst.NS.Name(), err)
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
// The capture stops when the test ends, or at capture.frames.
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
	flags := 0
	for {
		select {
		case <-c.stop:
			// Drain what is queued: the last frames of a ping that
			// has just ended are there already.
			flags = unix.MSG_DONTWAIT
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, b, flags)
		if err != nil {
			if flags != 0 {
				return
			}
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

// observed is one IP packet between two pods as seen on the underlay.
type observed struct {
	vxlan    bool   // encapsulated in VXLAN
	vni      uint32 // of the VXLAN header
	outerLen int    // outer IP packet length (the inner one when not encapsulated)
	src, dst netip.Addr
	proto    layers.IPProtocol // of the inner packet: TCP, ICMPv4, ICMPv6...
}

// decode returns the packets in frames whose innermost IP source and
// destination are src and dst (in either direction). port is the VXLAN UDP
// port: gopacket decodes only 4789 as VXLAN by itself, so UDP payloads to
// port are decoded with layers.VXLAN explicitly.
func decode(frames [][]byte, port uint16, a, b netip.Addr) []observed {
	var out []observed
	for _, f := range frames {
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		o, ok := ipOf(p)
		if !ok {
			continue
		}
		if udp, isUDP := p.Layer(layers.LayerTypeUDP).(*layers.UDP); isUDP && uint16(udp.DstPort) == port {
			outer := o.outerLen
			var vx *layers.VXLAN
			if l, ok := p.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN); ok {
				vx = l
			} else {
				inner := gopacket.NewPacket(udp.Payload, layers.LayerTypeVXLAN, gopacket.Default)
				if l, ok := inner.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN); ok {
					vx = l
				}
			}
			if vx == nil {
				continue
			}
			inner := gopacket.NewPacket(vx.Payload, layers.LayerTypeEthernet, gopacket.Default)
			if o, ok = ipOf(inner); !ok {
				continue
			}
			o.vxlan, o.vni, o.outerLen = true, vx.VNI, outer
		}
		if (o.src == a && o.dst == b) || (o.src == b && o.dst == a) {
			out = append(out, o)
		}
	}
	return out
}

// ipOf returns the addresses and protocol of the first IP layer of p.
func ipOf(p gopacket.Packet) (observed, bool) {
	switch ip := p.NetworkLayer().(type) {
	case *layers.IPv4:
		src, _ := netip.AddrFromSlice(ip.SrcIP.To4())
		dst, _ := netip.AddrFromSlice(ip.DstIP.To4())
		return observed{outerLen: int(ip.Length), src: src, dst: dst, proto: ip.Protocol}, true
	case *layers.IPv6:
		src, _ := netip.AddrFromSlice(ip.SrcIP)
		dst, _ := netip.AddrFromSlice(ip.DstIP)
		return observed{outerLen: 40 + int(ip.Length), src: src, dst: dst, proto: ip.NextHeader}, true
	}
	return observed{}, false
}

// summary describes packets for failure messages.
func summary(obs []observed) string {
	var sb strings.Builder
	for i, o := range obs {
		if i == 8 {
			fmt.Fprintf(&sb, " ... (%d in all)", len(obs))
			break
		}
		fmt.Fprintf(&sb, " [%s->%s %v vxlan=%t vni=%d len=%d]", o.src, o.dst, o.proto, o.vxlan, o.vni, o.outerLen)
	}
	return sb.String()
}
