package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Changes counts what a [Overlay.Sync] changed in the kernel. Its zero value
// means nothing changed.
type Changes struct {
	// Routes to peers' pod CIDRs.
	Routes Count
	// Neighbors are the permanent neighbour entries mapping a peer's VTEP
	// address to its VTEP MAC on the VXLAN device.
	Neighbors Count
	// FDB are the forwarding database entries mapping a peer's VTEP MAC to
	// its node address on the VXLAN device.
	FDB Count
}

// Count counts changes to one kind of kernel object.
type Count struct {
	// Added is the number of objects created.
	Added int
	// Updated is the number of existing objects replaced because they
	// differed (a route's next hop, a neighbour's MAC, an FDB entry's
	// destination).
	Updated int
	// Removed is the number of objects deleted.
	Removed int
}

// IsZero reports whether c counts no change.
func (c Changes) IsZero() bool { return c == Changes{} }

// String summarises c, e.g. "routes +2 ~0 -1, neighbors +1 ~0 -0, fdb +1 ~0 -0".
func (c Changes) String() string {
	return fmt.Sprintf("routes %s, neighbors %s, fdb %s", c.Routes, c.Neighbors, c.FDB)
}

// String formats c as "+added ~updated -removed".
func (c Count) String() string {
	return fmt.Sprintf("+%d ~%d -%d", c.Added, c.Updated, c.Removed)
}

// Sync makes the kernel's routes, neighbour and FDB entries reach exactly
// peers, the full set of other nodes, and reports what it changed.
//
// For each peer, in Tunnel mode (and in CrossSubnet mode for a peer off this
// node's underlay subnet) Sync installs a route to each pod CIDR via the
// peer's VTEP address on the VXLAN device (onlink), a permanent neighbour
// entry from that address to the peer's VTEP MAC, and a permanent FDB entry
// from that MAC to the peer's node address. A direct peer (Native mode, or
// on this node's subnet in CrossSubnet mode) gets a route to each pod CIDR
// via its node address on the underlay device, and nothing else.
//
// Whatever is not wanted any more is removed: routes of the main table that
// carry the overlay's route protocol, and neighbour and FDB entries on the
// VXLAN device. A peer that left leaves nothing behind. What already matches
// is not touched, so a Sync with an unchanged set changes nothing in the
// kernel and returns zero Changes.
//
// Peers are checked before anything changes; bad input (a peer with this
// node's address, two peers with one address or VTEP MAC, overlapping pod
// CIDRs, a node address of the wrong family) changes nothing. A route to a
// peer's pod CIDR that exists and is not the overlay's is never taken over:
// Sync fails with an error wrapping unix.EEXIST. If a kernel operation
// fails, Sync undoes the changes it made and returns the error.
func (o *Overlay) Sync(peers []Peer) (Changes, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.nl == nil {
		return Changes{}, fmt.Errorf("sync peers: %w", os.ErrClosed)
	}

	want, err := o.plan(peers)
	if err != nil {
		return Changes{}, fmt.Errorf("sync peers: %w", err)
	}

	r := reconciler{h: o.nl, proto: o.proto, link: o.link}
	if err := r.run(want); err != nil {
		return Changes{}, fmt.Errorf("sync peers: %w", errors.Join(err, r.j.rollback()))
	}
	return r.changes, nil
}

// reconciler applies a planned state, journalling each change.
type reconciler struct {
	h       *netlink.Handle
	proto   netlink.RouteProtocol
	link    int // VXLAN device index; 0 in Native mode
	j       journal
	changes Changes
}

