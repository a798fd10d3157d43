package lbmap

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Type is a service's type, as in Kubernetes.
type Type uint8

const (
	ClusterIP    Type = iota // reachable inside the cluster
	NodePort                 // a node address and port (traffic from outside: Table.AttachUplink)
	LoadBalancer             // an external load balancer address
	ExternalIP               // an external address routed to the nodes
)

func (t Type) String() string {
	switch t {
	case ClusterIP:
		return "ClusterIP"
	case NodePort:
		return "NodePort"
	case LoadBalancer:
		return "LoadBalancer"
	case ExternalIP:
		return "ExternalIP"
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Protocol is a service's transport protocol.
type Protocol uint8

const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Algorithm is how a new connection's backend is chosen.
type Algorithm uint8

const (
	Random Algorithm = iota // uniformly among usable backends, in proportion to weight
	Maglev                  // consistent hashing of the connection's tuple: the same backend on every node, and few connections move when backends change
)

func (a Algorithm) String() string {
	switch a {
	case Random:
		return "random"
	case Maglev:
		return "maglev"
	}
	return fmt.Sprintf("Algorithm(%d)", uint8(a))
}

// BackendState is a backend's state, as in Kubernetes EndpointSlices and Cilium.
type BackendState uint8

const (
	// Active backends take new connections.
	Active BackendState = iota
	// Terminating backends take new connections only when no backend of the
	// service is active (Kubernetes' rule), and keep their existing ones.
	Terminating
	// Quarantined backends (failed health checks) take no new connections.
	Quarantined
	// Maintenance backends take no new connections.
	Maintenance
)

func (s BackendState) String() string {
	switch s {
	case Active:
		return "active"
	case Terminating:
		return "terminating"
	case Quarantined:
		return "quarantined"
	case Maintenance:
		return "maintenance"
	}
	return fmt.Sprintf("BackendState(%d)", uint8(s))
}

// TrafficPolicy is a service's external traffic policy.
type TrafficPolicy uint8

const (
	// Cluster: any backend serves traffic from anywhere.
	Cluster TrafficPolicy = iota
	// Local: traffic from outside the cluster goes only to backends on this
	// node (Backend.NodeLocal); traffic from inside uses them all.
	Local
)

func (p TrafficPolicy) String() string {
	if p == Local {
		return "Local"
	}
	return "Cluster"
}

// Backend is one endpoint of a service.
type Backend struct {
	Addr netip.AddrPort
	// Weight is the backend's relative share of new connections; 0 takes
	// none. At least one backend of a service must weigh more than 0.
	Weight    uint16
	State     BackendState
	NodeLocal bool // runs on this node (see TrafficPolicy Local)
}

// Service is a frontend and the backends behind it.
type Service struct {
	Frontend netip.AddrPort // the service address and port
	Protocol Protocol       // TCP or UDP; the zero value is rejected
	Type     Type
	Backends []Backend // may be empty: the service then drops its traffic, and counts it
	// Algorithm chooses new connections' backends; default Random.
	Algorithm Algorithm
	// MaglevTableSize is the Maglev lookup table's size, a prime between
	// MaglevMinTableSize and MaglevMaxTableSize; 0 takes the Table's
	// Config.MaglevTableSize. Larger tables spread weights more finely.
	MaglevTableSize int
	// Affinity, if set, keeps a client (by address) on the backend it last
	// used, for this long after its last new connection. Whole seconds.
	Affinity time.Duration
	// SourceRanges, if set, are the only clients the service accepts; others'
	// packets are dropped and counted.
	SourceRanges  []netip.Prefix
	TrafficPolicy TrafficPolicy
}

// ServiceKey identifies a service: its frontend and protocol.
type ServiceKey struct {
	Frontend netip.AddrPort
	Protocol Protocol
}

func (k ServiceKey) String() string { return fmt.Sprintf("%v/%v", k.Frontend, k.Protocol) }

// Key returns the service's identity.
func (s Service) Key() ServiceKey { return ServiceKey{Frontend: s.Frontend, Protocol: s.Protocol} }

func (s Service) String() string {
	return fmt.Sprintf("%v %v %d backends", s.Key(), s.Type, len(s.Backends))
}

// maxAffinity is the longest session affinity the datapath can hold (seconds in 32 bits).
const maxAffinity = time.Duration(1<<32-1) * time.Second

// normalize validates s and returns it in canonical form: addresses
// unmapped, backends and source ranges sorted, so equal services compare
// equal. defaultM is the Table's Maglev table size.
func (s Service) normalize(defaultM int) (Service, error) {
	fail := func(format string, args ...any) (Service, error) {
		return Service{}, fmt.Errorf("lbmap: service %v: "+format, append([]any{s.Key()}, args...)...)
	}
	fa := s.Frontend.Addr().Unmap()
	switch {
	case !fa.IsValid():
		return fail("frontend has no address")
	case fa.Zone() != "":
		return fail("frontend address has a zone")
	case s.Frontend.Port() == 0:
		return fail("frontend has no port")
	case s.Protocol != TCP && s.Protocol != UDP:
		return fail("protocol %v is neither TCP nor UDP", s.Protocol)
	case s.Type > ExternalIP:
		return fail("unknown type %v", s.Type)
	case s.Algorithm > Maglev:
		return fail("unknown algorithm %v", s.Algorithm)
	case s.TrafficPolicy > Local:
		return fail("unknown traffic policy %d", s.TrafficPolicy)
	case s.Affinity < 0 || s.Affinity > maxAffinity:
		return fail("affinity %v is out of range (0 to %v)", s.Affinity, maxAffinity)
	case s.Affinity%time.Second != 0:
		return fail("affinity %v is not a whole number of seconds", s.Affinity)
	}
	out := s
	out.Frontend = netip.AddrPortFrom(fa, s.Frontend.Port())
	if s.Algorithm == Maglev {
		if out.MaglevTableSize == 0 {
			out.MaglevTableSize = defaultM
		}
		if err := ValidMaglevTableSize(out.MaglevTableSize); err != nil {
			return fail("%s", strings.TrimPrefix(err.Error(), "lbmap: "))
		}
	} else if s.MaglevTableSize != 0 {
		return fail("a Maglev table size without the Maglev algorithm")
	}

	out.Backends = make([]Backend, len(s.Backends))
	weighted := false
	for i, b := range s.Backends {
		a := b.Addr.Addr().Unmap()
		switch {
		case !a.IsValid() || b.Addr.Port() == 0:
			return fail("backend %v needs an address and a port", b.Addr)
		case a.Is4() != fa.Is4():
			return fail("backend %v is not of the frontend's family", b.Addr)
		case a.Zone() != "":
			return fail("backend %v has a zone", b.Addr)
		case b.State > Maintenance:
			return fail("backend %v has unknown state %v", b.Addr, b.State)
		}
		b.Addr = netip.AddrPortFrom(a, b.Addr.Port())
		weighted = weighted || b.Weight > 0
		out.Backends[i] = b
	}
	slices.SortFunc(out.Backends, func(x, y Backend) int { return x.Addr.Compare(y.Addr) })
	for i := 1; i < len(out.Backends); i++ {
		if out.Backends[i].Addr == out.Backends[i-1].Addr {
			return fail("backend %v is listed twice", out.Backends[i].Addr)
		}
	}
	if len(out.Backends) > 0 && !weighted {
		return fail("every backend has weight 0")
	}

	out.SourceRanges = slices.Clone(s.SourceRanges)
	for _, p := range out.SourceRanges {
		switch {
		case !p.IsValid():
			return fail("source range %v is not valid", p)
		case p.Addr().Is4() != fa.Is4():
			return fail("source range %v is not of the frontend's family", p)
		case p.Masked() != p:
			return fail("source range %v has host bits set (did you mean %v?)", p, p.Masked())
		}
	}
	slices.SortFunc(out.SourceRanges, func(x, y netip.Prefix) int {
		return cmp.Or(x.Addr().Compare(y.Addr()), cmp.Compare(x.Bits(), y.Bits()))
	})
	out.SourceRanges = slices.Compact(out.SourceRanges)
	if len(out.SourceRanges) == 0 {
		out.SourceRanges = nil
	}
	return out, nil
}

// usable returns the backends that take new connections: active ones with
// weight, or if there are none, terminating ones with weight. With localOnly,
// only NodeLocal ones count.
func (s Service) usable(localOnly bool) []Backend {
	var active, terminating []Backend
	for _, b := range s.Backends {
		if b.Weight == 0 || (localOnly && !b.NodeLocal) {
			continue
		}
		switch b.State {
		case Active:
			active = append(active, b)
		case Terminating:
			terminating = append(terminating, b)
		}
	}
	if len(active) > 0 {
		return active
	}
	return terminating
}

// clone returns a copy of s that shares no slices with it.
func (s Service) clone() Service {
	s.Backends = slices.Clone(s.Backends)
	s.SourceRanges = slices.Clone(s.SourceRanges)
	return s
}

// same reports whether s and o are the same field by field, slices in order:
// on normalized services that is equality; on raw input it recognises a
// service given again unchanged, without normalizing it.
func (s Service) same(o Service) bool {
	return s.Frontend == o.Frontend && s.Protocol == o.Protocol && s.Type == o.Type && s.Algorithm == o.Algorithm &&
		s.MaglevTableSize == o.MaglevTableSize && s.Affinity == o.Affinity && s.TrafficPolicy == o.TrafficPolicy &&
		slices.Equal(s.Backends, o.Backends) && slices.Equal(s.SourceRanges, o.SourceRanges)
}
