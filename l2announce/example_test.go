package l2announce_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"time"

	"github.com/netblocks/netblocks/l2announce"
)

// Announce two VIPs on every interface called ens<N>, as the only node on
// the LAN, until the process is interrupted.
func Example() {
	r, err := l2announce.New(l2announce.Config{
		Interfaces:      []string{"^ens[0-9]+"},
		RefreshInterval: time.Minute,
		Logger:          slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	err = r.SetVIPs([]netip.Addr{
		netip.MustParseAddr("192.0.2.10"),
		netip.MustParseAddr("2001:db8::10"),
	})
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// Canceled, the Responder stops answering at once and releases its
	// leases before Run returns.
	if err := r.Run(ctx); err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

// Announce only the VIPs of one pool, and treat eth1 and eth2 as one LAN
// (say, the two legs of a pair of bonded switches): one lease covers both.
func ExampleConfig_policy() {
	pool := netip.MustParsePrefix("198.51.100.0/24")
	r, err := l2announce.New(l2announce.Config{
		Interfaces: []string{"^eth[12]$"},
		Segment:    func(string) string { return "lan" },
		Eligible:   func(k l2announce.Key) bool { return pool.Contains(k.VIP) },
	})
	if err != nil {
		log.Fatal(err)
	}
	_ = r
}

// Status shows which VIPs this node answers for, and where.
func ExampleResponder_Status() {
	var r *l2announce.Responder // Running.
	for _, s := range r.Status() {
		fmt.Println(s.Key, s.Held, s.Interfaces)
	}
}

func ExampleKey() {
	k := l2announce.Key{VIP: netip.MustParseAddr("192.0.2.10"), Segment: "eth0"}
	fmt.Println(k)
	// Output: 192.0.2.10@eth0
}