// run brings the kernel to want: it removes unwanted routes first, so no
// traffic follows a route to a peer being taken apart; then puts FDB,
// neighbour entries and routes in place, in the order a packet needs them;
// then removes unwanted neighbour and FDB entries.
func (r *reconciler) run(want state) error {
	routes, err := ownRoutes(r.h, r.proto)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	var neighs, fdb []netlink.Neigh
	if r.link != 0 {
		for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			ns, err := neighList(r.h, r.link, family)
			if err != nil {
				return fmt.Errorf("list neighbors: %w", err)
			}
			neighs = append(neighs, ns...)
		}
		if fdb, err = neighList(r.h, r.link, unix.AF_BRIDGE); err != nil {
			return fmt.Errorf("list FDB entries: %w", err)
		}
	}

	// Routes: remove the unwanted, note which wanted ones are in place and
	// which wrong ones to replace.
	routeOK := make(map[netip.Prefix]bool, len(want.routes))
	routeOld := make(map[netip.Prefix]netlink.Route)
	var routeStale []netlink.Route
	for _, rt := range routes {
		dst, ok := routeDst(rt)
		spec, wanted := want.routes[dst]
		_, hasOld := routeOld[dst]
		switch {
		case !ok || !wanted || rt.Priority != defaultPriority(dst):
			routeStale = append(routeStale, rt)
		case routeMatches(rt, spec) && !routeOK[dst]:
			routeOK[dst] = true
		case !hasOld:
			routeOld[dst] = rt // replaced below
		default:
			routeStale = append(routeStale, rt) // a second route to dst
		}
	}
	for dst, rt := range routeOld {
		if routeOK[dst] {
			// Another route to dst is right: this one is surplus.
			routeStale = append(routeStale, rt)
			delete(routeOld, dst)
		}
	}
	for _, rt := range routeStale {
		if err := r.delRoute(rt); err != nil {
			return err
		}
	}

	// FDB entries, one per remote: a VXLAN FDB entry is a MAC with a list
	// of destinations, dumped as one entry per destination. A wanted MAC
	// must have exactly its destination, permanently.
	byMAC := make(map[mac][]netlink.Neigh)
	for _, n := range fdb {
		if len(n.HardwareAddr) == 6 {
			byMAC[mac(n.HardwareAddr)] = append(byMAC[mac(n.HardwareAddr)], n)
		}
	}
	for m, dst := range want.fdb {
		cur := byMAC[m]
		if len(cur) == 1 && neighAddr(cur[0]) == dst && cur[0].State&netlink.NUD_PERMANENT != 0 {
			continue
		}
		if err := r.setFDB(m, dst, cur); err != nil {
			return err
		}
	}

	// Neighbour entries: which wanted ones are in place.
	neighOK := make(map[netip.Addr]bool, len(want.neighs))
	neighOld := make(map[netip.Addr]netlink.Neigh)
	var neighStale []netlink.Neigh
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || n.State&netlink.NUD_NOARP != 0 {
			continue // the kernel's own (multicast, broadcast)
		}
		ip = ip.Unmap()
		m, wanted := want.neighs[ip]
		switch {
		case wanted && n.State&netlink.NUD_PERMANENT != 0 && len(n.HardwareAddr) == 6 && mac(n.HardwareAddr) == m:
			neighOK[ip] = true
		case wanted:
			neighOld[ip] = n
		default:
			neighStale = append(neighStale, n)
		}
	}
	for ip, m := range want.neighs {
		if neighOK[ip] {
			continue
		}
		old, had := neighOld[ip]
		if err := r.setNeigh(ip, m, old, had); err != nil {
			return err
		}
	}

	for dst, spec := range want.routes {
		if routeOK[dst] {
			continue
		}
		old, had := routeOld[dst]
		if err := r.setRoute(spec, old, had); err != nil {
			return err
		}
	}

	for _, n := range neighStale {
		if err := r.delNeigh(n); err != nil {
			return err
		}
	}
	for m, cur := range byMAC {
		if _, wanted := want.fdb[m]; wanted {
			continue
		}
		for _, n := range cur {
			if err := r.delFDB(n, &r.changes.FDB.Removed); err != nil {
				return err
			}
		}
	}
	return nil
}

// routeDst returns the destination of a dumped route.
func routeDst(rt netlink.Route) (netip.Prefix, bool) {
	if rt.Dst == nil {
		return netip.Prefix{}, false // a default route: never one of ours
	}
	ip, ok := netip.AddrFromSlice(rt.Dst.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := rt.Dst.Mask.Size()
	ip = ip.Unmap()
	if bits != ip.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones), true
}

// routeMatches reports whether the dumped route rt is the one spec describes.
func routeMatches(rt netlink.Route, spec routeSpec) bool {
	gw, _ := netip.AddrFromSlice(rt.Gw)
	return rt.LinkIndex == spec.link &&
		gw.Unmap() == spec.gw &&
		len(rt.MultiPath) == 0 &&
		rt.Scope == netlink.SCOPE_UNIVERSE &&
		rt.Type == unix.RTN_UNICAST &&
		(rt.Flags&int(netlink.FLAG_ONLINK) != 0) == spec.onlink
}

// route returns the netlink route for spec.
func (r *reconciler) route(spec routeSpec) *netlink.Route {
	rt := &netlink.Route{
		LinkIndex: spec.link,
		Dst:       &net.IPNet{IP: spec.dst.Addr().AsSlice(), Mask: net.CIDRMask(spec.dst.Bits(), spec.dst.Addr().BitLen())},
		Gw:        spec.gw.AsSlice(),
		Protocol:  r.proto,
		Table:     mainTable,
		Scope:     netlink.SCOPE_UNIVERSE,
		Type:      unix.RTN_UNICAST,
	}
	if spec.onlink {
		rt.Flags = int(netlink.FLAG_ONLINK)
	}
	return rt
}

