package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/netlinksafe"
)

// routedPrefixes returns the allowed IPs of peers that get a route through
// the device, sorted: all but those containing a peer's endpoint.
func routedPrefixes(peers []Peer) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range peers {
	next:
		for _, ip := range p.AllowedIPs {
			for _, q := range peers {
				if q.Endpoint.IsValid() && ip.Contains(q.Endpoint.Addr()) {
					continue next
				}
			}
			out = append(out, ip)
		}
	}
	return sortPrefixes(out)
}

// routeTo returns the route to dst through the device, carrying proto.
func (d *Device) routeTo(dst netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: d.index,
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		Protocol:  netlink.RouteProtocol(d.cfg.RouteProtocol),
		Scope:     netlink.SCOPE_LINK,
		Table:     unix.RT_TABLE_MAIN,
	}
}

// ownRoutes returns the destinations of the routes of the main table through
// the device that carry the device's route protocol.
func (d *Device) ownRoutes() ([]netip.Prefix, error) {
	filter := &netlink.Route{
		LinkIndex: d.index,
		Protocol:  netlink.RouteProtocol(d.cfg.RouteProtocol),
		Table:     unix.RT_TABLE_MAIN,
	}
	routes, err := netlinksafe.Dump(func() ([]netlink.Route, error) {
		return d.nl.RouteListFiltered(netlink.FAMILY_ALL, filter,
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes via %s: %w", d.cfg.Name, err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue // a default route: not one of ours
		}
		addr, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, bits := r.Dst.Mask.Size()
		if bits == 32 {
			addr = addr.Unmap()
		}
		out = append(out, netip.PrefixFrom(addr, ones))
	}
	return sortPrefixes(out), nil
}

// syncRoutes makes the device's own routes those to want (sorted): it adds the
// missing ones, then deletes the others. On error it restores the routes as
// they were. It reports how many it added and deleted.
func (d *Device) syncRoutes(want []netip.Prefix) (added, deleted int, err error) {
	have, err := d.ownRoutes()
	if err != nil {
		return 0, 0, err
	}
	var addedRoutes, deletedRoutes []netip.Prefix
	undo := func(err error) error {
		var errs []error
		for _, p := range addedRoutes {
			if err := d.nl.RouteDel(d.routeTo(p)); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("undo: delete route %s: %w", p, err))
			}
		}
		for _, p := range deletedRoutes {
			if err := d.nl.RouteAdd(d.routeTo(p)); err != nil && !errors.Is(err, unix.EEXIST) {
				errs = append(errs, fmt.Errorf("undo: restore route %s: %w", p, err))
			}
		}
		return errors.Join(append([]error{err}, errs...)...)
	}

	for _, p := range want {
		if _, found := slices.BinarySearchFunc(have, p, comparePrefixes); found {
			continue
		}
		if err := d.nl.RouteAdd(d.routeTo(p)); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("%w (a route to it that is not this device's exists)", err)
			}
			return 0, 0, undo(fmt.Errorf("add route %s via %s: %w", p, d.cfg.Name, err))
		}
		addedRoutes = append(addedRoutes, p)
	}
	for _, p := range have {
		if _, found := slices.BinarySearchFunc(want, p, comparePrefixes); found {
			continue
		}
		if err := d.nl.RouteDel(d.routeTo(p)); err != nil && !errors.Is(err, unix.ESRCH) {
			return 0, 0, undo(fmt.Errorf("delete route %s via %s: %w", p, d.cfg.Name, err))
		}
		deletedRoutes = append(deletedRoutes, p)
	}
	return len(addedRoutes), len(deletedRoutes), nil
}

// comparePrefixes orders prefixes as sortPrefixes does.
func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
