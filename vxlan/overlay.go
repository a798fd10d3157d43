package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/netlinksafe"
)

// mainTable is the routing table Sync installs routes in.
const mainTable = unix.RT_TABLE_MAIN

// Overlay is one node's side of the overlay: its VXLAN device (none in
// Native mode) and the routes, neighbour and FDB entries that reach its
// peers. Its methods may be called from several goroutines.
type Overlay struct {
	mu    sync.Mutex
	nl    *netlink.Handle   // in the overlay's namespace; nil once closed
	ioctl *nl.NetlinkSocket // a socket in that namespace, for ethtool ioctls
	local                   // what Sync plans with
	name  string            // of the VXLAN device
	proto netlink.RouteProtocol
	mtu   int
}

// New sets up this node's side of the overlay in the namespace cfg.NetNS:
// in Tunnel and CrossSubnet mode, the VXLAN device, created or adopted, with
// its VTEP addresses, up; in Native mode, nothing but the removal of a VXLAN
// device of cfg.Name left from another mode. It installs no route: that is
// [Overlay.Sync]'s job.
//
// A VXLAN device called cfg.Name whose VNI, port, local address, underlay
// device and flags (learning off, no remote or group, not flow-based) match
// cfg is adopted: its MTU, MAC, addresses, state and checksum offload are
// set where they differ, and a device that matches in everything is not
// touched at all, so that restarting a node agent disturbs no traffic. A
// VXLAN device that differs in the rest is deleted and created anew (its
// routes, neighbour and FDB entries go with it; the next Sync puts them
// back). A device of that name of another kind is an error.
//
// If New fails after changing something, it undoes its changes, except that
// a replaced device stays deleted.
func New(cfg Config) (*Overlay, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("create overlay: %w", err)
	}

	ns := cfg.NetNS
	if ns <= 0 {
		ns = netns.None()
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("create overlay: open netlink handle: %w", err)
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("create overlay: open ioctl socket: %w", err)
	}

	o := &Overlay{
		nl:    h,
		ioctl: sock,
		name:  cfg.Name,
		proto: netlink.RouteProtocol(cfg.RouteProtocol),
	}
	if err := o.setup(cfg); err != nil {
		o.closeHandles()
		return nil, fmt.Errorf("create overlay: %w", err)
	}
	return o, nil
}

// setup does New's work once the handles are open.
func (o *Overlay) setup(cfg Config) error {
	underlay, subnet, err := o.findUnderlay(cfg.Underlay, cfg.LocalAddr)
	if err != nil {
		return err
	}
	uattrs := underlay.Attrs()

	mtu := uattrs.MTU
	if cfg.Mode != Native {
		overhead := overhead4
		if subnet.Addr().Is6() {
			overhead = overhead6
		}
		mtu -= overhead
		if cfg.MTU > mtu {
			return fmt.Errorf("check MTU: %d exceeds underlay %s's MTU %d less %d bytes of VXLAN headers (%d)",
				cfg.MTU, uattrs.Name, uattrs.MTU, overhead, mtu)
		}
	} else if cfg.MTU > mtu {
		return fmt.Errorf("check MTU: %d exceeds underlay %s's MTU %d", cfg.MTU, uattrs.Name, mtu)
	}
	if cfg.MTU != 0 {
		mtu = cfg.MTU
	}
	if mtu < minMTU {
		return fmt.Errorf("check MTU: underlay %s's MTU %d leaves %d for the overlay, below the minimum of %d",
			uattrs.Name, uattrs.MTU, mtu, minMTU)
	}

	hw := cfg.MAC
	if hw == nil {
		hw = DeriveMAC(subnet.Addr())
	}

	o.local = local{
		mode:     cfg.Mode,
		addr:     subnet.Addr(),
		subnet:   subnet.Masked(),
		podCIDRs: cfg.PodCIDRs,
		mac:      mac(hw),
		underlay: uattrs.Index,
	}
	o.mtu = mtu

	if cfg.Mode == Native {
		return o.removeStaleDevice(cfg.Name)
	}

	spec := &deviceSpec{
		name:       cfg.Name,
		vni:        cfg.VNI,
		port:       cfg.Port,
		local:      o.addr,
		underlay:   uattrs.Index,
		mtu:        mtu,
		mac:        hw,
		txChecksum: !cfg.DisableTxChecksum,
	}
	for _, p := range vtepCIDRs(cfg.PodCIDRs) {
		spec.addrs = append(spec.addrs, p.Addr())
	}
	var j journal
	o.link, err = o.ensureDevice(spec, &j)
	if err != nil {
		return errors.Join(err, j.rollback())
	}
	return nil
}

