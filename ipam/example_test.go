package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/netblocks/netblocks/ipam"
)

// A cluster pool gives each node its pod CIDRs; a node allocator hands out
// the node's pod addresses.
func Example() {
	ctx := context.Background()
	store := ipam.NewMemoryStore() // ipam.OpenBolt(path, ...) to keep state
	defer store.Close()

	pool, err := ipam.NewClusterPool(ipam.ClusterPoolConfig{
		Store: store,
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/104")},
	})
	if err != nil {
		panic(err)
	}
	cidrs, err := pool.AllocateNode(ctx, "worker-1")
	if err != nil {
		panic(err)
	}
	fmt.Println("worker-1:", cidrs)

	var ranges []ipam.Range
	for _, c := range cidrs {
		ranges = append(ranges, ipam.Range{Subnet: c})
	}
	pods, err := ipam.NewNodeAllocator(ipam.NodeConfig{Store: store, Name: "worker-1", Ranges: ranges})
	if err != nil {
		panic(err)
	}
	al, err := pods.Allocate(ctx, ipam.Owner{ContainerID: "3f2a9c", IfName: "eth0"})
	if err != nil {
		panic(err)
	}
	for _, ip := range al.IPs {
		fmt.Println(al.Owner, ip.Address, "via", ip.Gateway)
	}
	// Output:
	// worker-1: [10.244.0.0/24 fd00:10:244::/120]
	// 3f2a9c/eth0 10.244.0.2/24 via 10.244.0.1
	// 3f2a9c/eth0 fd00:10:244::2/120 via fd00:10:244::1
}

// GC releases every allocation whose owner is not in the valid list, such
// as the valid-attachments of a CNI GC call.
func ExampleNodeAllocator_GC() {
	ctx := context.Background()
	pods, err := ipam.NewNodeAllocator(ipam.NodeConfig{
		Store:  ipam.NewMemoryStore(),
		Ranges: []ipam.Range{{Subnet: netip.MustParsePrefix("10.244.1.0/24")}},
	})
	if err != nil {
		panic(err)
	}
	live := ipam.Owner{ContainerID: "live", IfName: "eth0"}
	gone := ipam.Owner{ContainerID: "gone", IfName: "eth0"}
	pods.Allocate(ctx, live)
	pods.Allocate(ctx, gone)
	released, err := pods.GC(ctx, []ipam.Owner{live})
	if err != nil {
		panic(err)
	}
	for _, al := range released {
		fmt.Println("released", al.Owner, al.IPs[0].Address)
	}
	// Output:
	// released gone/eth0 10.244.1.3/24
}

func ExampleWriteUsage() {
	ipam.WriteUsage(os.Stdout, []ipam.Usage{
		{Grouping: "IP Pool", CIDR: "10.244.0.0/16", Total: 65536, InUse: 5},
		{Grouping: "Block", CIDR: "10.244.0.0/26", Node: "worker-1", Total: 64, InUse: 5},
	})
	// Output:
	// +----------+---------------+-----------+------------+--------------+
	// | GROUPING |     CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |
	// +----------+---------------+-----------+------------+--------------+
	// | IP Pool  | 10.244.0.0/16 |     65536 | 5 (0%)     | 65531 (100%) |
	// | Block    | 10.244.0.0/26 |        64 | 5 (8%)     | 59 (92%)     |
	// +----------+---------------+-----------+------------+--------------+
}

// LB pools hand LoadBalancer services their addresses; a sharing key lets
// two services with different ports share one.
func ExampleLBIPAM() {
	ctx := context.Background()
	lb, err := ipam.NewLBIPAM(ipam.LBConfig{Store: ipam.NewMemoryStore()})
	if err != nil {
		panic(err)
	}
	st, err := lb.SetPool(ctx, ipam.LBPool{
		Name:                "blue",
		Blocks:              []ipam.LBBlock{{CIDR: netip.MustParsePrefix("10.10.200.0/29")}},
		ReserveFirstLastIPs: true, // Cilium's allowFirstLastIPs: "No"
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("available:", st.Available)
	web, _ := lb.Allocate(ctx, ipam.LBRequest{Service: "default/web", SharingKey: "edge",
		Ports: []ipam.ServicePort{{Port: 80, Protocol: "TCP"}}})
	dns, _ := lb.Allocate(ctx, ipam.LBRequest{Service: "default/dns", SharingKey: "edge",
		Ports: []ipam.ServicePort{{Port: 53, Protocol: "UDP"}}})
	fmt.Println(web.Service, web.Addrs, dns.Service, dns.Addrs)
	// Output:
	// available: 6
	// default/web [10.10.200.1] default/dns [10.10.200.1]
}

// Nodes claim blocks of a pool and hand out pod addresses from them; the
// usage report has the shape of calicoctl ipam show --show-blocks.
func ExampleBlockPool() {
	ctx := context.Background()
	pool, err := ipam.NewBlockPool(ipam.BlockPoolConfig{
		Store: ipam.NewMemoryStore(),
		CIDRs: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24")},
	})
	if err != nil {
		panic(err)
	}
	for i, node := range []string{"worker-1", "worker-1", "worker-2"} {
		al, err := pool.Allocate(ctx, node, ipam.Owner{ContainerID: fmt.Sprintf("pod%d", i), IfName: "eth0"})
		if err != nil {
			panic(err)
		}
		fmt.Println(node, al.IPs[0].Address)
	}
	u, _ := pool.Usage(ctx)
	ipam.WriteUsage(os.Stdout, u)
	// Output:
	// worker-1 192.168.0.0/32
	// worker-1 192.168.0.1/32
	// worker-2 192.168.0.64/32
	// +----------+-----------------+-----------+------------+-----------+
	// | GROUPING |      CIDR       | IPS TOTAL | IPS IN USE | IPS FREE  |
	// +----------+-----------------+-----------+------------+-----------+
	// | IP Pool  | 192.168.0.0/24  |       256 | 3 (1%)     | 253 (99%) |
	// | Block    | 192.168.0.0/26  |        64 | 2 (3%)     | 62 (97%)  |
	// | Block    | 192.168.0.64/26 |        64 | 1 (2%)     | 63 (98%)  |
	// +----------+-----------------+-----------+------------+-----------+
}
