package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/netlinksafe"
)

// initialLinks returns the links of the test process's own network namespace,
// "index name" each.
func initialLinks(t *testing.T) []string {
	t.Helper()
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatalf("open netlink handle: %v", err)
	}
	defer h.Close()
	links, err := netlinksafe.Dump(h.LinkList)
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	var out []string
	for _, l := range links {
		out = append(out, fmt.Sprintf("%d %s", l.Attrs().Index, l.Attrs().Name))
	}
	return out
}

// checkNoNewLinks fails t if after lists a link before does not.
func checkNoNewLinks(t *testing.T, before, after []string) {
	t.Helper()
	had := make(map[string]bool)
	for _, l := range before {
		had[l] = true
	}
	for _, l := range after {
		if !had[l] {
			t.Errorf("initial namespace gained link %s", l)
		}
	}
}

// sendUDP sends one UDP datagram from src to dst's address in dst's
// namespace (to, IPv4 or IPv6) and checks that it arrives from src's address.
func sendUDP(t *testing.T, src, dst *Node, from, to netip.Addr) {
	t.Helper()

	network := "udp4"
	if to.Is6() {
		network = "udp6"
	}

	var ln, conn *net.UDPConn
	if err := dst.NS.Do(func() error {
		var err error
		ln, err = net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, 0)))
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", to, dst.NS.Name(), err)
	}
	defer ln.Close()

	if err := src.NS.Do(func() error {
		var err error
		conn, err = net.DialUDP(network, nil, ln.LocalAddr().(*net.UDPAddr))
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", ln.LocalAddr(), src.NS.Name(), err)
	}
	defer conn.Close()

	msg := fmt.Appendf(nil, "%s -> %s", from, to)
	buf := make([]byte, 2048)
	// The first datagram waits for neighbour resolution; resend a few times in
	// case it is dropped meanwhile.
	for range 5 {
		if _, err := conn.Write(msg); err != nil {
			t.Fatalf("send %s: %v", msg, err)
		}
		if err := ln.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		n, peer, err := ln.ReadFromUDPAddrPort(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatalf("receive %s: %v", msg, err)
		}
		if !bytes.Equal(buf[:n], msg) {
			t.Fatalf("received %q, want %q", buf[:n], msg)
		}
		if peer.Addr().Unmap() != from {
			t.Fatalf("datagram %s came from %s", msg, peer.Addr())
		}
		return
	}
	t.Fatalf("datagram %s from %s to %s never arrived", msg, src.NS.Name(), dst.NS.Name())
}

// checkTraffic sends a datagram from every node to the next, over IPv4 and
// IPv6.
func checkTraffic(t *testing.T, top *Topology) {
	t.Helper()
	for i, src := range top.Nodes {
		dst := top.Nodes[(i+1)%len(top.Nodes)]
		sendUDP(t, src, dst, src.Addr.Addr(), dst.Addr.Addr())
		sendUDP(t, src, dst, src.Addr6.Addr(), dst.Addr6.Addr())
	}
}

// checkNodes checks the nodes' fields against the links in their namespaces.
func checkNodes(t *testing.T, top *Topology, prefix, prefix6 string, mtu int) {
	t.Helper()
	for i, node := range top.Nodes {
		if want := netip.MustParsePrefix(fmt.Sprintf(prefix, i+1)); node.Addr != want {
			t.Errorf("node %d: Addr %s, want %s", i, node.Addr, want)
		}
		if want := netip.MustParsePrefix(fmt.Sprintf(prefix6, i+1)); node.Addr6 != want {
			t.Errorf("node %d: Addr6 %s, want %s", i, node.Addr6, want)
		}
		if node.Link != "eth0" {
			t.Errorf("node %d: Link %q, want eth0", i, node.Link)
		}

		h := node.NS.Netlink()
		link, err := h.LinkByIndex(node.Index)
		if err != nil {
			t.Fatalf("node %d: link %d: %v", i, node.Index, err)
		}
		attrs := link.Attrs()
		if attrs.Name != node.Link || !bytes.Equal(attrs.HardwareAddr, node.HWAddr) || len(node.HWAddr) != 6 {
			t.Errorf("node %d: link %d is %s %s, want %s %s", i, node.Index, attrs.Name, attrs.HardwareAddr, node.Link, node.HWAddr)
		}
		if attrs.MTU != mtu {
			t.Errorf("node %d: MTU %d, want %d", i, attrs.MTU, mtu)
		}
		if attrs.Flags&net.FlagUp == 0 {
			t.Errorf("node %d: %s is down", i, node.Link)
		}
		lo, err := h.LinkByName("lo")
		if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("node %d: lo not up (%v)", i, err)
		}

		addrs, err := netlinksafe.Dump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
		if err != nil {
			t.Fatal(err)
		}
		var got []netip.Prefix
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			ip = ip.Unmap()
			if ip.IsLinkLocalUnicast() {
				continue
			}
			ones, _ := a.Mask.Size()
			got = append(got, netip.PrefixFrom(ip, ones))
		}
		want := []netip.Prefix{node.Addr, node.Addr6}
		if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Errorf("node %d: addresses (-want +got):\n%s", i, diff)
		}
	}
}

