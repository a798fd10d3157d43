package conntrack_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"
	"time"

	"github.com/netblocks/netblocks/conntrack"
)

// Track every connection through eth0, collect expired entries in the
// background, and print the table.
func Example() {
	tbl, err := conntrack.New(conntrack.Config{MaxEntries: 65536})
	if err != nil {
		log.Fatal(err)
	}
	defer tbl.Close()

	iface, err := net.InterfaceByName("eth0")
	if err != nil {
		log.Fatal(err)
	}
	tracker, err := tbl.Attach(iface.Index)
	if err != nil {
		log.Fatal(err)
	}
	defer tracker.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tbl.RunGC(ctx)

	time.Sleep(10 * time.Second)
	for e, err := range tbl.Iterate() {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(e)
	}
}

// A table pinned on bpffs, with a tracker that keeps tracking after the
// process exits; the next process takes both over.
func ExampleOpenTracker() {
	const dir = "/sys/fs/bpf/netblocks/conntrack"
	tbl, err := conntrack.New(conntrack.Config{PinPath: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer tbl.Close()
	tracker, err := conntrack.OpenTracker(dir)
	if err != nil { // first start: nothing pinned yet
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			log.Fatal(err)
		}
		if tracker, err = tbl.Attach(iface.Index); err != nil {
			log.Fatal(err)
		}
		if err := tracker.Pin(dir); err != nil {
			log.Fatal(err)
		}
	}
	defer tracker.Close()
}

func ExampleTable_Lookup() {
	tbl, err := conntrack.Open("/sys/fs/bpf/netblocks/conntrack")
	if err != nil {
		log.Fatal(err)
	}
	defer tbl.Close()
	// Either direction of the connection finds it.
	e, err := tbl.Lookup(conntrack.Flow{
		Src:   netip.MustParseAddrPort("192.0.2.2:8080"),
		Dst:   netip.MustParseAddrPort("192.0.2.1:58044"),
		Proto: conntrack.TCP,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(e.State, e.RxPackets, e.TxPackets)
}

func ExampleEntry_String() {
	e := conntrack.Entry{
		Flow:      conntrack.Flow{Src: netip.MustParseAddrPort("192.0.2.1:58044"), Dst: netip.MustParseAddrPort("192.0.2.2:8080"), Proto: conntrack.TCP},
		Direction: conntrack.In,
		State:     conntrack.StateClosing,
		Expires:   time.Date(2026, 11, 22, 2, 15, 4, 0, time.UTC),
		RxPackets: 6, RxBytes: 525, RxFlagsSeen: 0x1b,
		TxPackets: 4, TxBytes: 300, TxFlagsSeen: 0x1b,
		Flags: conntrack.FlagRxClosing | conntrack.FlagTxClosing | conntrack.FlagSeenNonSyn | conntrack.FlagSeenReply,
	}
	fmt.Println(e)
	// Output:
	// TCP IN 192.0.2.1:58044 -> 192.0.2.2:8080 expires=2026-11-22T02:15:04Z RxPackets=6 RxBytes=525 RxFlagsSeen=0x1b TxPackets=4 TxBytes=300 TxFlagsSeen=0x1b Flags=0x000f [ RxClosing TxClosing SeenNonSyn SeenReply ] RevNAT=0 User=0 State=closing
}
