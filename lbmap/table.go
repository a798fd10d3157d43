package lbmap

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/netblocks/netblocks/conntrack"
)

// Map names, as in bpf/lb.h.
const (
	mapSvc      = "nb_lb_svc"
	mapSlots    = "nb_lb_slots"
	mapBackends = "nb_lb_backends"
	mapRevNAT   = "nb_lb_revnat"
	mapAffinity = "nb_lb_affinity"
	mapSrcRange = "nb_lb_src_range"
	mapStats    = "nb_lb_stats"
	mapNAT      = "nb_lb_nat"
)

// Table holds services in BPF maps for the datapath (Table.Attach) and the
// socket-level load balancer (Table.AttachCgroup). Its methods are safe for
// concurrent use; writes are serialized.
type Table struct {
	cfg  Config
	ct   *conntrack.Table
	maps map[string]*ebpf.Map

	mu       sync.Mutex
	services map[ServiceKey]*svcState
	backends map[backendKey]*backendRef
	ids      map[uint32]backendKey // backend ids in use, live or waiting out the grace period
	revNATs  map[uint32]bool       // rev-NAT indexes in use, likewise
	next     struct {
		backend uint32
		revNAT  uint32
		set     uint32
	}
	used    struct{ slots, srcRanges, svcEntries int } // live and in garbage
	garbage []garbage
}

// svcState is what the Table wrote for one service.
type svcState struct {
	svc      Service // normalized
	raw      Service // as last given, to recognise an unchanged service without normalizing it
	revNAT   uint32
	internal setRef
	external setRef // only for traffic policy Local on a non-ClusterIP service
	srcKeys  []lbSrcRangeKey
}

func (s *svcState) entries() int {
	if s.external.present {
		return 2
	}
	return 1
}

// setRef is a backend set written to nb_lb_slots.
type setRef struct {
	present bool
	id      uint32
	slots   uint32 // slots written
	count   uint32 // lb_svc.count
	maglev  uint32 // lb_svc.maglev_size
}

type backendKey struct {
	addr  netip.AddrPort
	proto Protocol
	local bool // Backend.NodeLocal, which the backend's entry records
}

type backendRef struct {
	id   uint32
	refs int
}

// garbage is state nothing refers to any more, deleted once due.
type garbage struct {
	due       time.Time
	slots     []lbSlotKey
	backends  []uint32
	revNATs   []uint32
	srcRanges []lbSrcRangeKey
}

// New creates a Table's maps. ct is the connection-tracking table the
// datapath keeps each connection's backend in; it must outlive the Table.
func New(cfg Config, ct *conntrack.Table) (*Table, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if ct == nil {
		return nil, errors.New("lbmap: New needs a conntrack table")
	}
	spec, err := loadLb()
	if err != nil {
		return nil, fmt.Errorf("lbmap: %w", err)
	}
	t := &Table{
		cfg: cfg, ct: ct, maps: map[string]*ebpf.Map{},
		services: map[ServiceKey]*svcState{}, backends: map[backendKey]*backendRef{},
		ids: map[uint32]backendKey{}, revNATs: map[uint32]bool{},
	}
	sizes := map[string]int{
		mapSvc: cfg.MaxServices, mapSlots: cfg.MaxSlots, mapBackends: cfg.MaxBackends,
		mapRevNAT: cfg.MaxServices, mapAffinity: cfg.MaxAffinity, mapSrcRange: cfg.MaxSourceRanges, mapStats: 0,
		mapNAT: cfg.MaxNAT,
	}
	for name, size := range sizes {
		ms := spec.Maps[name].Copy()
		if size > 0 {
			ms.MaxEntries = uint32(size)
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("lbmap: create map %s: %w", name, err)
		}
		t.maps[name] = m
	}
	return t, nil
}

