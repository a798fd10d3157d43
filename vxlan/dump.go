package vxlan

import (
	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/netlinksafe"
)

// linkList lists the links in h's namespace.
func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	return netlinksafe.Dump(h.LinkList)
}

// addrList lists the addresses of link (nil: of every link) of family.
func addrList(h *netlink.Handle, link netlink.Link, family int) ([]netlink.Addr, error) {
	return netlinksafe.Dump(func() ([]netlink.Addr, error) { return h.AddrList(link, family) })
}

// neighList lists the neighbour (or, for AF_BRIDGE, FDB) entries of the link
// with index linkIndex and of family. The kernel filters by link only under
// strict checking, so entries of other links are dropped here.
func neighList(h *netlink.Handle, linkIndex, family int) ([]netlink.Neigh, error) {
	ns, err := netlinksafe.Dump(func() ([]netlink.Neigh, error) { return h.NeighList(linkIndex, family) })
	if err != nil {
		return nil, err
	}
	out := ns[:0]
	for _, n := range ns {
		if n.LinkIndex == linkIndex {
			out = append(out, n)
		}
	}
	return out, nil
}

// ownRoutes lists the routes of the main table, of every family, that carry
// protocol proto.
func ownRoutes(h *netlink.Handle, proto netlink.RouteProtocol) ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: proto, Table: mainTable}
	return netlinksafe.Dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
}
