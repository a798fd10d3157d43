package lbmap

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// How a change reaches the maps. apply plans every write first (allocating
// ids and checking capacity, so a change that does not fit changes nothing),
// then writes in dependency order, each kind with one batch operation:
//
//  1. new backends, 2. the slots of new backend sets, 3. new rev-NAT entries,
//  4. new source ranges, 5. the service entries, which switch to the new sets
//     (one map update per service: the atomic step), 6. deleted services.
//
// (Source ranges go key by key: LPM tries have no batch update.) A step that
// fails undoes the earlier ones. Replaced sets, unreferenced
// backends, removed source ranges and freed rev-NAT indexes become garbage,
// deleted by a later call once Config.GracePeriod has passed.

// maxRandomSlots bounds the slots of one random service: its weights divided
// by their greatest common divisor, summed.
const maxRandomSlots = 1 << 16

type plan struct {
	t *Table

	nextBackend uint32
	nextRevNAT  uint32
	nextSet     uint32
	newIDs      map[backendKey]uint32 // backends this plan creates
	reserved    map[uint32]bool       // their ids
	refDelta    map[backendKey]int
	newRevNATs  map[uint32]bool

	states  map[ServiceKey]*svcState // after the plan; nil for a deleted service
	entries int                      // change in service-map entries

	backendK []uint32
	backendV []lbBackend
	slotK    []lbSlotKey
	slotV    []uint32
	revK     []uint32
	revV     []lbRevNAT
	srcK     []lbSrcRangeKey
	srcV     []uint8
	svcK     []lbSvcKey
	svcV     []lbSvc
	svcOld   []*lbSvc // the value each svcK replaces, nil if new
	delK     []lbSvcKey
	delOld   []lbSvc

	g garbage
}

// apply writes upserts (normalized) and deletes. t.mu is held.
func (t *Table) apply(upserts []Service, deletes []ServiceKey) error {
	now := time.Now()
	t.collect(now)
	p := &plan{
		t: t, nextBackend: t.next.backend, nextRevNAT: t.next.revNAT, nextSet: t.next.set,
		newIDs: map[backendKey]uint32{}, reserved: map[uint32]bool{}, refDelta: map[backendKey]int{},
		newRevNATs: map[uint32]bool{}, states: map[ServiceKey]*svcState{},
	}
	for _, s := range upserts {
		if err := p.upsert(s); err != nil {
			return err
		}
	}
	for _, k := range deletes {
		p.delete(k)
	}
	if err := p.checkCapacity(); err != nil {
		return err
	}
	if err := p.write(); err != nil {
		return err
	}
	p.commit(now)
	return nil
}

func (p *plan) upsert(s Service) error {
	k := s.Key()
	old := p.t.services[k]
	st := &svcState{svc: s}
	if old != nil {
		st.revNAT = old.revNAT
	} else {
		idx, err := p.allocRevNAT()
		if err != nil {
			return err
		}
		st.revNAT = idx
		a, fam := addr16(k.Frontend.Addr())
		p.revK = append(p.revK, idx)
		p.revV = append(p.revV, lbRevNAT{Addr: a, Port: be16(k.Frontend.Port()), Family: fam})
	}

	for _, b := range s.Backends {
		if _, err := p.backendID(backendKey{b.Addr, s.Protocol, b.NodeLocal}, b); err != nil {
			return fmt.Errorf("lbmap: service %v: %w", k, err)
		}
		p.refDelta[backendKey{b.Addr, s.Protocol, b.NodeLocal}]++
	}
	var err error
	if st.internal, err = p.writeSet(s, s.usable(false)); err != nil {
		return err
	}
	if s.TrafficPolicy == Local && s.Type != ClusterIP {
		if st.external, err = p.writeSet(s, s.usable(true)); err != nil {
			return err
		}
	}

	oldSrc := map[lbSrcRangeKey]bool{}
	if old != nil {
		for _, sk := range old.srcKeys {
			oldSrc[sk] = true
		}
	}
	for _, pr := range s.SourceRanges {
		sk := srcRangeKey(st.revNAT, pr)
		st.srcKeys = append(st.srcKeys, sk)
		if !oldSrc[sk] {
			p.srcK = append(p.srcK, sk)
			p.srcV = append(p.srcV, 1)
		}
		delete(oldSrc, sk)
	}
	for sk := range oldSrc {
		p.g.srcRanges = append(p.g.srcRanges, sk)
	}

	p.putService(svcKey(k, scopeInternal), st.value(false), old, false)
	if st.external.present {
		p.putService(svcKey(k, scopeExternal), st.value(true), old, true)
	} else if old != nil && old.external.present {
		p.delK = append(p.delK, svcKey(k, scopeExternal))
		p.delOld = append(p.delOld, old.value(true))
	}
	if old != nil {
		p.release(old)
		p.entries -= old.entries()
	}
	p.entries += st.entries()
	p.states[k] = st
	return nil
}

