package l2announce

import (
	"fmt"
	"net/netip"
)

// Key names one lease: a VIP announced on one L2 segment. At most one node
// holds a Key at a time, and only that node answers for the VIP on that
// segment.
type Key struct {
	// VIP is the announced address, IPv4 or IPv6 (never IPv4-mapped IPv6).
	VIP netip.Addr
	// Segment names the LAN behind the interfaces the VIP is announced on:
	// by default the interface's name (see [Config.Segment]).
	Segment string
}

// String returns "VIP@Segment", such as "192.0.2.10@eth0".
func (k Key) String() string { return k.VIP.String() + "@" + k.Segment }

// checkVIP returns addr as a VIP (IPv4-mapped IPv6 unmapped), or an error if
// addr cannot be announced: it must be a valid unicast address that is not
// unspecified or loopback.
func checkVIP(addr netip.Addr) (netip.Addr, error) {
	addr = addr.Unmap()
	switch {
	case !addr.IsValid():
		return addr, fmt.Errorf("check VIP: invalid address")
	case addr.IsUnspecified(), addr.IsLoopback(), addr.IsMulticast(),
		addr.Is4() && addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return addr, fmt.Errorf("check VIP %s: not a unicast address", addr)
	case addr.Zone() != "":
		return addr, fmt.Errorf("check VIP %s: has a zone", addr)
	}
	return addr, nil
}
