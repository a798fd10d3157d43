package testutil_test

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf/btf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

// In a real test the spec comes from the compiled object, e.g.
// loadFooObjects' CollectionSpec.Types, and the call is
// testutil.RequireLayout(t, spec.Types, "ct_key", ctKey{}).
func ExampleCheckLayout() {
	// struct ct_key { __u32 addr; __u16 src_port; __u8 l4_proto; };
	u8 := &btf.Int{Name: "__u8", Size: 1}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	b, err := btf.NewBuilder([]btf.Type{&btf.Struct{Name: "ct_key", Size: 8, Members: []btf.Member{
		{Name: "addr", Type: u32, Offset: 0},
		{Name: "src_port", Type: u16, Offset: 32},
		{Name: "l4_proto", Type: u8, Offset: 48},
	}}}, nil)
	if err != nil {
		panic(err)
	}
	spec, err := b.Spec()
	if err != nil {
		panic(err)
	}

	type ctKey struct {
		Addr    uint32
		SrcPort uint16
		L4Proto uint8
		_       uint8
	}
	fmt.Println(testutil.CheckLayout(spec, "ct_key", ctKey{}))

	type badKey struct {
		Addr    uint32
		L4Proto uint8
		_       uint8
		SrcPort uint16
	}
	fmt.Println(testutil.CheckLayout(spec, "ct_key", badKey{}))

	// Output:
	// <nil>
	// check layout of Go testutil_test.badKey against C struct ct_key: field L4Proto: offset Go 4, C member l4_proto 6
	// field SrcPort: offset Go 6, C member src_port 4
}

// Build a VLAN-tagged IPv4 TCP SYN and look at its layers with gopacket.
func ExamplePacket_Build() {
	frame, err := testutil.Packet{
		VLANs: []uint16{100},
		Src:   netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.2"),
		Proto: layers.IPProtocolTCP, SrcPort: 40000, DstPort: 80,
	}.Build()
	if err != nil {
		panic(err)
	}
	fmt.Println(len(frame), "bytes") // 58 of headers, padded to Ethernet's 60-byte minimum
	for _, l := range gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default).Layers() {
		fmt.Println(l.LayerType())
	}
	// Output:
	// 60 bytes
	// Ethernet
	// Dot1Q
	// IPv4
	// TCP
}
