package lbmap

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// UplinkConfig configures [Table.AttachUplink]. The zero value serves
// frontends whose backends are all on this node (or whose traffic policy is
// Local); connections to backends on other nodes need the SNAT address of
// their family.
type UplinkConfig struct {
	// SNAT4 and SNAT6 are the node's addresses on the uplink that
	// connections to backends on other nodes are SNATed to. A zero address:
	// such connections of that family are dropped and counted
	// (Stats.DropNATFull).
	SNAT4, SNAT6 netip.Addr

	// XDP attaches, besides the tc programs, an XDP program to the uplink
	// that translates packets of connections to backends on other nodes,
	// and their replies, and sends them back out before the kernel
	// allocates an skb (see the package documentation, "XDP"). Default
	// XDPOff: tc only.
	XDP XDPMode
}

// XDPMode says whether and how [Table.AttachUplink] attaches the XDP
// program.
type XDPMode int

const (
	// XDPOff attaches no XDP program.
	XDPOff XDPMode = iota
	// XDPNative attaches in the driver (native) mode, or fails.
	XDPNative
	// XDPGeneric attaches in generic mode (after skb allocation: the
	// translation still saves the tc program's work, not the allocation).
	XDPGeneric
	// XDPAuto attaches in native mode, falling back to generic mode where
	// the driver has none.
	XDPAuto
)

// String returns "off", "native", "generic" or "auto".
func (m XDPMode) String() string {
	switch m {
	case XDPOff:
		return "off"
	case XDPNative:
		return "native"
	case XDPGeneric:
		return "generic"
	case XDPAuto:
		return "auto"
	}
	return fmt.Sprintf("XDPMode(%d)", int(m))
}

func (c UplinkConfig) validate() error {
	if c.SNAT4.IsValid() && !c.SNAT4.Unmap().Is4() {
		return fmt.Errorf("lbmap: SNAT4 %v is not an IPv4 address", c.SNAT4)
	}
	if c.SNAT6.IsValid() && (!c.SNAT6.Is6() || c.SNAT6.Is4In6()) {
		return fmt.Errorf("lbmap: SNAT6 %v is not an IPv6 address", c.SNAT6)
	}
	if c.SNAT6.Zone() != "" {
		return fmt.Errorf("lbmap: SNAT6 %v has a zone", c.SNAT6)
	}
	if c.XDP < XDPOff || c.XDP > XDPAuto {
		return fmt.Errorf("lbmap: unknown XDP mode %v", c.XDP)
	}
	return nil
}

// Uplink is the north-south load balancer attached to a node's uplink.
type Uplink struct {
	ingress, egress link.Link
	xdp             link.Link // nil without XDP
	xdpMode         XDPMode   // XDPNative or XDPGeneric when xdp is set
}

// AttachUplink loads the north-south datapath into the table's maps (and its
// conntrack table's) and attaches it with TCX to ifindex, the node's uplink,
// in the calling thread's network namespace: on ingress, packets from outside
// to NodePort, LoadBalancer and ExternalIP frontends are load-balanced (see
// the package documentation, "North-south"); on egress, replies of backends
// on this node are translated back to the frontend. ClusterIP frontends and
// all other traffic pass untouched (TCX_NEXT). With cfg.XDP, it also
// attaches the XDP program in that mode; an XDPNative attachment fails where
// the driver has no native XDP, an XDPAuto one then falls back to generic
// mode ([Uplink.XDPMode] tells which). A failed attachment undoes the others.
func (t *Table) AttachUplink(ifindex int, cfg UplinkConfig) (*Uplink, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("lbmap: attach uplink: interface index %d is not valid", ifindex)
	}
	in, xdp, err := t.loadUplinkPrograms(cfg, cfg.XDP != XDPOff)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	if xdp != nil {
		defer xdp.Close()
	}
	progs, err := t.loadDatapath()
	if err != nil {
		return nil, err
	}
	defer progs.Close()
	ingress, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: in, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, fmt.Errorf("lbmap: attach to ingress of interface %d: %w", ifindex, err)
	}
	egress, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: progs.NbLbToClient, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		ingress.Close()
		return nil, fmt.Errorf("lbmap: attach to egress of interface %d: %w", ifindex, err)
	}
	u := &Uplink{ingress: ingress, egress: egress}
	if xdp != nil {
		if u.xdp, u.xdpMode, err = attachXDP(xdp, ifindex, cfg.XDP); err != nil {
			u.Close()
			return nil, err
		}
	}
	return u, nil
}