// setRoute adds the route spec describes, replacing old, one of the
// overlay's own routes, if had. A new route is added exclusively: a route to
// the same destination that is not the overlay's is an error, never taken
// over.
func (r *reconciler) setRoute(spec routeSpec, old netlink.Route, had bool) error {
	rt := r.route(spec)
	if had {
		if err := r.h.RouteReplace(rt); err != nil {
			return fmt.Errorf("replace route %s via %s: %w", spec.dst, spec.gw, err)
		}
		r.changes.Routes.Updated++
		r.j.done(func() error { return r.h.RouteReplace(&old) })
		return nil
	}
	if err := r.h.RouteAdd(rt); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %s: a route to %s that is not the overlay's (protocol %d) exists: %w",
				spec.dst, spec.gw, spec.dst, r.proto, err)
		}
		return fmt.Errorf("add route %s via %s: %w", spec.dst, spec.gw, err)
	}
	r.changes.Routes.Added++
	r.j.done(func() error { return r.h.RouteDel(rt) })
	return nil
}

// delRoute deletes rt, a dumped route.
func (r *reconciler) delRoute(rt netlink.Route) error {
	if err := r.h.RouteDel(&rt); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil // gone meanwhile
		}
		return fmt.Errorf("delete route %s: %w", rt.Dst, err)
	}
	r.changes.Routes.Removed++
	r.j.done(func() error { return r.h.RouteAdd(&rt) })
	return nil
}

// neigh returns the permanent neighbour entry from ip to m on the VXLAN
// device.
func (r *reconciler) neigh(ip netip.Addr, m mac) *netlink.Neigh {
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	return &netlink.Neigh{
		LinkIndex:    r.link,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           ip.AsSlice(),
		HardwareAddr: m.hw(),
	}
}

// setNeigh puts the neighbour entry from ip to m in place, replacing old if
// had.
func (r *reconciler) setNeigh(ip netip.Addr, m mac, old netlink.Neigh, had bool) error {
	n := r.neigh(ip, m)
	if err := r.h.NeighSet(n); err != nil {
		return fmt.Errorf("set neighbor %s to %s: %w", ip, m.hw(), err)
	}
	if had {
		r.changes.Neighbors.Updated++
		r.j.done(func() error { return r.h.NeighSet(&old) })
	} else {
		r.changes.Neighbors.Added++
		r.j.done(func() error { return r.h.NeighDel(n) })
	}
	return nil
}

// delNeigh deletes the dumped neighbour entry n.
func (r *reconciler) delNeigh(n netlink.Neigh) error {
	if err := r.h.NeighDel(&n); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("delete neighbor %s: %w", n.IP, err)
	}
	r.changes.Neighbors.Removed++
	if n.State&netlink.NUD_PERMANENT != 0 {
		r.j.done(func() error { return r.h.NeighSet(&n) })
	}
	return nil
}

// fdbEntry returns the permanent FDB entry from m to dst on the VXLAN device.
func (r *reconciler) fdbEntry(m mac, dst netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    r.link,
		Family:       unix.AF_BRIDGE,
		Flags:        netlink.NTF_SELF,
		State:        netlink.NUD_PERMANENT,
		IP:           dst.AsSlice(),
		HardwareAddr: m.hw(),
	}
}

// setFDB makes the FDB entry of m exactly one permanent destination, dst,
// deleting the destinations cur it has now first.
func (r *reconciler) setFDB(m mac, dst netip.Addr, cur []netlink.Neigh) error {
	var removed int
	for _, n := range cur {
		if err := r.delFDB(n, &removed); err != nil {
			return err
		}
	}
	n := r.fdbEntry(m, dst)
	if err := r.h.NeighSet(n); err != nil {
		return fmt.Errorf("add FDB entry %s to %s: %w", m.hw(), dst, err)
	}
	r.j.done(func() error { return r.h.NeighDel(n) })
	if len(cur) > 0 {
		r.changes.FDB.Updated++
	} else {
		r.changes.FDB.Added++
	}
	return nil
}

// delFDB deletes one destination of a dumped FDB entry, n, and counts it in
// *count.
func (r *reconciler) delFDB(n netlink.Neigh, count *int) error {
	n.Family = unix.AF_BRIDGE
	n.Flags |= netlink.NTF_SELF
	if err := r.h.NeighDel(&n); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("delete FDB entry %s to %s: %w", n.HardwareAddr, n.IP, err)
	}
	*count++
	r.j.done(func() error { return r.h.NeighAppend(&n) })
	return nil
}

// neighAddr returns the IP address of a dumped neighbour or FDB entry.
func neighAddr(n netlink.Neigh) netip.Addr {
	ip, _ := netip.AddrFromSlice(n.IP)
	return ip.Unmap()
}

// defaultPriority is the metric the kernel gives a route to dst added
// without one.
func defaultPriority(dst netip.Prefix) int {
	if dst.Addr().Is6() {
		return 1024
	}
	return 0
}
