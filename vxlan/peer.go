package vxlan

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Peer is another node of the overlay, as [Overlay.Sync] sees it.
type Peer struct {
	// Name identifies the peer in errors, e.g. its node name. Optional;
	// when set, it must be unique among the peers of one Sync.
	Name string

	// NodeAddr is the peer's underlay address (its [Config.LocalAddr]):
	// where VXLAN packets to it go, and the next hop of direct routes. It
	// must be of the underlay's family. Required.
	NodeAddr netip.Addr

	// PodCIDRs are the peer's pod CIDRs, routed to it. They must not overlap
	// this node's or another peer's. A peer with none gets no route, neighbour
	// or FDB entry.
	PodCIDRs []netip.Prefix

	// VTEPMAC is the MAC address of the peer's VXLAN device. Default
	// [DeriveMAC](NodeAddr), which is what the peer's device has unless its
	// [Config.MAC] was set.
	VTEPMAC net.HardwareAddr
}

// label names p in errors.
func (p Peer) label() string {
	if p.Name != "" {
		return fmt.Sprintf("peer %q", p.Name)
	}
	return fmt.Sprintf("peer %s", p.NodeAddr)
}

// mac is a MAC address as a map key.
type mac [6]byte

func (m mac) hw() net.HardwareAddr { return net.HardwareAddr(m[:]) }

// routeSpec is a route Sync installs, in the main table with the overlay's
// protocol.
type routeSpec struct {
	dst    netip.Prefix
	gw     netip.Addr
	link   int  // output device index
	onlink bool // the gateway is on the link whatever its address (tunnel routes)
}

// state is what Sync installs for a set of peers.
type state struct {
	routes map[netip.Prefix]routeSpec
	neighs map[netip.Addr]mac // VTEP address -> VTEP MAC, on the VXLAN device
	fdb    map[mac]netip.Addr // VTEP MAC -> node address, on the VXLAN device
}

// local is what plan needs to know about this node.
type local struct {
	mode     Mode
	addr     netip.Addr   // underlay address
	subnet   netip.Prefix // the underlay subnet addr is on
	podCIDRs []netip.Prefix
	mac      mac
	link     int // VXLAN device index; 0 in Native mode
	underlay int // underlay device index
}

// plan checks peers and returns the state Sync must install for them. It
// changes nothing; an error names the first problem found.
func (l *local) plan(peers []Peer) (state, error) {
	s := state{
		routes: make(map[netip.Prefix]routeSpec),
		neighs: make(map[netip.Addr]mac),
		fdb:    make(map[mac]netip.Addr),
	}

	names := make(map[string]int, len(peers))
	addrs := make(map[netip.Addr]int, len(peers))
	macs := make(map[mac]int, len(peers))
	prefixes := ownedPrefixes("this node", l.podCIDRs)

	for i, p := range peers {
		if p.Name != "" {
			if j, dup := names[p.Name]; dup {
				return state{}, fmt.Errorf("check peers: peers %d and %d are both named %q", j, i, p.Name)
			}
			names[p.Name] = i
		}

		switch {
		case !p.NodeAddr.IsValid():
			return state{}, fmt.Errorf("check peers: %s (index %d) has no node address", p.label(), i)
		case p.NodeAddr == l.addr:
			return state{}, fmt.Errorf("check peers: %s has this node's own address %s", p.label(), p.NodeAddr)
		case p.NodeAddr.Is4() != l.addr.Is4():
			return state{}, fmt.Errorf("check peers: %s has node address %s, not of the underlay's family (this node is %s)", p.label(), p.NodeAddr, l.addr)
		}
		if err := checkNodeAddr(p.NodeAddr); err != nil {
			return state{}, fmt.Errorf("check peers: %s node address: %w", p.label(), err)
		}
		if j, dup := addrs[p.NodeAddr]; dup {
			return state{}, fmt.Errorf("check peers: %s and %s have the same node address %s", peers[j].label(), p.label(), p.NodeAddr)
		}
		addrs[p.NodeAddr] = i

		var m mac
		if p.VTEPMAC == nil {
			m = mac(DeriveMAC(p.NodeAddr))
		} else {
			if err := checkMAC(p.VTEPMAC); err != nil {
				return state{}, fmt.Errorf("check peers: %s VTEP MAC: %w", p.label(), err)
			}
			m = mac(p.VTEPMAC)
		}
		if m == l.mac && l.mode != Native {
			return state{}, fmt.Errorf("check peers: %s has this node's own VTEP MAC %s", p.label(), m.hw())
		}
		if j, dup := macs[m]; dup && l.mode != Native {
			return state{}, fmt.Errorf("check peers: %s and %s have the same VTEP MAC %s", peers[j].label(), p.label(), m.hw())
		}
		macs[m] = i

		cidrs, err := checkPodCIDRs(p.PodCIDRs)
		if err != nil {
			return state{}, fmt.Errorf("check peers: %s pod CIDRs: %w", p.label(), err)
		}
		prefixes = append(prefixes, ownedPrefixes(p.label(), cidrs)...)

		if err := l.planPeer(&s, p, m, cidrs); err != nil {
			return state{}, fmt.Errorf("check peers: %w", err)
		}
	}

	if err := checkOverlaps(prefixes); err != nil {
		return state{}, fmt.Errorf("check peers: %w", err)
	}
	return s, nil
}

