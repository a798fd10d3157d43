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
	return nil
}

// Uplink is the north-south load balancer attached to a node's uplink.
type Uplink struct {
	ingress, egress link.Link
}

// AttachUplink loads the north-south datapath into the table's maps (and its
// conntrack table's) and attaches it with TCX to ifindex, the node's uplink,
// in the calling thread's network namespace: on ingress, packets from outside
// to NodePort, LoadBalancer and ExternalIP frontends are load-balanced (see
// the package documentation, "North-south"); on egress, replies of backends
// on this node are translated back to the frontend. ClusterIP frontends and
// all other traffic pass untouched (TCX_NEXT).
func (t *Table) AttachUplink(ifindex int, cfg UplinkConfig) (*Uplink, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("lbmap: attach uplink: interface index %d is not valid", ifindex)
	}
	in, err := t.loadUplink(cfg)
	if err != nil {
		return nil, err
	}
	defer in.Close()
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
	return &Uplink{ingress: ingress, egress: egress}, nil
}

// loadUplink loads the uplink ingress program onto t's maps, with cfg's SNAT
// addresses and the table's NAT port range.
func (t *Table) loadUplink(cfg UplinkConfig) (*ebpf.Program, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	spec, err := loadNodeport()
	if err != nil {
		return nil, fmt.Errorf("lbmap: %w", err)
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
			return nil, fmt.Errorf("lbmap: set %s: %w", name, err)
		}
	}
	repl, err := t.replacements(spec)
	if err != nil {
		return nil, err
	}
	var progs nodeportPrograms
	if err := spec.LoadAndAssign(&progs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return nil, fmt.Errorf("lbmap: load uplink datapath: %w", err)
	}
	return progs.NbLbUplinkIn, nil
}

// Close detaches the uplink datapath.
func (u *Uplink) Close() error {
	return errors.Join(u.ingress.Close(), u.egress.Close())
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
