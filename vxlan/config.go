package vxlan

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netns"
)

// Mode says how pod traffic to another node travels.
type Mode int

const (
	// Tunnel encapsulates all traffic to other nodes' pods in VXLAN, whatever
	// the path between the nodes (Cilium's tunnel mode, Calico's
	// vxlanMode Always, flannel's vxlan backend).
	Tunnel Mode = iota
	// CrossSubnet routes traffic to a node on this node's underlay subnet
	// directly, unencapsulated, and encapsulates traffic to every other node
	// (Calico's vxlanMode CrossSubnet).
	CrossSubnet
	// Native makes no VXLAN device: every peer's pod CIDRs are routed via
	// the peer's node address on the underlay (host-L3 routing, Cilium's
	// native routing with auto-direct-node-routes, flannel's host-gw). All
	// peers must share this node's underlay subnet.
	Native
)

// String returns the mode's name, such as "CrossSubnet", or "Mode(N)".
func (m Mode) String() string {
	switch m {
	case Tunnel:
		return "Tunnel"
	case CrossSubnet:
		return "CrossSubnet"
	case Native:
		return "Native"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Defaults of [Config].
const (
	// DefaultName is the VXLAN device's default name.
	DefaultName = "nb_vxlan"
	// DefaultVNI is the default VXLAN network identifier.
	DefaultVNI = 1
	// MaxVNI is the largest VNI: the field is 24 bits wide.
	MaxVNI = 1<<24 - 1
	// DefaultPort is the default UDP port: the one Linux, Cilium and
	// flannel use.
	DefaultPort = 8472
	// IANAPort is VXLAN's IANA-assigned UDP port (RFC 7348).
	IANAPort = 4789
	// DefaultRouteProtocol marks the routes an [Overlay] installs, so it
	// can tell them from everyone else's: `ip route show proto 78` lists
	// them. 78 is unassigned in iproute2's rt_protos.
	DefaultRouteProtocol = 78
)

// Encapsulation overhead: outer IP + UDP (8) + VXLAN (8) + inner Ethernet
// (14) headers.
const (
	overhead4 = 20 + 8 + 8 + 14 // 50
	overhead6 = 40 + 8 + 8 + 14 // 70
)

// minMTU is the smallest MTU IPv4 allows (RFC 791).
const minMTU = 68

// Config describes a node's overlay. Every field has a default; the zero
// value makes a Tunnel overlay over the device of the default route, without
// pod CIDRs of its own.
type Config struct {
	// Mode is how traffic to other nodes' pods travels. Default [Tunnel].
	Mode Mode

	// Name is the VXLAN device's name, at most 15 bytes. Default
	// "nb_vxlan". In Native mode, a VXLAN device of this name left over
	// from another mode is deleted.
	Name string

	// VNI is the VXLAN network identifier, 1 to 16777215 ([MaxVNI]).
	// Default 1. All nodes of one overlay use the same VNI.
	VNI uint32

	// Port is the UDP port VXLAN packets are sent to and received on.
	// Default 8472 ([DefaultPort]); 4789 ([IANAPort]) is the IANA port. All
	// nodes of one overlay use the same port.
	Port uint16

	// LocalAddr is this node's address on the underlay network: the outer
	// source address of its VXLAN packets, and the address peers know it
	// by. It must be assigned to a device in the namespace. Default: the
	// first global unicast IPv4 address of Underlay, or its first IPv6 one
	// if it has no IPv4 address.
	LocalAddr netip.Addr

	// Underlay is the name of the device that carries the overlay. Default:
	// the device that holds LocalAddr or, if LocalAddr is unset too, the
	// device of the IPv4 default route (else the IPv6 one), as flannel
	// chooses.
	Underlay string

	// PodCIDRs are this node's pod CIDRs, IPv4, IPv6 or both. The VXLAN
	// device gets the network address of the lowest CIDR of each family as
	// its VTEP address (10.244.1.0/32 for 10.244.1.0/24), which peers route
	// to; peers' CIDRs must not overlap them. Default none: the device gets
	// no address, and traffic the node itself sends to other nodes' pods
	// leaves with an underlay address as its source.
	PodCIDRs []netip.Prefix

	// MTU is the VXLAN device's MTU, the largest pod packet the overlay
	// carries. Default the underlay's MTU less 50 bytes over an IPv4
	// underlay, 70 over IPv6: room for the outer IP, UDP, VXLAN and inner
	// Ethernet headers. It may be lower, never higher. In Native mode there
	// is no device, and MTU (default the underlay's) is only what
	// [Overlay.MTU] reports. Pods' interfaces should use [Overlay.MTU].
	MTU int

	// MAC is the VXLAN device's MAC address, the VTEP MAC peers put in
	// their neighbour and FDB entries. Default [DeriveMAC](LocalAddr): the
	// same on every restart, and computable by peers.
	MAC net.HardwareAddr

	// DisableTxChecksum turns transmit checksum offload off on the VXLAN
	// device: the workaround for the "63 second delays" where VXLAN
	// packets are NATed between nodes (see the package documentation).
	// Default false: offload stays on, and with it TSO, which carries about
	// five times the TCP throughput. New enforces the setting either way.
	DisableTxChecksum bool

	// RouteProtocol is the protocol number (rtm_protocol) the routes of
	// [Overlay.Sync] carry; Sync and [Overlay.Delete] remove only routes of
	// the main table with this number. Two overlays in one namespace need
	// different numbers (and names). Default 78 ([DefaultRouteProtocol]);
	// 1 to 4 are the kernel's and refused.
	RouteProtocol uint8

	// NetNS is the network namespace to work in. Everything goes through a
	// netlink handle and a socket opened in it when New runs; no thread
	// changes namespace after that. Default (0 or netns.None()): the
	// namespace of the thread calling New, normally the process's. The
	// handle is only used by New, which does not keep or close it.
	NetNS netns.NsHandle
}

// withDefaults returns cfg with its defaults filled in, as far as they do
// not depend on the kernel (LocalAddr, Underlay, MTU and MAC may stay unset),
// or an error naming what is wrong.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Mode < Tunnel || cfg.Mode > Native {
		return cfg, fmt.Errorf("check config: unknown %v", cfg.Mode)
	}

	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if err := checkLinkName(cfg.Name); err != nil {
		return cfg, fmt.Errorf("check config: device name: %w", err)
	}

	switch {
	case cfg.VNI == 0:
		cfg.VNI = DefaultVNI
	case cfg.VNI > MaxVNI:
		return cfg, fmt.Errorf("check config: VNI %d is out of range 1-%d", cfg.VNI, MaxVNI)
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}

	if cfg.LocalAddr.IsValid() {
		if err := checkNodeAddr(cfg.LocalAddr); err != nil {
			return cfg, fmt.Errorf("check config: local address: %w", err)
		}
	}
	if cfg.Underlay != "" {
		if err := checkLinkName(cfg.Underlay); err != nil {
			return cfg, fmt.Errorf("check config: underlay: %w", err)
		}
	}

	cidrs, err := checkPodCIDRs(cfg.PodCIDRs)
	if err != nil {
		return cfg, fmt.Errorf("check config: pod CIDRs: %w", err)
	}
	cfg.PodCIDRs = cidrs
	if cfg.Mode != Native {
		for _, p := range vtepCIDRs(cfg.PodCIDRs) {
			if err := checkVTEPRoom(p); err != nil {
				return cfg, fmt.Errorf("check config: pod CIDRs: %w", err)
			}
		}
	}
	if err := checkOverlaps(ownedPrefixes("this node", cfg.PodCIDRs)); err != nil {
		return cfg, fmt.Errorf("check config: pod CIDRs: %w", err)
	}

	if cfg.MTU < 0 {
		return cfg, fmt.Errorf("check config: MTU %d is negative", cfg.MTU)
	}
	if cfg.MTU != 0 && cfg.MTU < minMTU {
		return cfg, fmt.Errorf("check config: MTU %d is below the minimum of %d", cfg.MTU, minMTU)
	}

	if cfg.MAC != nil {
		if err := checkMAC(cfg.MAC); err != nil {
			return cfg, fmt.Errorf("check config: MAC: %w", err)
		}
		cfg.MAC = append(net.HardwareAddr(nil), cfg.MAC...)
	}

	switch {
	case cfg.RouteProtocol == 0:
		cfg.RouteProtocol = DefaultRouteProtocol
	case cfg.RouteProtocol <= 4:
		return cfg, fmt.Errorf("check config: route protocol %d is reserved for the kernel (0-4)", cfg.RouteProtocol)
	}
	return cfg, nil
}

