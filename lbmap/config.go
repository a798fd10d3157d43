package lbmap

import (
	"fmt"
	"net/netip"
	"time"
)

// Defaults of Config.
const (
	DefaultMaxServices     = 65536
	DefaultMaxBackends     = 65536
	DefaultMaxSlots        = 1 << 20
	DefaultMaxAffinity     = 65536
	DefaultMaxSourceRanges = 4096
	DefaultGracePeriod     = time.Second
	DefaultMaxNAT          = 131072
	DefaultNATPortMin      = 61000
	DefaultNATPortMax      = 65535
)

// Default hairpin addresses (Config.HairpinAddr4 and HairpinAddr6).
// 169.254.42.1 is Cilium's IPv4 service loopback address, link-local
// (RFC 3927) and so never a pod's or a node's. IPv6 has no link-local
// choice that works: every interface routes fe80::/64 on-link, so a pod
// would look for the address by neighbour discovery instead of sending its
// replies to its gateway. fd4e:6574:626c:6f6f::1 is a unique local address
// (RFC 4193, from a pseudo-random /48 as the RFC asks) that no cluster is
// expected to use; pods reach it by their default route.
var (
	DefaultHairpinAddr4 = netip.MustParseAddr("169.254.42.1")
	DefaultHairpinAddr6 = netip.MustParseAddr("fd4e:6574:626c:6f6f::1")
)

// Config configures a Table. The zero value works: the defaults below.
type Config struct {
	// MaxServices is the size of the service map: one entry per service, two
	// for a non-ClusterIP service with traffic policy Local. Default 65536, at
	// most 1<<20.
	MaxServices int
	// MaxBackends is how many distinct backends (address, port, protocol) the
	// table holds; a backend shared by several services counts once. Default
	// 65536.
	MaxBackends int
	// MaxSlots bounds the backend-set slots of all services together: a
	// random service takes one slot per unit of weight (after dividing the
	// weights by their greatest common divisor), a Maglev service its table
	// size. Allocated as used. Default 1<<20.
	MaxSlots int
	// MaxAffinity is the size of the session-affinity LRU map. Default 65536.
	MaxAffinity int
	// MaxSourceRanges bounds the source-range prefixes of all services.
	// Default 4096.
	MaxSourceRanges int
	// MaglevTableSize is the Maglev table size of services that do not set
	// their own; a prime from 251 to 131071, default 16381.
	MaglevTableSize int
	// GracePeriod is how long a replaced backend set, a removed backend and
	// a freed rev-NAT index stay in the maps after nothing refers to them, so
	// that a packet that read the old state while the update happened never
	// finds it freed. They are deleted by a later Upsert, Delete or Reconcile.
	// Default 1 s.
	GracePeriod time.Duration
	// MaxNAT is the size of the uplink datapath's NAT table: two entries per
	// connection SNATed to a backend on another node. Default 131072.
	MaxNAT int
	// NATPortMin and NATPortMax bound the ports connections are SNATed to
	// (both included). A port is unique per backend address and port, so
	// each backend takes up to NATPortMax-NATPortMin+1 connections from
	// this node's uplink at once. Keep the range out of the node's ephemeral
	// port range (net.ipv4.ip_local_port_range), or the node's own
	// connections to a backend may meet a NAT port. Defaults 61000 and
	// 65535 (each for 0).
	NATPortMin, NATPortMax uint16
	// HairpinAddr4 and HairpinAddr6 are the source addresses a client
	// (a pod) sees on its own connections to a service when the backend
	// chosen is itself (hairpin; see the package documentation). Each
	// must be an address that is no pod's or node's and that pods route
	// to their gateway (the interface the datapath is attached to).
	// Defaults DefaultHairpinAddr4 (169.254.42.1) and DefaultHairpinAddr6
	// (fd4e:6574:626c:6f6f::1), each for the zero netip.Addr.
	HairpinAddr4, HairpinAddr6 netip.Addr
}

func (c Config) withDefaults() (Config, error) {
	for _, f := range []struct {
		name     string
		v        *int
		def, max int
	}{
		{"MaxServices", &c.MaxServices, DefaultMaxServices, 1 << 20},
		{"MaxBackends", &c.MaxBackends, DefaultMaxBackends, 1 << 24},
		{"MaxSlots", &c.MaxSlots, DefaultMaxSlots, 1 << 26},
		{"MaxAffinity", &c.MaxAffinity, DefaultMaxAffinity, 1 << 24},
		{"MaxSourceRanges", &c.MaxSourceRanges, DefaultMaxSourceRanges, 1 << 20},
		{"MaglevTableSize", &c.MaglevTableSize, DefaultMaglevTableSize, MaglevMaxTableSize},
		{"MaxNAT", &c.MaxNAT, DefaultMaxNAT, 1 << 24},
	} {
		switch {
		case *f.v < 0:
			return c, fmt.Errorf("lbmap: %s %d is negative", f.name, *f.v)
		case *f.v > f.max:
			return c, fmt.Errorf("lbmap: %s %d is over the limit of %d", f.name, *f.v, f.max)
		case *f.v == 0:
			*f.v = f.def
		}
	}
	if err := ValidMaglevTableSize(c.MaglevTableSize); err != nil {
		return c, err // names the size and the rule it breaks
	}
	if c.GracePeriod < 0 {
		return c, fmt.Errorf("lbmap: GracePeriod %v is negative", c.GracePeriod)
	}
	if c.NATPortMin == 0 {
		c.NATPortMin = DefaultNATPortMin
	}
	if c.NATPortMax == 0 {
		c.NATPortMax = DefaultNATPortMax
	}
	if c.NATPortMin > c.NATPortMax {
		return c, fmt.Errorf("lbmap: NAT port range %d-%d is empty (NATPortMin is above NATPortMax)", c.NATPortMin, c.NATPortMax)
	}
	if c.GracePeriod == 0 {
		c.GracePeriod = DefaultGracePeriod
	}
	if !c.HairpinAddr4.IsValid() {
		c.HairpinAddr4 = DefaultHairpinAddr4
	}
	if c.HairpinAddr4 = c.HairpinAddr4.Unmap(); !c.HairpinAddr4.Is4() || c.HairpinAddr4.IsUnspecified() {
		return c, fmt.Errorf("lbmap: HairpinAddr4 %v is not a specified IPv4 address", c.HairpinAddr4)
	}
	if !c.HairpinAddr6.IsValid() {
		c.HairpinAddr6 = DefaultHairpinAddr6
	}
	if !c.HairpinAddr6.Is6() || c.HairpinAddr6.Is4In6() || c.HairpinAddr6.IsUnspecified() || c.HairpinAddr6.Zone() != "" {
		return c, fmt.Errorf("lbmap: HairpinAddr6 %v is not a specified IPv6 address without a zone", c.HairpinAddr6)
	}
	return c, nil
}
