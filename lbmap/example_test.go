package lbmap_test

import (
	"fmt"
	"log"
	"net"
	"net/netip"
	"time"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/lbmap"
)

// Load-balance a ClusterIP for the pods behind a veth.
func Example() {
	ct, err := conntrack.New(conntrack.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer ct.Close()
	lb, err := lbmap.New(lbmap.Config{}, ct)
	if err != nil {
		log.Fatal(err)
	}
	defer lb.Close()

	err = lb.Upsert(lbmap.Service{
		Frontend: netip.MustParseAddrPort("10.96.0.10:53"),
		Protocol: lbmap.UDP,
		Backends: []lbmap.Backend{
			{Addr: netip.MustParseAddrPort("192.0.2.194:53"), Weight: 1},
			{Addr: netip.MustParseAddrPort("192.0.2.32:53"), Weight: 1},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	veth, err := net.InterfaceByName("lxc0")
	if err != nil {
		log.Fatal(err)
	}
	dp, err := lb.Attach(veth.Index)
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close()
}

// Reconcile makes the table hold exactly the services given, writing only
// the difference.
func ExampleTable_Reconcile() {
	var lb *lbmap.Table // from lbmap.New
	desired := []lbmap.Service{{
		Frontend:  netip.MustParseAddrPort("10.96.0.1:443"),
		Protocol:  lbmap.TCP,
		Algorithm: lbmap.Maglev,
		Affinity:  3 * time.Hour,
		Backends: []lbmap.Backend{
			{Addr: netip.MustParseAddrPort("192.0.2.10:6443"), Weight: 1},
			{Addr: netip.MustParseAddrPort("192.0.2.11:6443"), Weight: 1, State: lbmap.Terminating},
		},
	}}
	res, err := lb.Reconcile(desired)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d added, %d updated, %d deleted\n", res.Added, res.Updated, res.Deleted)
}

func ExampleValidMaglevTableSize() {
	fmt.Println(lbmap.ValidMaglevTableSize(16381))
	fmt.Println(lbmap.ValidMaglevTableSize(16384))
	// Output:
	// <nil>
	// lbmap: Maglev table size 16384 is not prime (nearest primes 16381 and 16411)
}

// Serve a LoadBalancer address and a NodePort from outside the cluster on a
// node's uplink, SNATing connections to backends on other nodes to the
// node's address, and reclaim NAT ports of finished connections.
func ExampleTable_AttachUplink() {
	var (
		ct *conntrack.Table // from conntrack.New
		lb *lbmap.Table     // from lbmap.New(lbmap.Config{}, ct)
	)
	node := netip.MustParseAddr("192.0.2.2")
	backends := []lbmap.Backend{
		{Addr: netip.MustParseAddrPort("10.244.1.5:8080"), Weight: 1, NodeLocal: true},
		{Addr: netip.MustParseAddrPort("10.244.2.7:8080"), Weight: 1}, // on another node
	}
	for _, s := range []lbmap.Service{
		{Frontend: netip.MustParseAddrPort("10.10.200.1:80"), Protocol: lbmap.TCP, Type: lbmap.LoadBalancer, Backends: backends},
		{Frontend: netip.AddrPortFrom(node, 30080), Protocol: lbmap.TCP, Type: lbmap.NodePort, Backends: backends},
	} {
		if err := lb.Upsert(s); err != nil {
			log.Fatal(err)
		}
	}
	uplink, err := net.InterfaceByName("eth0")
	if err != nil {
		log.Fatal(err)
	}
	up, err := lb.AttachUplink(uplink.Index, lbmap.UplinkConfig{SNAT4: node})
	if err != nil {
		log.Fatal(err)
	}
	defer up.Close()
	for range time.Tick(time.Minute) {
		if _, err := ct.GC(time.Now()); err != nil {
			log.Fatal(err)
		}
		if _, err := lb.GCNAT(time.Now()); err != nil {
			log.Fatal(err)
		}
	}
}
