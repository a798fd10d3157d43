package xdpfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// Add adds rules to the set in force, all of one family. Rules already
// present are left as they are. Each rule takes effect on its own, at once;
// the call is all or nothing: on error, none of them is added.
func (f *Filter) Add(rules ...netip.Prefix) error {
	rules, err := validate(rules, true)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	next := make(map[netip.Prefix]uint32, len(f.rules)+len(rules))
	for p, id := range f.rules {
		next[p] = id
	}
	var added []netip.Prefix
	for _, p := range rules {
		if _, ok := next[p]; !ok {
			next[p] = 0
			added = append(added, p)
		}
	}
	if len(added) == 0 {
		return nil
	}
	if err := f.capacity(next); err != nil {
		return err
	}
	ids, err := f.assignIDs(added)
	if err != nil {
		return err
	}
	if err := f.writeRules(f.active, added, ids); err != nil {
		f.freeIDs(ids)
		return err
	}
	if err := f.writeConfig(f.active, f.revision+1); err != nil {
		f.deleteRules(f.active, added)
		f.freeIDs(ids)
		return err
	}
	for i, p := range added {
		f.rules[p] = ids[i]
	}
	f.revision++
	return nil
}

// Remove removes rules from the set in force, all of one family. A rule
// that is not in force is an error (wrapping ebpf.ErrKeyNotExist), and then
// nothing is removed.
func (f *Filter) Remove(rules ...netip.Prefix) error {
	rules, err := validate(rules, true)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range rules {
		if _, ok := f.rules[p]; !ok {
			return fmt.Errorf("xdpfilter: remove %v: %w", p, ebpf.ErrKeyNotExist)
		}
	}
	if len(rules) == 0 {
		return nil
	}
	if err := f.deleteRules(f.active, rules); err != nil {
		// Put back what went, so that nothing changed.
		ids := make([]uint32, len(rules))
		for i, p := range rules {
			ids[i] = f.rules[p]
		}
		f.writeRules(f.active, rules, ids)
		return err
	}
	for _, p := range rules {
		id := f.rules[p]
		delete(f.rules, p)
		if _, stale := f.stale[p]; !stale {
			delete(f.ids, id)
		}
	}
	f.revision++
	return f.writeConfig(f.active, f.revision)
}

// Replace makes set the rules in force, of either family or both,
// atomically: it fills the inactive buffer with set, then switches to it with
// one map write, so a packet is classified by the old set or by the new one,
// never a mix. On error the old set stays in force.
func (f *Filter) Replace(set []netip.Prefix) error {
	set, err := validate(set, false)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(set) == len(f.rules) && !slices.ContainsFunc(set, func(p netip.Prefix) bool { _, ok := f.rules[p]; return !ok }) {
		return nil // the set in force already: nothing to change
	}
	next := make(map[netip.Prefix]uint32, len(set))
	for _, p := range set {
		next[p] = 0
	}
	if err := f.capacity(next); err != nil {
		return err
	}
	inactive := 1 - f.active

	// Empty the inactive buffer of the set before last.
	if err := f.clearStale(inactive); err != nil {
		return err
	}
	// Rules in force keep their ids (and counters); new ones get ids.
	var fresh []netip.Prefix
	for _, p := range set {
		if id, ok := f.rules[p]; ok {
			next[p] = id
		} else {
			fresh = append(fresh, p)
		}
	}
	ids, err := f.assignIDs(fresh)
	if err != nil {
		return err
	}
	for i, p := range fresh {
		next[p] = ids[i]
	}
	all := make([]uint32, len(set))
	for i, p := range set {
		all[i] = next[p]
	}
	if err := f.writeRules(inactive, set, all); err != nil {
		f.freeIDs(ids)
		return err
	}
	for _, p := range set {
		f.stale[p] = next[p] // until the switch, the inactive buffer holds the new set
	}
	if err := f.writeConfig(inactive, f.revision+1); err != nil {
		return err
	}
	// The old set is now the inactive buffer's, until the next Replace clears it.
	f.stale, f.rules = f.rules, next
	f.active = inactive
	f.revision++
	return nil
}

