package vxlan_test

import (
	"fmt"
	"log"
	"net/netip"

	"github.com/vishvananda/netns"

	"github.com/netblocks/netblocks/vxlan"
)

// A node joins the overlay and reaches two other nodes' pods.
func Example() {
	ov, err := vxlan.New(vxlan.Config{
		LocalAddr: netip.MustParseAddr("192.0.2.1"),
		PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ov.Close() // the overlay keeps forwarding

	changes, err := ov.Sync([]vxlan.Peer{
		{Name: "node-b", NodeAddr: netip.MustParseAddr("192.0.2.2"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
		{Name: "node-c", NodeAddr: netip.MustParseAddr("198.51.100.3"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(changes)
	fmt.Println("pod MTU:", ov.MTU())
}

// CrossSubnet encapsulates only toward nodes off this node's subnet; here
// the overlay is set up inside another network namespace.
func Example_crossSubnet() {
	ns, err := netns.GetFromName("node-a")
	if err != nil {
		log.Fatal(err)
	}
	defer ns.Close()

	ov, err := vxlan.New(vxlan.Config{
		Mode:          vxlan.CrossSubnet,
		VNI:           4096,
		Port:          vxlan.IANAPort,
		Underlay:      "eth0",
		PodCIDRs:      []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
		NetNS:         ns,
		RouteProtocol: 79,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ov.Close()
}

// A node publishes itself, and its peers Sync with what it published.
func ExampleOverlay_Self() {
	ov, err := vxlan.New(vxlan.Config{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}})
	if err != nil {
		log.Fatal(err)
	}
	defer ov.Close()

	me := ov.Self()
	me.Name = "node-a"
	fmt.Printf("publish %s: pods %v behind VTEP MAC %s\n", me.NodeAddr, me.PodCIDRs, me.VTEPMAC)
}

// Delete takes the node out of the overlay: routes and device go.
func ExampleOverlay_Delete() {
	ov, err := vxlan.New(vxlan.Config{LocalAddr: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		log.Fatal(err)
	}
	if err := ov.Delete(); err != nil {
		log.Fatal(err)
	}
}

// The VTEP MAC of a node follows from its underlay address alone, so a peer
// needs no published MAC and a rebooted node keeps its own.
func ExampleDeriveMAC() {
	fmt.Println(vxlan.DeriveMAC(netip.MustParseAddr("192.0.2.1")))
	fmt.Println(vxlan.DeriveMAC(netip.MustParseAddr("2001:db8::1")))
	// Output:
	// fa:97:b9:58:2e:96
	// 86:1c:79:1b:5f:83
}

func ExampleChanges() {
	c := vxlan.Changes{Routes: vxlan.Count{Added: 2}, Neighbors: vxlan.Count{Added: 1}, FDB: vxlan.Count{Added: 1}}
	fmt.Println(c, c.IsZero())
	// Output: routes +2 ~0 -0, neighbors +1 ~0 -0, fdb +1 ~0 -0 false
}
