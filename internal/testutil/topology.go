package testutil

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Names of the devices [NewTopology] creates.
const (
	nodeLinkName   = "eth0"
	bridgeName     = "br0"
	bridgePortName = "node%d" // The switch's port to node i.
)

// TopologyConfig describes the network [NewTopology] builds. Its zero value
// means two nodes joined by a veth pair.
type TopologyConfig struct {
	// Nodes is the number of node namespaces. Default 2.
	Nodes int
	// Bridge joins the nodes through a Linux bridge in a namespace of its own
	// ([Topology.Switch]). Default: a direct veth pair when Nodes is 2, a
	// bridge otherwise.
	Bridge bool
	// Prefix is the IPv4 subnet of the nodes; node i gets host address i+1.
	// Default 192.0.2.0/24 (TEST-NET-1, a documentation range that is never
	// routed).
	Prefix netip.Prefix
	// Prefix6 is the IPv6 subnet of the nodes; node i gets host address i+1.
	// Default 2001:db8::/64 (the documentation range).
	Prefix6 netip.Prefix
	// MTU of every device in the topology. Default 1500; at least 1280,
	// since every node has IPv6.
	MTU int
}

// Topology is a set of node namespaces on one L2 segment, built by
// [NewTopology].
type Topology struct {
	// Nodes are the node namespaces, in order.
	Nodes []*Node
	// Switch is the namespace holding the bridge "br0" and its ports
	// "node0", "node1", ... (the peers of the nodes' eth0); nil when the
	// nodes are joined directly.
	Switch *NetNS
}

// Node is one namespace of a [Topology], with one interface on the shared
// segment.
type Node struct {
	// NS is the node's namespace.
	NS *NetNS
	// Link is the name of the node's interface inside NS: "eth0".
	Link string
	// Index is the interface index of Link inside NS.
	Index int
	// HWAddr is Link's MAC address (chosen at random by the kernel).
	HWAddr net.HardwareAddr
	// Addr is Link's IPv4 address with the topology's prefix length, e.g.
	// 192.0.2.1/24 for the first node.
	Addr netip.Prefix
	// Addr6 is Link's IPv6 address with the topology's prefix length, e.g.
	// 2001:db8::1/64 for the first node. It is added without duplicate
	// address detection (IFA_F_NODAD), so it is usable at once.
	Addr6 netip.Prefix
}

// NewTopology builds the network cfg describes and returns it ready for
// traffic: every device and loopback up, every address usable. It calls
// [RequirePrivileged] first and tb.Fatal on any error.
//
// Everything is created inside namespaces NewTopology makes (each veth pair is
// created in one of them with its peer directly in another); nothing ever
// appears in the initial namespace. The namespaces' cleanups remove it all.
func NewTopology(tb testing.TB, cfg TopologyConfig) *Topology {
	tb.Helper()

	if !requirePrivileged(tb) {
		return nil
	}

	cfg, err := cfg.withDefaults()
	if err != nil {
		tb.Fatal(err)
		return nil
	}

	top := &Topology{}
	for i := range cfg.Nodes {
		node := &Node{NS: NewNetNS(tb), Link: nodeLinkName}
		if node.Addr, err = hostPrefix(cfg.Prefix, i+1); err == nil {
			node.Addr6, err = hostPrefix(cfg.Prefix6, i+1)
		}
		if err != nil {
			tb.Fatal(err)
			return nil
		}
		top.Nodes = append(top.Nodes, node)
	}
	if cfg.Bridge {
		top.Switch = NewNetNS(tb)
	}

	if err := top.build(cfg); err != nil {
		tb.Fatal(err)
		return nil
	}
	return top
}

// withDefaults returns cfg with defaults filled in, or an error naming an
// invalid field.
func (cfg TopologyConfig) withDefaults() (TopologyConfig, error) {
	switch {
	case cfg.Nodes == 0:
		cfg.Nodes = 2
	case cfg.Nodes < 0:
		return cfg, fmt.Errorf("check topology config: Nodes %d is negative", cfg.Nodes)
	}
	if cfg.Nodes != 2 {
		cfg.Bridge = true
	}

	if !cfg.Prefix.IsValid() {
		cfg.Prefix = netip.MustParsePrefix("192.0.2.0/24")
	}
	if !cfg.Prefix.Addr().Is4() {
		return cfg, fmt.Errorf("check topology config: Prefix %s is not IPv4", cfg.Prefix)
	}
	if !cfg.Prefix6.IsValid() {
		cfg.Prefix6 = netip.MustParsePrefix("2001:db8::/64")
	}
	if !cfg.Prefix6.Addr().Is6() || cfg.Prefix6.Addr().Is4In6() {
		return cfg, fmt.Errorf("check topology config: Prefix6 %s is not IPv6", cfg.Prefix6)
	}
	cfg.Prefix, cfg.Prefix6 = cfg.Prefix.Masked(), cfg.Prefix6.Masked()

	switch {
	case cfg.MTU == 0:
		cfg.MTU = 1500
	case cfg.MTU < 1280:
		return cfg, fmt.Errorf("check topology config: MTU %d is below IPv6's minimum of 1280", cfg.MTU)
	}
	return cfg, nil
}

