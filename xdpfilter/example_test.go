package xdpfilter_test

import (
	"fmt"
	"log"
	"net"
	"net/netip"

	"github.com/netblocks/netblocks/xdpfilter"
)

// Drop two networks at the NIC, and see what it cost them.
func Example() {
	f, err := xdpfilter.New(xdpfilter.Config{Mode: xdpfilter.Deny})
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	if err := f.Add(netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.7/32")); err != nil {
		log.Fatal(err)
	}
	nic, err := net.InterfaceByName("eth0")
	if err != nil {
		log.Fatal(err)
	}
	a, err := f.Attach(nic.Index, xdpfilter.Auto)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	if a.Fallback() != nil {
		log.Printf("filtering in generic mode: %v", a.Fallback())
	}
	hits, err := f.Hits()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(hits)
}

// Replace swaps the whole rule set at once.
func ExampleFilter_Replace() {
	f, err := xdpfilter.New(xdpfilter.Config{Mode: xdpfilter.AllowOnly, PinPath: "/sys/fs/bpf/netblocks/xdpfilter"})
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	err = f.Replace([]netip.Prefix{
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("2001:db8::/32"),
	})
	if err != nil {
		log.Fatal(err) // the old set is still in force
	}
	fmt.Println(f.Revision())
}