// Close releases the maps. An attached datapath keeps the maps it uses.
func (t *Table) Close() error {
	var errs []error
	for _, m := range t.maps {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

// replacements adapts spec, a collection that includes lb.h (and conntrack.h),
// to this table's maps.
func (t *Table) replacements(spec *ebpf.CollectionSpec) (map[string]*ebpf.Map, error) {
	repl, err := t.ct.MapReplacements(spec)
	if err != nil {
		return nil, fmt.Errorf("lbmap: %w", err)
	}
	for name, m := range t.maps {
		ms, ok := spec.Maps[name]
		if !ok {
			continue
		}
		ms.MaxEntries = m.MaxEntries()
		repl[name] = m
	}
	return repl, nil
}

// Upsert adds s, or replaces the service with its key. Packets see the old
// service or the new one, never a mix.
func (t *Table) Upsert(s Service) error {
	n, err := s.normalize(t.cfg.MaglevTableSize)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.services[n.Key()]; ok && old.svc.same(n) {
		old.raw = s.clone()
		return nil
	}
	if err := t.apply([]Service{n}, nil); err != nil {
		return err
	}
	t.services[n.Key()].raw = s.clone()
	return nil
}

// Delete removes the service with key k. It returns an error wrapping
// ebpf.ErrKeyNotExist if there is none.
func (t *Table) Delete(k ServiceKey) error {
	k.Frontend = netip.AddrPortFrom(k.Frontend.Addr().Unmap(), k.Frontend.Port())
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.services[k]; !ok {
		return fmt.Errorf("lbmap: delete service %v: %w", k, ebpf.ErrKeyNotExist)
	}
	return t.apply(nil, []ServiceKey{k})
}

// List returns the services, sorted by frontend and protocol, in the
// canonical form the Table keeps (backends and source ranges sorted).
func (t *Table) List() []Service {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Service, 0, len(t.services))
	for _, st := range t.services {
		out = append(out, st.svc)
	}
	slices.SortFunc(out, func(a, b Service) int {
		if c := a.Frontend.Compare(b.Frontend); c != 0 {
			return c
		}
		return int(a.Protocol) - int(b.Protocol)
	})
	return out
}

// ReconcileResult counts what Reconcile changed.
type ReconcileResult struct {
	Added, Updated, Deleted, Unchanged int
}

// Reconcile makes the table hold exactly desired: it adds, updates and
// deletes services as needed and writes the difference with batch
// operations. Every service is validated first; if any is invalid, or two
// share a key, nothing changes.
func (t *Table) Reconcile(desired []Service) (ReconcileResult, error) {
	var (
		res     ReconcileResult
		upserts []Service
		raws    []Service
	)
	seen := make(map[ServiceKey]bool, len(desired))
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range desired {
		k := ServiceKey{Frontend: netip.AddrPortFrom(s.Frontend.Addr().Unmap(), s.Frontend.Port()), Protocol: s.Protocol}
		if seen[k] {
			return ReconcileResult{}, fmt.Errorf("lbmap: reconcile: service %v is listed twice", k)
		}
		seen[k] = true
		old, ok := t.services[k]
		if ok && old.raw.same(s) {
			res.Unchanged++ // validated when it was written
			continue
		}
		n, err := s.normalize(t.cfg.MaglevTableSize)
		if err != nil {
			return ReconcileResult{}, err
		}
		switch {
		case !ok:
			res.Added++
		case old.svc.same(n):
			res.Unchanged++
			old.raw = s.clone()
			continue
		default:
			res.Updated++
		}
		upserts = append(upserts, n)
		raws = append(raws, s)
	}
	var deletes []ServiceKey
	for k := range t.services {
		if !seen[k] {
			deletes = append(deletes, k)
		}
	}
	res.Deleted = len(deletes)
	if len(upserts) == 0 && len(deletes) == 0 {
		t.collect(time.Now())
		return res, nil
	}
	if err := t.apply(upserts, deletes); err != nil {
		return ReconcileResult{}, err
	}
	for i, n := range upserts {
		t.services[n.Key()].raw = raws[i].clone()
	}
	return res, nil
}

// Stats are the datapath's counters, summed over CPUs.
type Stats struct {
	DNAT            uint64 // packets translated to a backend
	RevNAT          uint64 // replies translated back to the frontend
	RevNATICMP      uint64 // ICMP errors translated back
	DropNoBackend   uint64 // packets to a service without a usable backend, dropped
	DropSourceRange uint64 // packets from clients outside a service's source ranges, dropped
	SockTranslate   uint64 // socket connects and sends translated to a backend
	Reselect        uint64 // connections whose backend was removed, moved to another
	SNAT            uint64 // uplink: packets to a backend on another node, SNATed to this node
	RevSNAT         uint64 // uplink: replies of SNATed connections translated back
	DropNATFull     uint64 // uplink: new connections to a remote backend without a free NAT port (or SNAT address), dropped
	Hairpin         uint64 // packets of clients load-balanced to themselves (both ways), sent back into their interface
	XDPForward      uint64 // uplink XDP: packets to a remote backend translated and sent back out (also in DNAT and SNAT)
	XDPReverse      uint64 // uplink XDP: replies of SNATed connections translated and sent back out (also in RevSNAT)
}

// Stats reads the datapath's counters.
func (t *Table) Stats() (Stats, error) {
	var s Stats
	for idx, f := range map[uint32]*uint64{
		statDNAT: &s.DNAT, statRevNAT: &s.RevNAT, statRevNATICMP: &s.RevNATICMP, statDropNoBackend: &s.DropNoBackend,
		statDropSourceRange: &s.DropSourceRange, statSockTranslate: &s.SockTranslate, statReselect: &s.Reselect,
		statSNAT: &s.SNAT, statRevSNAT: &s.RevSNAT, statDropNATFull: &s.DropNATFull,
		statHairpin: &s.Hairpin, statXDPForward: &s.XDPForward, statXDPReverse: &s.XDPReverse,
	} {
		var perCPU []uint64
		if err := t.maps[mapStats].Lookup(idx, &perCPU); err != nil {
			return Stats{}, fmt.Errorf("lbmap: read stats: %w", err)
		}
		for _, v := range perCPU {
			*f += v
		}
	}
	return s, nil
}