// hostPrefix returns host number host of p (which is masked), with p's
// length. For IPv4 it refuses the broadcast address of prefixes up to /30.
func hostPrefix(p netip.Prefix, host int) (netip.Prefix, error) {
	addr := p.Addr()
	for range host {
		addr = addr.Next()
	}
	last := lastAddr(p)
	if !addr.IsValid() || !p.Contains(addr) || (p.Addr().Is4() && p.Bits() <= 30 && addr == last) {
		return netip.Prefix{}, fmt.Errorf("allocate host %d of %s: prefix too small", host, p)
	}
	return netip.PrefixFrom(addr, p.Bits()), nil
}

// lastAddr returns the last address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := range b {
		hostBits := len(b)*8 - p.Bits() - (len(b)-1-i)*8
		switch {
		case hostBits >= 8:
			b[i] = 0xff
		case hostBits > 0:
			b[i] |= byte(1<<hostBits - 1)
		}
	}
	addr, _ := netip.AddrFromSlice(b)
	return addr
}

// build creates the links and configures the nodes.
func (top *Topology) build(cfg TopologyConfig) error {
	if top.Switch == nil {
		if err := connectDirect(top.Nodes[0], top.Nodes[1], cfg.MTU); err != nil {
			return err
		}
	} else {
		if err := top.connectBridge(cfg.MTU); err != nil {
			return err
		}
	}

	for _, node := range top.Nodes {
		if err := node.configure(); err != nil {
			return err
		}
	}
	return nil
}

// linkAttrs returns attributes for a new link with name and mtu, leaving
// everything else (such as the queue length) to the kernel.
func linkAttrs(name string, mtu int) netlink.LinkAttrs {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = mtu
	return attrs
}

// newVeth returns a veth pair named name in the namespace it is created in,
// whose peer peerName is created directly in the namespace peer.
func newVeth(name string, peer *NetNS, peerName string, mtu int) *netlink.Veth {
	veth := netlink.NewVeth(linkAttrs(name, mtu))
	veth.PeerName = peerName
	veth.PeerNamespace = netlink.NsFd(peer.Handle())
	veth.PeerMTU = uint32(mtu)
	return veth
}

// connectDirect joins a and b by a veth pair, eth0 on each side.
func connectDirect(a, b *Node, mtu int) error {
	veth := newVeth(nodeLinkName, b.NS, nodeLinkName, mtu)
	if err := a.NS.Netlink().LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth pair between %s and %s: %w", a.NS.Name(), b.NS.Name(), err)
	}
	return nil
}

// connectBridge creates the bridge in the switch namespace and one veth pair
// per node: the port "node<i>" enslaved to the bridge, the peer eth0 in the
// node's namespace.
func (top *Topology) connectBridge(mtu int) error {
	h := top.Switch.Netlink()

	// Without multicast snooping the bridge floods IPv6 neighbour discovery
	// at once, whatever the MLD state.
	snooping := false
	br := &netlink.Bridge{LinkAttrs: linkAttrs(bridgeName, mtu), MulticastSnooping: &snooping}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge in %s: %w", top.Switch.Name(), err)
	}

	ports := []netlink.Link{br}
	for i, node := range top.Nodes {
		name := fmt.Sprintf(bridgePortName, i)
		if err := h.LinkAdd(newVeth(name, node.NS, nodeLinkName, mtu)); err != nil {
			return fmt.Errorf("add veth pair between %s and %s: %w", top.Switch.Name(), node.NS.Name(), err)
		}
		port, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("get link %s in %s: %w", name, top.Switch.Name(), err)
		}
		if err := h.LinkSetMaster(port, br); err != nil {
			return fmt.Errorf("attach %s to %s in %s: %w", name, bridgeName, top.Switch.Name(), err)
		}
		ports = append(ports, port)
	}

	if err := setUp(h, "lo"); err != nil {
		return fmt.Errorf("configure switch %s: %w", top.Switch.Name(), err)
	}
	for _, port := range ports {
		if err := h.LinkSetUp(port); err != nil {
			return fmt.Errorf("set link %s up in %s: %w", port.Attrs().Name, top.Switch.Name(), err)
		}
	}
	return nil
}

// configure brings the node's loopback and eth0 up, adds its addresses and
// records eth0's index and MAC address.
func (node *Node) configure() error {
	h := node.NS.Netlink()
	if err := errors.Join(setUp(h, "lo"), setUp(h, node.Link)); err != nil {
		return fmt.Errorf("configure node %s: %w", node.NS.Name(), err)
	}

	link, err := h.LinkByName(node.Link)
	if err != nil {
		return fmt.Errorf("get link %s in %s: %w", node.Link, node.NS.Name(), err)
	}
	for _, addr := range []*netlink.Addr{
		{IPNet: prefixIPNet(node.Addr)},
		{IPNet: prefixIPNet(node.Addr6), Flags: unix.IFA_F_NODAD},
	} {
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s to %s in %s: %w", addr.IPNet, node.Link, node.NS.Name(), err)
		}
	}

	node.Index = link.Attrs().Index
	node.HWAddr = link.Attrs().HardwareAddr
	return nil
}

// setUp sets the link called name up.
func setUp(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("get link %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set link %s up: %w", name, err)
	}
	return nil
}

// prefixIPNet converts p, keeping its host bits, to a *net.IPNet.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}
