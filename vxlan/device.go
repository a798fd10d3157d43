package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// deviceSpec is what the VXLAN device must be.
type deviceSpec struct {
	name       string
	vni        uint32
	port       uint16
	local      netip.Addr
	underlay   int // device index
	mtu        int
	mac        net.HardwareAddr
	addrs      []netip.Addr // VTEP addresses, as /32 or /128
	txChecksum bool
}

// mismatch returns why the existing VXLAN device v cannot be adopted as it
// is, or "" if it can. These are the settings the kernel cannot change on a
// live device; MTU, MAC, addresses, up and checksum offload are set in place.
func (s *deviceSpec) mismatch(v *netlink.Vxlan) string {
	local, _ := netip.AddrFromSlice(v.SrcAddr)
	switch {
	case v.FlowBased:
		return "it is flow-based (external)"
	case uint32(v.VxlanId) != s.vni:
		return fmt.Sprintf("VNI %d, want %d", v.VxlanId, s.vni)
	case v.Port != int(s.port):
		return fmt.Sprintf("port %d, want %d", v.Port, s.port)
	case local.Unmap() != s.local:
		return fmt.Sprintf("local address %s, want %s", v.SrcAddr, s.local)
	case v.VtepDevIndex != s.underlay:
		return fmt.Sprintf("underlay device index %d, want %d", v.VtepDevIndex, s.underlay)
	case v.Learning:
		return "learning is on"
	case len(v.Group) != 0 && !v.Group.IsUnspecified():
		return fmt.Sprintf("remote or group %s is set", v.Group)
	case v.Proxy, v.L2miss, v.L3miss, v.GBP:
		return "proxy, l2miss, l3miss or gbp is on"
	}
	return ""
}

// newLink returns the device to create for s.
func (s *deviceSpec) newLink() *netlink.Vxlan {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = s.name
	attrs.MTU = s.mtu
	attrs.HardwareAddr = s.mac
	return &netlink.Vxlan{
		LinkAttrs:    attrs,
		VxlanId:      int(s.vni),
		VtepDevIndex: s.underlay,
		SrcAddr:      net.IP(s.local.AsSlice()),
		Port:         int(s.port),
		Learning:     false,
	}
}

// ensureDevice makes the VXLAN device match s, recording each change in j,
// and returns its index. A VXLAN device of that name whose fixed settings
// match is adopted and changed in place (not at all when everything
// matches); one whose fixed settings differ is deleted and created anew. A
// device of that name of another kind is an error.
func (o *Overlay) ensureDevice(s *deviceSpec, j *journal) (int, error) {
	h := o.nl
	link, err := h.LinkByName(s.name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		link = nil
	case err != nil:
		return 0, fmt.Errorf("get device %s: %w", s.name, err)
	default:
		v, ok := link.(*netlink.Vxlan)
		if !ok {
			return 0, fmt.Errorf("adopt device %s: it is a %s device, not vxlan", s.name, link.Type())
		}
		if reason := s.mismatch(v); reason != "" {
			// The old device cannot be brought back if what follows
			// fails: its FDB and neighbour entries and routes went with it.
			if err := h.LinkDel(v); err != nil {
				return 0, fmt.Errorf("replace device %s (%s): delete it: %w", s.name, reason, err)
			}
			link = nil
		}
	}

	if link == nil {
		if err := h.LinkAdd(s.newLink()); err != nil {
			return 0, fmt.Errorf("create device %s: %w", s.name, err)
		}
		if link, err = h.LinkByName(s.name); err != nil {
			return 0, fmt.Errorf("get device %s: %w", s.name, err)
		}
		created := link
		j.done(func() error {
			if err := h.LinkDel(created); err != nil {
				return fmt.Errorf("delete device %s: %w", s.name, err)
			}
			return nil
		})
	}

	if err := o.configureDevice(link, s, j); err != nil {
		return 0, err
	}
	return link.Attrs().Index, nil
}

// configureDevice sets the MTU, MAC, addresses, state and checksum offload
// of link, the VXLAN device, to s, changing only what differs.
func (o *Overlay) configureDevice(link netlink.Link, s *deviceSpec, j *journal) error {
	h := o.nl
	attrs := link.Attrs()

	if attrs.MTU != s.mtu {
		old := attrs.MTU
		if err := h.LinkSetMTU(link, s.mtu); err != nil {
			return fmt.Errorf("set MTU of %s to %d: %w", s.name, s.mtu, err)
		}
		j.done(func() error { return h.LinkSetMTU(link, old) })
	}

	if !slices.Equal(attrs.HardwareAddr, s.mac) {
		old := attrs.HardwareAddr
		if err := h.LinkSetHardwareAddr(link, s.mac); err != nil {
			return fmt.Errorf("set MAC of %s to %s: %w", s.name, s.mac, err)
		}
		j.done(func() error { return h.LinkSetHardwareAddr(link, old) })
	}

	if err := o.configureAddrs(link, s, j); err != nil {
		return err
	}

	if attrs.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", s.name, err)
		}
		j.done(func() error { return h.LinkSetDown(link) })
	}

	fd := o.ioctl.GetFd()
	on, err := txChecksum(fd, s.name)
	if err != nil {
		return err
	}
	if on != s.txChecksum {
		if err := setTxChecksum(fd, s.name, s.txChecksum); err != nil {
			return err
		}
		j.done(func() error { return setTxChecksum(fd, s.name, on) })
	}
	return nil
}

// configureAddrs gives link exactly the VTEP addresses of s, leaving IPv6
// link-local addresses, which the kernel manages, alone.
func (o *Overlay) configureAddrs(link netlink.Link, s *deviceSpec, j *journal) error {
	h := o.nl
	have, err := addrList(h, link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", s.name, err)
	}

	want := make(map[netip.Addr]bool, len(s.addrs))
	for _, a := range s.addrs {
		want[a] = true
	}
	for _, a := range have {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, bits := a.Mask.Size()
		if ip.IsLinkLocalUnicast() && ip.Is6() {
			continue
		}
		if want[ip] && ones == bits {
			delete(want, ip) // present as it should be
			continue
		}
		if err := h.AddrDel(link, &a); err != nil {
			return fmt.Errorf("delete address %s from %s: %w", a.IPNet, s.name, err)
		}
		j.done(func() error { return h.AddrAdd(link, &a) })
	}

	for _, ip := range s.addrs {
		if !want[ip] {
			continue
		}
		a := hostAddr(ip)
		if err := h.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", ip, s.name, err)
		}
		j.done(func() error { return h.AddrDel(link, a) })
	}
	return nil
}

// hostAddr returns ip as a /32 or /128 address to add to a device; an IPv6
// one skips duplicate address detection, so that it is usable at once.
func hostAddr(ip netip.Addr) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
	if ip.Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// removeStaleDevice deletes a VXLAN device called name, left over from a
// tunnel mode, in Native mode. A device of another kind is not the overlay's
// and is left alone.
func (o *Overlay) removeStaleDevice(name string) error {
	link, err := o.nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		return nil
	case err != nil:
		return fmt.Errorf("get device %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Vxlan); !ok {
		return nil
	}
	if err := o.nl.LinkDel(link); err != nil {
		return fmt.Errorf("delete stale device %s: %w", name, err)
	}
	return nil
}
