package lbmap

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Datapath is the load balancer attached to the interface facing the
// clients: tc ingress DNATs packets to services, tc egress translates replies
// (and ICMP errors about the connections) back. A client whose connection is
// load-balanced to itself is hairpinned (see the package documentation).
type Datapath struct {
	ingress, egress link.Link
}

// Attach loads the datapath into the table's maps (and its conntrack table's)
// and attaches it with TCX to ifindex, an interface facing clients (a pod's
// host-side veth), in the calling thread's network namespace. Other traffic
// passes untouched (TCX_NEXT); packets to a service without a usable backend,
// or from a client outside its source ranges, are dropped and counted.
func (t *Table) Attach(ifindex int) (*Datapath, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("lbmap: attach: interface index %d is not valid", ifindex)
	}
	progs, err := t.loadDatapath()
	if err != nil {
		return nil, err
	}
	defer progs.Close()
	in, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: progs.NbLbFromClient, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, fmt.Errorf("lbmap: attach to ingress of interface %d: %w", ifindex, err)
	}
	out, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: progs.NbLbToClient, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		in.Close()
		return nil, fmt.Errorf("lbmap: attach to egress of interface %d: %w", ifindex, err)
	}
	return &Datapath{ingress: in, egress: out}, nil
}

// loadDatapath loads the tc programs onto t's maps and its conntrack table's.
func (t *Table) loadDatapath() (*lbPrograms, error) {
	spec, err := loadLb()
	if err != nil {
		return nil, fmt.Errorf("lbmap: %w", err)
	}
	for name, v := range map[string]any{
		"lb_hairpin4": t.cfg.HairpinAddr4.As4(), "lb_hairpin6": t.cfg.HairpinAddr6.As16(),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("lbmap: set %s: %w", name, err)
		}
	}
	repl, err := t.replacements(spec)
	if err != nil {
		return nil, err
	}
	var progs lbPrograms
	if err := spec.LoadAndAssign(&progs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return nil, fmt.Errorf("lbmap: load datapath: %w", err)
	}
	return &progs, nil
}

// Close detaches the datapath.
func (d *Datapath) Close() error {
	return errors.Join(d.ingress.Close(), d.egress.Close())
}