// checkLinkName returns an error if the kernel would refuse name for a
// device.
func checkLinkName(name string) error {
	switch {
	case len(name) > 15:
		return fmt.Errorf("%q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid device name", name)
	case strings.ContainsAny(name, "/: \t\n\x00"):
		return fmt.Errorf("%q contains '/', ':' or white space", name)
	}
	return nil
}

// checkNodeAddr returns an error unless a is a unicast address usable as a
// node's underlay address.
func checkNodeAddr(a netip.Addr) error {
	switch {
	case a.Zone() != "":
		return fmt.Errorf("%s has a zone", a)
	case a.Is4In6():
		return fmt.Errorf("%s is an IPv4-mapped IPv6 address; use the IPv4 form", a)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s is not a unicast address", a)
	}
	return nil
}

// checkMAC returns an error unless mac is a 6-byte unicast MAC address other
// than zero.
func checkMAC(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("%q is %d bytes long, not 6", mac, len(mac))
	case mac[0]&1 != 0:
		return fmt.Errorf("%s is a multicast address", mac)
	case [6]byte(mac) == [6]byte{}:
		return fmt.Errorf("%s is the zero address", mac)
	}
	return nil
}

// checkPodCIDRs checks a node's pod CIDRs and returns a copy of them.
func checkPodCIDRs(cidrs []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, p := range cidrs {
		switch {
		case !p.IsValid():
			return nil, fmt.Errorf("invalid prefix %s", p)
		case p.Addr().Is4In6():
			return nil, fmt.Errorf("%s is an IPv4-mapped IPv6 prefix; use the IPv4 form", p)
		case p != p.Masked():
			return nil, fmt.Errorf("%s has host bits set (the prefix is %s)", p, p.Masked())
		case p.Bits() == 0:
			return nil, fmt.Errorf("%s covers every address", p)
		case p.Addr().IsMulticast(), p.Addr().IsLoopback():
			return nil, fmt.Errorf("%s is not a unicast range", p)
		}
		out = append(out, p)
	}
	return out, nil
}

// checkVTEPRoom returns an error if p, a CIDR whose network address is to be
// a VTEP address, is a single address: that address is a pod's.
func checkVTEPRoom(p netip.Prefix) error {
	if p.Bits() == p.Addr().BitLen() {
		return fmt.Errorf("%s is a single address, leaving none for the VTEP address (the network address of the lowest CIDR of each family)", p)
	}
	return nil
}