func (p *plan) putService(k lbSvcKey, v lbSvc, old *svcState, external bool) {
	p.svcK = append(p.svcK, k)
	p.svcV = append(p.svcV, v)
	var prev *lbSvc
	if old != nil && (!external || old.external.present) {
		ov := old.value(external)
		prev = &ov
	}
	p.svcOld = append(p.svcOld, prev)
}

// release drops what an old service state held: its backend references and
// sets go, its source ranges were handled by the caller.
func (p *plan) release(old *svcState) {
	for _, b := range old.svc.Backends {
		p.refDelta[backendKey{b.Addr, old.svc.Protocol, b.NodeLocal}]--
	}
	for _, set := range []setRef{old.internal, old.external} {
		for i := range set.slots {
			p.g.slots = append(p.g.slots, lbSlotKey{SetID: set.id, Slot: i})
		}
	}
}

func (p *plan) delete(k ServiceKey) {
	old := p.t.services[k]
	p.release(old)
	p.g.srcRanges = append(p.g.srcRanges, old.srcKeys...)
	p.delK = append(p.delK, svcKey(k, scopeInternal))
	p.delOld = append(p.delOld, old.value(false))
	if old.external.present {
		p.delK = append(p.delK, svcKey(k, scopeExternal))
		p.delOld = append(p.delOld, old.value(true))
	}
	p.g.revNATs = append(p.g.revNATs, old.revNAT)
	p.entries -= old.entries()
	p.states[k] = nil
}

// backendID returns the id of backend k, allocating one (and planning its
// map entry) if it is new.
func (p *plan) backendID(k backendKey, b Backend) (uint32, error) {
	if r := p.t.backends[k]; r != nil {
		return r.id, nil
	}
	if id, ok := p.newIDs[k]; ok {
		return id, nil
	}
	if len(p.t.ids)+len(p.newIDs) >= p.t.cfg.MaxBackends {
		return 0, fmt.Errorf("more backends than the maps hold (Config.MaxBackends %d, counting removed ones in their grace period)", p.t.cfg.MaxBackends)
	}
	for {
		p.nextBackend++
		id := p.nextBackend
		if _, used := p.t.ids[id]; id == 0 || used || p.reserved[id] {
			continue
		}
		p.newIDs[k] = id
		p.reserved[id] = true
		p.backendK = append(p.backendK, id)
		p.backendV = append(p.backendV, backendValue(b))
		return id, nil
	}
}

func (p *plan) allocRevNAT() (uint32, error) {
	if len(p.t.revNATs)+len(p.newRevNATs) >= p.t.cfg.MaxServices {
		return 0, fmt.Errorf("lbmap: more services than the maps hold (Config.MaxServices %d, counting removed ones in their grace period)", p.t.cfg.MaxServices)
	}
	for {
		p.nextRevNAT++
		idx := p.nextRevNAT
		if idx == 0 || p.t.revNATs[idx] || p.newRevNATs[idx] {
			continue
		}
		p.newRevNATs[idx] = true
		return idx, nil
	}
}

