package vxlan

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// maxDumpAttempts bounds the retries of a netlink dump that the kernel
// interrupted because the table changed while it was being dumped.
const maxDumpAttempts = 10

// retryDump calls dump until it returns something other than
// netlink.ErrDumpInterrupted, at most maxDumpAttempts times, as
// containernetworking's netlinksafe does: an interrupted dump may be
// incomplete, and reconciling against it could delete live entries.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range maxDumpAttempts {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	var zero T
	return zero, fmt.Errorf("retry interrupted netlink dump %d times: %w", maxDumpAttempts, err)
}

// linkList lists the links in h's namespace.
func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	return retryDump(h.LinkList)
}

// addrList lists the addresses of link (nil: of every link) of family.
func addrList(h *netlink.Handle, link netlink.Link, family int) ([]netlink.Addr, error) {
	return retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, family) })
}

// neighList lists the neighbour (or, for AF_BRIDGE, FDB) entries of the link
// with index linkIndex and of family. The kernel filters by link only under
// strict checking, so entries of other links are dropped here.
func neighList(h *netlink.Handle, linkIndex, family int) ([]netlink.Neigh, error) {
	ns, err := retryDump(func() ([]netlink.Neigh, error) { return h.NeighList(linkIndex, family) })
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
	return retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
}