func TestTopologyDirect(t *testing.T) {
	t.Parallel()
	RequirePrivileged(t)

	before := initialLinks(t)
	top := NewTopology(t, TopologyConfig{})

	if len(top.Nodes) != 2 || top.Switch != nil {
		t.Fatalf("default topology: %d nodes, switch %v; want 2 nodes joined directly", len(top.Nodes), top.Switch)
	}
	checkNodes(t, top, "192.0.2.%d/24", "2001:db8::%d/64", 1500)
	checkTraffic(t, top)
	checkNoNewLinks(t, before, initialLinks(t))
}

func TestTopologyBridge(t *testing.T) {
	t.Parallel()
	RequirePrivileged(t)

	before := initialLinks(t)
	top := NewTopology(t, TopologyConfig{
		Nodes:   3,
		Prefix:  netip.MustParsePrefix("198.51.100.0/24"),
		Prefix6: netip.MustParsePrefix("2001:db8:1::/64"),
		MTU:     1400,
	})

	if len(top.Nodes) != 3 || top.Switch == nil {
		t.Fatalf("topology: %d nodes, switch %v; want 3 nodes and a switch", len(top.Nodes), top.Switch)
	}
	checkNodes(t, top, "198.51.100.%d/24", "2001:db8:1::%d/64", 1400)

	h := top.Switch.Netlink()
	br, err := h.LinkByName("br0")
	if err != nil {
		t.Fatalf("bridge in switch: %v", err)
	}
	for i := range top.Nodes {
		port, err := h.LinkByName(fmt.Sprintf("node%d", i))
		if err != nil {
			t.Fatalf("port %d: %v", i, err)
		}
		if port.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("port %d not on the bridge", i)
		}
	}

	checkTraffic(t, top)
	checkNoNewLinks(t, before, initialLinks(t))
}

func TestTopologyBridgeTwoNodes(t *testing.T) {
	t.Parallel()

	top := NewTopology(t, TopologyConfig{Bridge: true})
	if len(top.Nodes) != 2 || top.Switch == nil {
		t.Fatalf("topology: %d nodes, switch %v; want 2 nodes and a switch", len(top.Nodes), top.Switch)
	}
	checkTraffic(t, top)
}

func TestTopologyConfigDefaults(t *testing.T) {
	t.Parallel()

	def4, def6 := netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64")
	for _, tc := range []struct {
		name    string
		in      TopologyConfig
		want    TopologyConfig
		wantErr bool
	}{
		{name: "zero", want: TopologyConfig{Nodes: 2, Prefix: def4, Prefix6: def6, MTU: 1500}},
		{name: "three nodes", in: TopologyConfig{Nodes: 3}, want: TopologyConfig{Nodes: 3, Bridge: true, Prefix: def4, Prefix6: def6, MTU: 1500}},
		{name: "one node", in: TopologyConfig{Nodes: 1}, want: TopologyConfig{Nodes: 1, Bridge: true, Prefix: def4, Prefix6: def6, MTU: 1500}},
		{name: "bridge", in: TopologyConfig{Bridge: true}, want: TopologyConfig{Nodes: 2, Bridge: true, Prefix: def4, Prefix6: def6, MTU: 1500}},
		{name: "masked", in: TopologyConfig{Prefix: netip.MustParsePrefix("198.51.100.7/24"), Prefix6: netip.MustParsePrefix("2001:db8::7/64"), MTU: 9000},
			want: TopologyConfig{Nodes: 2, Prefix: netip.MustParsePrefix("198.51.100.0/24"), Prefix6: def6, MTU: 9000}},
		{name: "negative nodes", in: TopologyConfig{Nodes: -1}, wantErr: true},
		{name: "IPv6 Prefix", in: TopologyConfig{Prefix: def6}, wantErr: true},
		{name: "IPv4 Prefix6", in: TopologyConfig{Prefix6: def4}, wantErr: true},
		{name: "mapped Prefix6", in: TopologyConfig{Prefix6: netip.MustParsePrefix("::ffff:192.0.2.0/120")}, wantErr: true},
		{name: "small MTU", in: TopologyConfig{MTU: 1279}, wantErr: true},
	} {
		got, err := tc.in.withDefaults()
		if tc.wantErr {
			if err == nil {
				t.Errorf("%s: no error", tc.name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestHostPrefix(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		prefix string
		host   int
		want   string // "" for an error
	}{
		{"192.0.2.0/24", 1, "192.0.2.1/24"},
		{"192.0.2.0/24", 254, "192.0.2.254/24"},
		{"192.0.2.0/24", 255, ""}, // broadcast
		{"192.0.2.0/24", 256, ""},
		{"192.0.2.4/30", 2, "192.0.2.6/30"},
		{"192.0.2.4/30", 3, ""},
		{"192.0.2.4/31", 1, "192.0.2.5/31"}, // RFC 3021: no broadcast
		{"192.0.2.4/32", 1, ""},
		{"2001:db8::/64", 3, "2001:db8::3/64"},
		{"2001:db8::/126", 3, "2001:db8::3/126"},
		{"2001:db8::/127", 2, ""},
	} {
		got, err := hostPrefix(netip.MustParsePrefix(tc.prefix), tc.host)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("host %d of %s: %s, want an error", tc.host, tc.prefix, got)
		case tc.want != "" && err != nil:
			t.Errorf("host %d of %s: %v", tc.host, tc.prefix, err)
		case tc.want != "" && got != netip.MustParsePrefix(tc.want):
			t.Errorf("host %d of %s: %s, want %s", tc.host, tc.prefix, got, tc.want)
		}
	}
}