// writeSet plans a new backend set of the usable backends.
func (p *plan) writeSet(s Service, usable []Backend) (setRef, error) {
	p.nextSet++
	if p.nextSet == 0 {
		p.nextSet++
	}
	ref := setRef{present: true, id: p.nextSet}
	var ids []uint32
	idOf := func(b Backend) uint32 {
		id, _ := p.backendID(backendKey{b.Addr, s.Protocol, b.NodeLocal}, b) // allocated by upsert already
		return id
	}
	switch {
	case len(usable) == 0:
		// count 0: the datapath drops the service's packets.
	case s.Algorithm == Maglev:
		mb := make([]maglevBackend, len(usable))
		for i, b := range usable {
			mb[i] = maglevBackend{Key: backendKey{b.Addr, s.Protocol, b.NodeLocal}.String(), Weight: b.Weight}
		}
		table, err := maglevTable(mb, s.MaglevTableSize)
		if err != nil {
			return ref, fmt.Errorf("lbmap: service %v: %w", s.Key(), err)
		}
		ids = make([]uint32, len(table))
		for i, idx := range table {
			ids[i] = idOf(usable[idx])
		}
		ref.maglev = uint32(s.MaglevTableSize)
	default:
		g := 0
		for _, b := range usable {
			g = gcd(g, int(b.Weight))
		}
		total := 0
		for _, b := range usable {
			total += int(b.Weight) / g
		}
		if total > maxRandomSlots {
			return ref, fmt.Errorf("lbmap: service %v: weights need %d slots, over the %d a random service may use: use coarser weights", s.Key(), total, maxRandomSlots)
		}
		ids = make([]uint32, 0, total)
		for _, b := range usable {
			id := idOf(b)
			for range int(b.Weight) / g {
				ids = append(ids, id)
			}
		}
	}
	for i, id := range ids {
		p.slotK = append(p.slotK, lbSlotKey{SetID: ref.id, Slot: uint32(i)})
		p.slotV = append(p.slotV, id)
	}
	ref.slots = uint32(len(ids))
	ref.count = ref.slots
	return ref, nil
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func (k backendKey) String() string { return k.addr.String() + "/" + k.proto.String() }

// value is the service-map value of a state (the external scope's if external).
func (st *svcState) value(external bool) lbSvc {
	set, scope := st.internal, uint8(scopeInternal)
	if external {
		set, scope = st.external, scopeExternal
	}
	v := lbSvcInfo{SetID: set.id, Count: set.count, MaglevSize: set.maglev,
		AffinityTimeout: uint32(st.svc.Affinity / time.Second), RevNAT: st.revNAT, Type: uint8(st.svc.Type)}
	if len(st.svc.SourceRanges) > 0 {
		v.Flags |= flagSourceRanges
	}
	if st.svc.TrafficPolicy == Local {
		v.Flags |= flagLocal
	}
	return lbSvc{Info: v, Key: svcKey(st.svc.Key(), scope)}
}

func (p *plan) checkCapacity() error {
	t, c := p.t, p.t.cfg
	switch {
	case t.used.svcEntries+p.entries > c.MaxServices:
		return fmt.Errorf("lbmap: %d service entries would exceed Config.MaxServices %d", t.used.svcEntries+p.entries, c.MaxServices)
	case t.used.slots+len(p.slotK) > c.MaxSlots:
		return fmt.Errorf("lbmap: %d backend-set slots would exceed Config.MaxSlots %d (replaced sets count until their grace period ends)", t.used.slots+len(p.slotK), c.MaxSlots)
	case t.used.srcRanges+len(p.srcK) > c.MaxSourceRanges:
		return fmt.Errorf("lbmap: %d source ranges would exceed Config.MaxSourceRanges %d", t.used.srcRanges+len(p.srcK), c.MaxSourceRanges)
	}
	return nil
}

// write performs the planned map writes in order, undoing them on failure.
func (p *plan) write() (err error) {
	m := p.t.maps
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	// put batch-writes new keys; its undo deletes the ones written.
	put := func(name string, keys, vals any, n int) error {
		if n == 0 {
			return nil
		}
		done, err := m[name].BatchUpdate(keys, vals, nil)
		undo = append(undo, func() { deletePrefix(m[name], keys, done) })
		if err != nil {
			return fmt.Errorf("lbmap: write %s: %w", name, err)
		}
		return nil
	}
	if err := put(mapBackends, p.backendK, p.backendV, len(p.backendK)); err != nil {
		return err
	}
	if err := put(mapSlots, p.slotK, p.slotV, len(p.slotK)); err != nil {
		return err
	}
	if err := put(mapRevNAT, p.revK, p.revV, len(p.revK)); err != nil {
		return err
	}
	// LPM tries have no batch update: one key at a time.
	for i := range p.srcK {
		if err := m[mapSrcRange].Put(&p.srcK[i], &p.srcV[i]); err != nil {
			undo = append(undo, func() { deletePrefix(m[mapSrcRange], p.srcK, i) })
			return fmt.Errorf("lbmap: write %s: %w", mapSrcRange, err)
		}
	}
	undo = append(undo, func() { deletePrefix(m[mapSrcRange], p.srcK, len(p.srcK)) })
	if len(p.svcK) > 0 {
		// BPF_F_LOCK updates an existing entry in place, under its lock, instead
		// of swapping in a new element and recycling the old one while a packet
		// may still read it (see lb.h). New keys are inserted as usual.
		done, err := m[mapSvc].BatchUpdate(p.svcK, p.svcV, &ebpf.BatchOptions{ElemFlags: uint64(ebpf.UpdateLock)})
		undo = append(undo, func() {
			for i := range done {
				if p.svcOld[i] != nil {
					m[mapSvc].Update(&p.svcK[i], p.svcOld[i], ebpf.UpdateLock)
				} else {
					m[mapSvc].Delete(&p.svcK[i])
				}
			}
		})
		if err != nil {
			return fmt.Errorf("lbmap: write %s: %w", mapSvc, err)
		}
	}
	if len(p.delK) > 0 {
		done, err := m[mapSvc].BatchDelete(p.delK, nil)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			for i := range done {
				m[mapSvc].Update(&p.delK[i], &p.delOld[i], ebpf.UpdateLock)
			}
			return fmt.Errorf("lbmap: delete from %s: %w", mapSvc, err)
		}
	}
	return nil
}