// findUnderlay returns the underlay device and the local address with the
// prefix length of its subnet, from the device name and the address, one of
// which may be unset.
func (o *Overlay) findUnderlay(name string, addr netip.Addr) (netlink.Link, netip.Prefix, error) {
	h := o.nl
	if name == "" && !addr.IsValid() {
		link, err := o.defaultRouteLink()
		if err != nil {
			return nil, netip.Prefix{}, err
		}
		name = link.Attrs().Name
	}
	if name != "" {
		link, err := h.LinkByName(name)
		if err != nil {
			return nil, netip.Prefix{}, fmt.Errorf("find underlay device %s: %w", name, err)
		}
		addrs, err := addrList(h, link, netlink.FAMILY_ALL)
		if err != nil {
			return nil, netip.Prefix{}, fmt.Errorf("list addresses of underlay %s: %w", name, err)
		}
		if addr.IsValid() {
			for _, a := range addrs {
				if p, ok := addrPrefix(a); ok && p.Addr() == addr {
					return link, p, nil
				}
			}
			return nil, netip.Prefix{}, fmt.Errorf("find local address: %s is not assigned to underlay %s", addr, name)
		}
		for _, v4 := range []bool{true, false} {
			for _, a := range addrs {
				if p, ok := addrPrefix(a); ok && p.Addr().Is4() == v4 && p.Addr().IsGlobalUnicast() &&
					a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED|unix.IFA_F_DEPRECATED) == 0 {
					return link, p, nil
				}
			}
		}
		return nil, netip.Prefix{}, fmt.Errorf("find local address: underlay %s has no usable global unicast address", name)
	}

	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := addrList(h, nil, family)
	if err != nil {
		return nil, netip.Prefix{}, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := addrPrefix(a); ok && p.Addr() == addr {
			link, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, netip.Prefix{}, fmt.Errorf("find underlay device holding %s: %w", addr, err)
			}
			return link, p, nil
		}
	}
	return nil, netip.Prefix{}, fmt.Errorf("find underlay device: local address %s is not assigned to any device", addr)
}

// defaultRouteLink returns the device of the main table's IPv4 default
// route, or of the IPv6 one if there is no IPv4 default route.
func (o *Overlay) defaultRouteLink() (netlink.Link, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlinksafe.Dump(func() ([]netlink.Route, error) {
			return o.nl.RouteListFiltered(family, &netlink.Route{Table: mainTable}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if dst, ok := routeDst(r); ok && dst.Bits() != 0 {
				continue
			}
			index := r.LinkIndex
			if index == 0 && len(r.MultiPath) > 0 {
				index = r.MultiPath[0].LinkIndex
			}
			if index == 0 {
				continue
			}
			link, err := o.nl.LinkByIndex(index)
			if err != nil {
				return nil, fmt.Errorf("get device of the default route: %w", err)
			}
			return link, nil
		}
	}
	return nil, errors.New("find underlay device: neither LocalAddr nor Underlay is set and there is no default route")
}

// addrPrefix converts a's address and prefix length to a netip.Prefix.
func addrPrefix(a netlink.Addr) (netip.Prefix, bool) {
	if a.IPNet == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones, bits := a.Mask.Size()
	if bits != ip.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones), true
}

// Mode returns the overlay's mode.
func (o *Overlay) Mode() Mode { return o.mode }

// MTU returns the MTU pods' interfaces should have: the VXLAN device's in
// Tunnel and CrossSubnet mode, the underlay's (or [Config.MTU]) in Native
// mode.
func (o *Overlay) MTU() int { return o.mtu }

// MAC returns the VTEP MAC: the VXLAN device's MAC address, which peers need
// in their [Peer.VTEPMAC] unless it is the derived one.
func (o *Overlay) MAC() net.HardwareAddr { return slices.Clone(o.mac.hw()) }

// LinkIndex returns the index of the VXLAN device in the overlay's
// namespace, or 0 in Native mode.
func (o *Overlay) LinkIndex() int { return o.link }

// Self returns this node as a [Peer], to publish to the other nodes.
func (o *Overlay) Self() Peer {
	return Peer{
		NodeAddr: o.addr,
		PodCIDRs: slices.Clone(o.podCIDRs),
		VTEPMAC:  o.MAC(),
	}
}

// Close releases the overlay's netlink handle and socket. The device,
// routes, neighbour and FDB entries stay and keep forwarding; a later New
// with the same Config adopts them without disturbing traffic. Close may be
// called more than once; the overlay is unusable afterwards.
func (o *Overlay) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closeHandles()
	return nil
}

// closeHandles closes the handle and socket if they are open.
func (o *Overlay) closeHandles() {
	if o.nl != nil {
		o.nl.Close()
		o.nl = nil
	}
	if o.ioctl != nil {
		o.ioctl.Close()
		o.ioctl = nil
	}
}

// Delete removes everything the overlay installed, the routes carrying its
// route protocol and its VXLAN device (whose neighbour and FDB entries go
// with it), then closes it. It tries every removal even if one fails, and
// returns their errors.
func (o *Overlay) Delete() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.nl == nil {
		return fmt.Errorf("delete overlay: %w", os.ErrClosed)
	}
	defer o.closeHandles()

	var errs []error
	routes, err := ownRoutes(o.nl, o.proto)
	if err != nil {
		errs = append(errs, fmt.Errorf("list routes: %w", err))
	}
	for _, r := range routes {
		if err := o.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
		}
	}
	if o.link != 0 {
		link, err := o.nl.LinkByIndex(o.link)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
		case err != nil:
			errs = append(errs, fmt.Errorf("get device %s: %w", o.name, err))
		case link.Attrs().Name == o.name && link.Type() == "vxlan":
			if err := o.nl.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("delete device %s: %w", o.name, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete overlay: %w", errors.Join(errs...))
	}
	return nil
}