// attachXDP attaches prog to ifindex in mode (not XDPOff) and returns the
// mode it got.
func attachXDP(prog *ebpf.Program, ifindex int, mode XDPMode) (link.Link, XDPMode, error) {
	var native error
	if mode != XDPGeneric {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
		if err == nil {
			return l, XDPNative, nil
		}
		if mode == XDPNative {
			return nil, 0, fmt.Errorf("lbmap: attach XDP in native mode to interface %d: %w", ifindex, err)
		}
		native = fmt.Errorf("native mode unavailable on interface %d: %w", ifindex, err)
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPGenericMode})
	if err != nil {
		return nil, 0, fmt.Errorf("lbmap: attach XDP in generic mode to interface %d: %w", ifindex, errors.Join(err, native))
	}
	return l, XDPGeneric, nil
}

// loadUplink loads the uplink ingress program onto t's maps, with cfg's SNAT
// addresses and the table's NAT port range.
func (t *Table) loadUplink(cfg UplinkConfig) (*ebpf.Program, error) {
	in, _, err := t.loadUplinkPrograms(cfg, false)
	return in, err
}

// loadUplinkXDP loads the uplink XDP program as loadUplink loads the tc one.
func (t *Table) loadUplinkXDP(cfg UplinkConfig) (*ebpf.Program, error) {
	in, xdp, err := t.loadUplinkPrograms(cfg, true)
	if err != nil {
		return nil, err
	}
	in.Close()
	return xdp, nil
}

// loadUplinkPrograms loads the uplink tc ingress program and, with withXDP,
// the XDP one (else nil) onto t's maps, with cfg's SNAT addresses and the
// table's NAT port range.
func (t *Table) loadUplinkPrograms(cfg UplinkConfig, withXDP bool) (in, xdp *ebpf.Program, err error) {
	if err := cfg.validate(); err != nil {
		return nil, nil, err
	}
	spec, err := loadNodeport()
	if err != nil {
		return nil, nil, fmt.Errorf("lbmap: %w", err)
	}
	var snat4 [4]byte
	var snat6 [16]byte
	if cfg.SNAT4.IsValid() {
		snat4 = cfg.SNAT4.Unmap().As4()
	}
	if cfg.SNAT6.IsValid() {
		snat6 = cfg.SNAT6.As16()
	}
	for name, v := range map[string]any{
		"np_snat4": snat4, "np_snat6": snat6, "np_port_min": t.cfg.NATPortMin, "np_port_max": t.cfg.NATPortMax,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, nil, fmt.Errorf("lbmap: set %s: %w", name, err)
		}
	}
	repl, err := t.replacements(spec)
	if err != nil {
		return nil, nil, err
	}
	opts := &ebpf.CollectionOptions{MapReplacements: repl}
	if !withXDP {
		var progs struct {
			In *ebpf.Program `ebpf:"nb_lb_uplink_in"`
		}
		if err := spec.LoadAndAssign(&progs, opts); err != nil {
			return nil, nil, fmt.Errorf("lbmap: load uplink datapath: %w", err)
		}
		return progs.In, nil, nil
	}
	var progs nodeportPrograms
	if err := spec.LoadAndAssign(&progs, opts); err != nil {
		return nil, nil, fmt.Errorf("lbmap: load uplink datapath with XDP: %w", err)
	}
	return progs.NbLbUplinkIn, progs.NbLbUplinkXdp, nil
}

// XDPMode returns the mode the XDP program is attached in: XDPNative or
// XDPGeneric, or XDPOff without one.
func (u *Uplink) XDPMode() XDPMode {
	return u.xdpMode
}

// Close detaches the uplink datapath.
func (u *Uplink) Close() error {
	var errs []error
	if u.xdp != nil {
		errs = append(errs, u.xdp.Close())
	}
	return errors.Join(append(errs, u.ingress.Close(), u.egress.Close())...)
}

// HasLocalBackends reports whether the service with key k has a usable
// backend on this node (Backend.NodeLocal): with traffic policy Local, a node
// without one drops the service's traffic from outside, so it should not
// attract it (an l2announce caller announces the address only where this is
// true). It returns an error wrapping ebpf.ErrKeyNotExist if there is no such
// service.
func (t *Table) HasLocalBackends(k ServiceKey) (bool, error) {
	k.Frontend = netip.AddrPortFrom(k.Frontend.Addr().Unmap(), k.Frontend.Port())
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.services[k]
	if !ok {
		return false, fmt.Errorf("lbmap: local backends of %v: %w", k, ebpf.ErrKeyNotExist)
	}
	return len(st.svc.usable(true)) > 0, nil
}