// deletePrefix deletes the first n keys of a slice of keys.
func deletePrefix(m *ebpf.Map, keys any, n int) {
	switch ks := keys.(type) {
	case []uint32:
		m.BatchDelete(ks[:n], nil)
	case []lbSlotKey:
		m.BatchDelete(ks[:n], nil)
	case []lbSrcRangeKey:
		for i := range ks[:n] {
			m.Delete(&ks[i]) // LPM tries have no batch delete
		}
	}
}

// commit records the plan in the Table after its writes succeeded.
func (p *plan) commit(now time.Time) {
	t := p.t
	for k, st := range p.states {
		if st == nil {
			delete(t.services, k)
		} else {
			t.services[k] = st
		}
	}
	for k, d := range p.refDelta {
		if id, ok := p.newIDs[k]; ok {
			if d > 0 {
				t.backends[k] = &backendRef{id: id, refs: d}
				t.ids[id] = k
			}
			continue
		}
		r := t.backends[k]
		r.refs += d
		if r.refs == 0 {
			delete(t.backends, k)
			p.g.backends = append(p.g.backends, r.id) // the id stays taken until collected
		}
	}
	for idx := range p.newRevNATs {
		t.revNATs[idx] = true
	}
	t.next.backend, t.next.revNAT, t.next.set = p.nextBackend, p.nextRevNAT, p.nextSet
	t.used.slots += len(p.slotK)
	t.used.srcRanges += len(p.srcK)
	t.used.svcEntries += p.entries
	if len(p.g.slots)+len(p.g.backends)+len(p.g.revNATs)+len(p.g.srcRanges) > 0 {
		p.g.due = now.Add(t.cfg.GracePeriod)
		t.garbage = append(t.garbage, p.g)
	}
}

// collect deletes the garbage that is due. t.mu is held. A deletion that
// fails is retried by the next call.
func (t *Table) collect(now time.Time) {
	keep := t.garbage[:0]
	for _, g := range t.garbage {
		if now.Before(g.due) || t.free(g) != nil {
			keep = append(keep, g)
		}
	}
	t.garbage = keep
}

func (t *Table) free(g garbage) error {
	ignoreMissing := func(_ int, err error) error {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return err
	}
	if len(g.slots) > 0 {
		if err := ignoreMissing(t.maps[mapSlots].BatchDelete(g.slots, nil)); err != nil {
			return err
		}
	}
	if len(g.backends) > 0 {
		if err := ignoreMissing(t.maps[mapBackends].BatchDelete(g.backends, nil)); err != nil {
			return err
		}
	}
	if len(g.revNATs) > 0 {
		if err := ignoreMissing(t.maps[mapRevNAT].BatchDelete(g.revNATs, nil)); err != nil {
			return err
		}
	}
	for i := range g.srcRanges {
		if err := t.maps[mapSrcRange].Delete(&g.srcRanges[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	t.used.slots -= len(g.slots)
	t.used.srcRanges -= len(g.srcRanges)
	for _, id := range g.backends {
		delete(t.ids, id)
	}
	for _, idx := range g.revNATs {
		delete(t.revNATs, idx)
	}
	return nil
}