// planPeer adds to s the routes, neighbour and FDB entries of peer p, whose
// VTEP MAC is m and whose checked pod CIDRs are cidrs.
func (l *local) planPeer(s *state, p Peer, m mac, cidrs []netip.Prefix) error {
	sameSubnet := l.subnet.Contains(p.NodeAddr)
	if l.mode == Native && !sameSubnet {
		return fmt.Errorf("%s node address %s is outside this node's underlay subnet %s: Native mode only routes to nodes on it (CrossSubnet encapsulates to the others)",
			p.label(), p.NodeAddr, l.subnet)
	}

	var vteps [2]netip.Addr // per family: [0] IPv4, [1] IPv6
	for _, c := range vtepCIDRs(cidrs) {
		if l.mode != Native {
			if err := checkVTEPRoom(c); err != nil {
				return fmt.Errorf("%s pod CIDRs: %w", p.label(), err)
			}
		}
		vteps[familyIndex(c.Addr())] = c.Addr()
	}

	tunneled := false
	for _, c := range cidrs {
		sameFamily := c.Addr().Is4() == l.addr.Is4()
		direct := l.mode == Native || (l.mode == CrossSubnet && sameSubnet && sameFamily)
		if l.mode == Native && !sameFamily {
			return fmt.Errorf("%s pod CIDR %s is not of the underlay's family (node address %s): Native mode cannot route it", p.label(), c, p.NodeAddr)
		}
		if direct {
			s.routes[c] = routeSpec{dst: c, gw: p.NodeAddr, link: l.underlay}
			continue
		}
		vtep := vteps[familyIndex(c.Addr())]
		s.routes[c] = routeSpec{dst: c, gw: vtep, link: l.link, onlink: true}
		s.neighs[vtep] = m
		tunneled = true
	}
	if tunneled {
		s.fdb[m] = p.NodeAddr
	}
	return nil
}

// familyIndex is 0 for an IPv4 address, 1 for IPv6.
func familyIndex(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// vtepCIDRs returns, of cidrs, the lowest of each family: the ones whose
// network addresses are a node's VTEP addresses. Taking the lowest rather
// than the first makes the choice independent of order, so a node and its
// peers agree on it.
func vtepCIDRs(cidrs []netip.Prefix) []netip.Prefix {
	var low [2]netip.Prefix
	for _, c := range cidrs {
		i := familyIndex(c.Addr())
		if !low[i].IsValid() || comparePrefixes(c, low[i]) < 0 {
			low[i] = c
		}
	}
	var out []netip.Prefix
	for _, p := range low {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// comparePrefixes orders prefixes by family, address, then length.
func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// ownedPrefix is a prefix and who it belongs to, for overlap errors.
type ownedPrefix struct {
	owner  string
	prefix netip.Prefix
}

func ownedPrefixes(owner string, ps []netip.Prefix) []ownedPrefix {
	out := make([]ownedPrefix, len(ps))
	for i, p := range ps {
		out[i] = ownedPrefix{owner, p}
	}
	return out
}

// checkOverlaps returns an error naming two of ps that overlap, if any do.
// The prefixes must be masked. It sorts ps.
//
// Two masked prefixes overlap only if one contains the other. Sorted by
// address, a prefix overlaps an earlier one only if it overlaps the one just
// before it: the earlier ones that do not contain its address all end before
// it, and they do not overlap each other once checked.
func checkOverlaps(ps []ownedPrefix) error {
	slices.SortFunc(ps, func(a, b ownedPrefix) int { return comparePrefixes(a.prefix, b.prefix) })
	for i := 1; i < len(ps); i++ {
		prev, cur := ps[i-1], ps[i]
		if prev.prefix.Contains(cur.prefix.Addr()) {
			if prev.owner == cur.owner {
				return fmt.Errorf("pod CIDRs %s and %s of %s overlap", prev.prefix, cur.prefix, cur.owner)
			}
			return fmt.Errorf("pod CIDR %s of %s overlaps %s of %s", cur.prefix, cur.owner, prev.prefix, prev.owner)
		}
	}
	return nil
}
