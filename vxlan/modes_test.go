package vxlan

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/testutil"
)

// Pod-to-pod traffic across two nodes in each mode, checked on the wire: a
// capture on node 0's underlay interface sees VXLAN with the configured VNI
// in the tunnel modes, plain IP in Native mode.

func TestModes(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	requirePing(t)

	for _, tc := range []struct {
		name       string
		mode       Mode
		underlayV6 bool
		v4, v6     bool // pod CIDR families
		vni        uint32
		port       uint16
	}{
		{name: "tunnel/ipv4-underlay", mode: Tunnel, v4: true, v6: true, vni: 42},
		{name: "tunnel/ipv6-underlay", mode: Tunnel, underlayV6: true, v4: true, v6: true, vni: 7000},
		{name: "tunnel/port-4789", mode: Tunnel, v4: true, vni: MaxVNI, port: IANAPort},
		{name: "native/ipv4-underlay", mode: Native, v4: true},
		{name: "native/ipv6-underlay", mode: Native, underlayV6: true, v6: true},
		// Both nodes on one subnet: CrossSubnet routes directly, except
		// the pod CIDR of the other family, which it encapsulates.
		{name: "cross-subnet/same-subnet", mode: CrossSubnet, v4: true, v6: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			nodes := labNodes(t, testutil.NewTopology(t, testutil.TopologyConfig{}), tc.v4, tc.v6)
			for _, n := range nodes {
				newOverlay(t, n, Config{Mode: tc.mode, VNI: tc.vni, Port: tc.port, LocalAddr: n.underlayAddr(tc.underlayV6)})
				addPod(t, n, n.ov.MTU())
			}
			syncAll(t, nodes)

			port := tc.port
			if port == 0 {
				port = DefaultPort
			}
			vni := tc.vni
			if vni == 0 {
				vni = DefaultVNI
			}
			a, b := nodes[0], nodes[1]
			for _, v6 := range []bool{false, true} {
				if (v6 && !tc.v6) || (!v6 && !tc.v4) {
					continue
				}
				// Encapsulated unless routed directly: Native, and
				// CrossSubnet for the underlay's family.
				wantVXLAN := tc.mode == Tunnel || (tc.mode == CrossSubnet && v6 != tc.underlayV6)
				t.Run(fmt.Sprintf("ipv6=%t", v6), func(t *testing.T) {
					cap := startCapture(t, a.NS, a.Index)
					checkPing(t, a.pod, b.podAddr(v6))
					checkTCP(t, a, b, v6)
					checkTCP(t, b, a, v6)
					obs := decode(cap.frames(), port, a.podAddr(v6), b.podAddr(v6))

					icmp := layers.IPProtocolICMPv4
					if v6 {
						icmp = layers.IPProtocolICMPv6
					}
					var pings, tcp int
					for _, o := range obs {
						if o.vxlan != wantVXLAN || (o.vxlan && o.vni != vni) {
							t.Fatalf("want vxlan=%t vni=%d, saw%s", wantVXLAN, vni, summary([]observed{o}))
						}
						switch o.proto {
						case icmp:
							pings++
						case layers.IPProtocolTCP:
							tcp++
						}
					}
					// 3 requests and 3 replies; TCP both ways.
					if pings < 6 || tcp < 10 {
						t.Fatalf("capture on %s saw %d ICMP and %d TCP packets between the pods, want >= 6 and >= 10:%s",
							a.Link, pings, tcp, summary(obs))
					}
				})
			}
		})
	}
}

// A third node on another subnet, behind a router: CrossSubnet routes to
// the node on its own subnet directly and tunnels to the one behind the
// router.
//
//	A (192.0.2.1) ─┐                              ┌ router eth1 198.51.100.1
//	B (192.0.2.2) ─┼─ bridge ── router eth0 .3 ───┤
//	               │                              └── C (198.51.100.2)
func TestCrossSubnet(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	requirePing(t)

	top := testutil.NewTopology(t, testutil.TopologyConfig{Nodes: 3, Bridge: true})
	router := top.Nodes[2]
	for _, n := range top.Nodes {
		prepareNode(t, n)
	}
	cNode := addRoutedNode(t, router, netip.MustParsePrefix("198.51.100.1/24"), netip.MustParsePrefix("198.51.100.2/24"))
	for _, n := range top.Nodes[:2] {
		if err := n.NS.Netlink().RouteAdd(&netlink.Route{
			Dst: ipNet(netip.MustParsePrefix("198.51.100.0/24")),
			Gw:  router.Addr.Addr().AsSlice(),
		}); err != nil {
			t.Fatal(err)
		}
	}

	a := &labNode{Node: top.Nodes[0], cidrs: labCIDRs(0, true, false)}
	b := &labNode{Node: top.Nodes[1], cidrs: labCIDRs(1, true, false)}
	c := &labNode{Node: cNode, cidrs: labCIDRs(2, true, false)}
	nodes := []*labNode{a, b, c}
	prepareNode(t, cNode)
	waitDAD(t, router.NS) // it forwards, but gets no pod
	for _, n := range nodes {
		newOverlay(t, n, Config{Mode: CrossSubnet, LocalAddr: n.Addr.Addr()})
		addPod(t, n, n.ov.MTU())
	}
	syncAll(t, nodes)

	for _, tc := range []struct {
		peer      *labNode
		wantVXLAN bool
	}{{b, false}, {c, true}} {
		t.Run(fmt.Sprintf("to-%s", tc.peer.Addr.Addr()), func(t *testing.T) {
			cap := startCapture(t, a.NS, a.Index)
			checkPing(t, a.pod, tc.peer.podAddr(false))
			checkTCP(t, a, tc.peer, false)
			obs := decode(cap.frames(), DefaultPort, a.podAddr(false), tc.peer.podAddr(false))
			if len(obs) < 6 {
				t.Fatalf("capture saw %d packets between the pods, want >= 6:%s", len(obs), summary(obs))
			}
			for _, o := range obs {
				if o.vxlan != tc.wantVXLAN || (o.vxlan && o.vni != DefaultVNI) {
					t.Fatalf("want vxlan=%t, saw%s", tc.wantVXLAN, summary([]observed{o}))
				}
			}
		})
	}
	// B and C reach each other too, tunneled.
	checkPing(t, b.pod, c.podAddr(false))
	checkPing(t, c.pod, b.podAddr(false))
}

// addRoutedNode adds a node namespace joined to router by a veth pair:
// router's eth1 holds routerAddr, the node's eth0 holds nodeAddr and routes
// everything via routerAddr.
func addRoutedNode(t *testing.T, router *testutil.Node, routerAddr, nodeAddr netip.Prefix) *testutil.Node {
	t.Helper()
	ns := testutil.NewNetNS(t)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "eth1"
	rh, nh := router.NS.Netlink(), ns.Netlink()
	if err := rh.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns.Handle())}); err != nil {
		t.Fatal(err)
	}
	rl, err := rh.LinkByName("eth1")
	if err != nil {
		t.Fatal(err)
	}
	nl, err := nh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	lo, err := nh.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []error{
		rh.AddrAdd(rl, &netlink.Addr{IPNet: ipNet(routerAddr)}),
		nh.AddrAdd(nl, &netlink.Addr{IPNet: ipNet(nodeAddr)}),
		rh.LinkSetUp(rl), nh.LinkSetUp(nl), nh.LinkSetUp(lo),
		nh.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: routerAddr.Addr().AsSlice()}),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	return &testutil.Node{NS: ns, Link: "eth0", Index: nl.Attrs().Index, HWAddr: nl.Attrs().HardwareAddr, Addr: nodeAddr}
}
