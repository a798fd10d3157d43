package etcdelect_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netblocks/netblocks/l2announce"
	"github.com/netblocks/netblocks/l2announce/etcdelect"
)

// Announce a VIP from whichever node of the cluster etcd elects, failing over
// within about a second of the holder's death.
func Example() {
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://etcd.example:2379"}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	el, err := etcdelect.New(client, etcdelect.Config{
		LeaseDuration: time.Second,
		RenewDeadline: 500 * time.Millisecond,
		RetryPeriod:   200 * time.Millisecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	r, err := l2announce.New(l2announce.Config{Interfaces: []string{"^ens[0-9]+"}, Elector: el})
	if err != nil {
		log.Fatal(err)
	}
	if err := r.SetVIPs([]netip.Addr{netip.MustParseAddr("192.0.2.10")}); err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	r.Run(ctx)
}

// The order in which candidates acquire a VIP when they compete for it.
func ExamplePreferred() {
	nodes := []string{"node-a", "node-b", "node-c"}
	for _, vip := range []string{"192.0.2.10", "192.0.2.11", "192.0.2.12"} {
		k := l2announce.Key{VIP: netip.MustParseAddr(vip), Segment: "eth0"}
		fmt.Println(k, etcdelect.Preferred(k, nodes))
	}
	// Output:
	// 192.0.2.10@eth0 [node-b node-c node-a]
	// 192.0.2.11@eth0 [node-c node-a node-b]
	// 192.0.2.12@eth0 [node-c node-b node-a]
}