// clearStale deletes what the inactive buffer holds, freeing the ids of
// rules no longer in force.
func (f *Filter) clearStale(buf uint32) error {
	if len(f.stale) == 0 {
		return nil
	}
	rules := make([]netip.Prefix, 0, len(f.stale))
	for p := range f.stale {
		rules = append(rules, p)
	}
	if err := f.deleteRules(buf, rules); err != nil {
		return err
	}
	for p, id := range f.stale {
		if cur, ok := f.rules[p]; !ok || cur != id {
			delete(f.ids, id)
		}
	}
	f.stale = map[netip.Prefix]uint32{}
	return nil
}

// assignIDs reserves ids for new rules and resets their hit counters, which
// a rule removed earlier may have left behind, with one batch update.
func (f *Filter) assignIDs(rules []netip.Prefix) ([]uint32, error) {
	ids := make([]uint32, len(rules))
	for i, p := range rules {
		id, err := f.allocID(p)
		if err != nil {
			f.freeIDs(ids[:i])
			return nil, err
		}
		ids[i] = id
	}
	if len(ids) == 0 {
		return ids, nil
	}
	cpus, err := ebpf.PossibleCPU()
	if err == nil {
		_, err = f.maps["nb_xf_hits"].BatchUpdate(ids, make([]uint64, len(ids)*cpus), nil)
	}
	if err != nil {
		f.freeIDs(ids)
		return nil, fmt.Errorf("xdpfilter: reset rule counters: %w", err)
	}
	return ids, nil
}

func (f *Filter) freeIDs(ids []uint32) {
	for _, id := range ids {
		delete(f.ids, id)
	}
}

// writeRules writes rules with their ids into buffer buf: exact rules with
// batch updates, prefix rules key by key (LPM tries have no batch update). On
// error it deletes what it wrote.
func (f *Filter) writeRules(buf uint32, rules []netip.Prefix, ids []uint32) error {
	var e4 [][4]byte
	var e6 [][16]byte
	var v4, v6 []uint32
	fail := func(err error) error {
		f.deleteRules(buf, rules) // none of them was there before
		return fmt.Errorf("xdpfilter: write rules: %w", err)
	}
	for i, p := range rules {
		switch kindOf(p) {
		case exact4:
			e4, v4 = append(e4, p.Addr().As4()), append(v4, ids[i])
		case exact6:
			e6, v6 = append(e6, p.Addr().As16()), append(v6, ids[i])
		default:
			if err := f.maps[mapName(kindOf(p), buf)].Put(key(p), ids[i]); err != nil {
				return fail(err)
			}
		}
	}
	if len(e4) > 0 {
		if _, err := f.maps[mapName(exact4, buf)].BatchUpdate(e4, v4, nil); err != nil {
			return fail(err)
		}
	}
	if len(e6) > 0 {
		if _, err := f.maps[mapName(exact6, buf)].BatchUpdate(e6, v6, nil); err != nil {
			return fail(err)
		}
	}
	return nil
}

// deleteRules deletes rules from buffer buf, ignoring ones already gone.
func (f *Filter) deleteRules(buf uint32, rules []netip.Prefix) error {
	var e4 [][4]byte
	var e6 [][16]byte
	for _, p := range rules {
		switch kindOf(p) {
		case exact4:
			e4 = append(e4, p.Addr().As4())
		case exact6:
			e6 = append(e6, p.Addr().As16())
		default:
			if err := f.maps[mapName(kindOf(p), buf)].Delete(key(p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("xdpfilter: delete rule %v: %w", p, err)
			}
		}
	}
	for _, batch := range []struct {
		k    kind
		keys any
		n    int
	}{{exact4, e4, len(e4)}, {exact6, e6, len(e6)}} {
		if batch.n == 0 {
			continue
		}
		if err := batchDelete(f.maps[mapName(batch.k, buf)], batch.keys, batch.n); err != nil {
			return fmt.Errorf("xdpfilter: delete rules: %w", err)
		}
	}
	return nil
}

// batchDelete deletes n keys with batch deletes, skipping keys already gone.
func batchDelete(m *ebpf.Map, keys any, n int) error {
	for start := 0; start < n; {
		var done int
		var err error
		switch ks := keys.(type) {
		case [][4]byte:
			done, err = m.BatchDelete(ks[start:], nil)
		case [][16]byte:
			done, err = m.BatchDelete(ks[start:], nil)
		}
		start += done
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			start++ // the kernel stopped at a key that is gone
		default:
			return err
		}
	}
	return nil
}
