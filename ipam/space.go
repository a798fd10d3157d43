package ipam

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// A space is a run of slots of one family that an allocator hands out: the
// addresses first, first+step, ..., last, without the reserved ones. For
// pod and LB addresses the step is 1; for node CIDRs and blocks a slot is a
// prefix and the step its size.
//
// Its state lives under key: key+"head" holds the number of slots in use and
// the last slot handed out (the next search starts after it, so released
// addresses come back last, as in host-local), and key+"s/"+addrKey(slot)
// holds each slot's record. Every change to a slot also writes the head, and
// every claim reads the head with Txn.Get first, so two transactions on one
// space cannot both commit on an optimistic store: a scan of the slots is
// guarded by the head.
type space struct {
	key      string
	first    netip.Addr
	last     netip.Addr // start of the last slot
	shift    uint       // log2 of the step
	reserved []netip.Addr
}

type spaceHead struct {
	Cursor string `json:"cursor,omitempty"` // addrKey of the last slot handed out
	Used   uint64 `json:"used"`
}

// A slotRecord is a slot's state: held by Owner since Since, or, with Owner
// empty, released at Released and cooling down.
type slotRecord struct {
	Owner    string          `json:"owner,omitempty"`
	Since    time.Time       `json:"since,omitzero"`
	Released time.Time       `json:"released,omitzero"`
	Data     json.RawMessage `json:"data,omitempty"`
}

func (r *slotRecord) held() bool { return r.Owner != "" }

func newSpace(key string, first, last netip.Addr, shift uint, reserved []netip.Addr) *space {
	r := slices.Clone(reserved)
	slices.SortFunc(r, netip.Addr.Compare)
	r = slices.Compact(r)
	return &space{key: key, first: first, last: last, shift: shift, reserved: r}
}

func (s *space) headKey() string             { return s.key + "head" }
func (s *space) slotKey(a netip.Addr) string { return s.key + "s/" + addrKey(a) }
func (s *space) slotPrefix() string          { return s.key + "s/" }
func (s *space) v4() bool                    { return s.first.Is4() }
func (s *space) isReserved(a netip.Addr) bool {
	_, ok := slices.BinarySearchFunc(s.reserved, a, netip.Addr.Compare)
	return ok
}

// capacity is the number of slots, saturated at MaxUint64.
func (s *space) capacity() uint64 {
	n := toU128(s.last).sub(toU128(s.first)).rsh(s.shift).add(u128{lo: 1})
	return n.sub(u128{lo: uint64(len(s.reserved))}).sat()
}

// contains reports whether a is a slot of s (in range, aligned, not
// reserved), and if not, why.
func (s *space) contains(a netip.Addr) error {
	if !a.IsValid() || a.Is4() != s.v4() || a.Compare(s.first) < 0 || a.Compare(s.last) > 0 {
		return fmt.Errorf("%v is outside %v-%v", a, s.first, s.last)
	}
	if off := toU128(a).sub(toU128(s.first)); off.rsh(s.shift).shl(s.shift) != off {
		return fmt.Errorf("%v is not aligned to /%d", a, a.BitLen()-int(s.shift))
	}
	if s.isReserved(a) {
		return fmt.Errorf("%v is reserved", a)
	}
	return nil
}

// next returns the slot after a, skipping reserved ones, and false past the
// last slot.
func (s *space) next(a netip.Addr) (netip.Addr, bool) {
	last := toU128(s.last)
	u := toU128(a)
	for {
		nu := u.add(pow2(s.shift))
		if nu.cmp(u) <= 0 || nu.cmp(last) > 0 {
			return netip.Addr{}, false
		}
		u = nu
		n := fromU128(u, s.v4())
		if !s.isReserved(n) {
			return n, true
		}
	}
}

// firstSlot returns the first unreserved slot at or after a.
func (s *space) firstSlot(a netip.Addr) (netip.Addr, bool) {
	if a.Compare(s.last) > 0 {
		return netip.Addr{}, false
	}
	if !s.isReserved(a) {
		return a, true
	}
	return s.next(a)
}

func (s *space) readHead(tx Txn) (spaceHead, error) {
	var h spaceHead
	v, ok, err := tx.Get(s.headKey())
	if err != nil || !ok {
		return h, err
	}
	if err := json.Unmarshal(v, &h); err != nil {
		return h, fmt.Errorf("decode %s: %w", s.headKey(), err)
	}
	return h, nil
}

func (s *space) writeHead(tx Txn, h spaceHead) error {
	if h.Used == 0 && h.Cursor == "" {
		return tx.Delete(s.headKey())
	}
	return putJSON(tx, s.headKey(), h)
}

func (s *space) get(tx Txn, a netip.Addr) (slotRecord, bool, error) {
	var r slotRecord
	v, ok, err := tx.Get(s.slotKey(a))
	if err != nil || !ok {
		return r, false, err
	}
	if err := json.Unmarshal(v, &r); err != nil {
		return r, false, fmt.Errorf("decode %s: %w", s.slotKey(a), err)
	}
	return r, true, nil
}

// claimNext hands out the first free slot after the cursor, wrapping
// around. A slot released less than cooldown ago is taken only when no
// other slot is free, the one released longest ago first. It returns an
// error wrapping ErrExhausted when every slot is held.
func (s *space) claimNext(tx Txn, owner string, data json.RawMessage, now time.Time, cooldown time.Duration) (netip.Addr, error) {
	h, err := s.readHead(tx)
	if err != nil {
		return netip.Addr{}, err
	}
	if h.Used >= s.capacity() {
		return netip.Addr{}, fmt.Errorf("%v-%v: all %d held: %w", s.first, s.last, h.Used, ErrExhausted)
	}
	start, ok := s.first, true
	if h.Cursor != "" {
		if c, err := parseAddrKey(h.Cursor); err == nil && s.contains(c) == nil {
			start, ok = s.next(c)
		}
	}
	if !ok {
		start = s.first
	}
	start, ok = s.firstSlot(start)
	if !ok {
		start, _ = s.firstSlot(s.first)
	}
	var cool cooling
	a, found, err := s.findFree(tx, start, s.last, now, cooldown, &cool)
	if err == nil && !found && start != s.first {
		first, _ := s.firstSlot(s.first)
		a, found, err = s.findFree(tx, first, fromU128(toU128(start).sub(u128{lo: 1}), s.v4()), now, cooldown, &cool)
	}
	if err != nil {
		return netip.Addr{}, err
	}
	if !found {
		if !cool.addr.IsValid() {
			// The head's count disagrees with the slots: count them.
			return netip.Addr{}, fmt.Errorf("%v-%v: no free slot found although %d of %d are counted held: %w", s.first, s.last, h.Used, s.capacity(), ErrExhausted)
		}
		a = cool.addr
	}
	h.Used++
	h.Cursor = addrKey(a)
	if err := s.writeHead(tx, h); err != nil {
		return netip.Addr{}, err
	}
	return a, putJSON(tx, s.slotKey(a), slotRecord{Owner: owner, Since: now, Data: data})
}

// cooling remembers the slot released longest ago among those still cooling
// down.
type cooling struct {
	addr netip.Addr
	at   time.Time
}

// findFree looks for a free slot in [from, to], reading one key in the common
// case and scanning held slots otherwise.
func (s *space) findFree(tx Txn, from, to netip.Addr, now time.Time, cooldown time.Duration, cool *cooling) (netip.Addr, bool, error) {
	if from.Compare(to) > 0 {
		return netip.Addr{}, false, nil
	}
	free := func(r slotRecord, a netip.Addr) bool {
		if r.held() {
			return false
		}
		if now.Sub(r.Released) >= cooldown {
			return true
		}
		if !cool.addr.IsValid() || r.Released.Before(cool.at) {
			*cool = cooling{a, r.Released}
		}
		return false
	}
	r, ok, err := s.get(tx, from)
	if err != nil {
		return netip.Addr{}, false, err
	}
	if !ok || free(r, from) {
		return from, true, nil
	}
	expected, more := s.next(from)
	var found bool
	var scanErr error
	err = tx.Scan(s.slotPrefix(), s.slotKey(expected), func(k string, v []byte) bool {
		if !more || expected.Compare(to) > 0 {
			return false
		}
		a, err := parseAddrKey(strings.TrimPrefix(k, s.slotPrefix()))
		if err != nil || a.Is4() != s.v4() {
			return true
		}
		switch a.Compare(expected) {
		case -1:
			return true
		case 1:
			found = true
			return false
		}
		var r slotRecord
		if err := json.Unmarshal(v, &r); err != nil {
			scanErr = fmt.Errorf("decode %s: %w", k, err)
			return false
		}
		if free(r, a) {
			found = true
			return false
		}
		expected, more = s.next(expected)
		return true
	})
	if err == nil {
		err = scanErr
	}
	if err != nil {
		return netip.Addr{}, false, err
	}
	if found || (more && expected.Compare(to) <= 0) {
		return expected, true, nil
	}
	return netip.Addr{}, false, nil
}

// claim gives the slot a to owner. It fails with ErrInUse when another owner
// holds it; a slot cooling down is taken.
func (s *space) claim(tx Txn, a netip.Addr, owner string, data json.RawMessage, now time.Time) error {
	if err := s.contains(a); err != nil {
		return err
	}
	h, err := s.readHead(tx)
	if err != nil {
		return err
	}
	r, ok, err := s.get(tx, a)
	if err != nil {
		return err
	}
	if ok && r.held() {
		return fmt.Errorf("%v is held by %s: %w", a, r.Owner, ErrInUse)
	}
	h.Used++
	if err := s.writeHead(tx, h); err != nil {
		return err
	}
	return putJSON(tx, s.slotKey(a), slotRecord{Owner: owner, Since: now, Data: data})
}

// update rewrites the record of a held slot.
func (s *space) update(tx Txn, a netip.Addr, r slotRecord) error {
	return putJSON(tx, s.slotKey(a), r)
}

// release frees slot a, leaving a record of when (for the cooldown) when
// cooldown is positive. It returns the record the slot had, and false when
// it was not held.
func (s *space) release(tx Txn, a netip.Addr, now time.Time, cooldown time.Duration) (slotRecord, bool, error) {
	h, err := s.readHead(tx)
	if err != nil {
		return slotRecord{}, false, err
	}
	r, ok, err := s.get(tx, a)
	if err != nil || !ok || !r.held() {
		return r, false, err
	}
	if h.Used > 0 {
		h.Used--
	}
	if err := s.writeHead(tx, h); err != nil {
		return r, false, err
	}
	if cooldown > 0 {
		return r, true, putJSON(tx, s.slotKey(a), slotRecord{Released: now})
	}
	return r, true, tx.Delete(s.slotKey(a))
}

// each calls fn for every held slot in order, until fn returns false.
func (s *space) each(tx Txn, fn func(a netip.Addr, r slotRecord) bool) error {
	var ferr error
	err := tx.Scan(s.slotPrefix(), "", func(k string, v []byte) bool {
		a, err := parseAddrKey(strings.TrimPrefix(k, s.slotPrefix()))
		if err != nil {
			ferr = err
			return false
		}
		var r slotRecord
		if err := json.Unmarshal(v, &r); err != nil {
			ferr = fmt.Errorf("decode %s: %w", k, err)
			return false
		}
		if !r.held() {
			return true
		}
		return fn(a, r)
	})
	if err != nil {
		return err
	}
	return ferr
}

// used returns the number of held slots, from the head.
func (s *space) used(tx Txn) (uint64, error) {
	h, err := s.readHead(tx)
	return h.Used, err
}

func putJSON(tx Txn, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return tx.Put(key, b)
}

func getJSON(tx Txn, key string, v any) (bool, error) {
	b, ok, err := tx.Get(key)
	if err != nil || !ok {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

func unmarshal(key string, v []byte, out any) error {
	if err := json.Unmarshal(v, out); err != nil {
		return fmt.Errorf("decode %s: %w", key, err)
	}
	return nil
}

// peekUsed returns the number of held slots without guarding the read (a
// Scan, not a Get): for choosing among many spaces, of which the one chosen
// is then read with Get by claimNext. On etcd this keeps a transaction
// within the limit of keys it may compare.
func (s *space) peekUsed(tx Txn) (uint64, error) {
	var h spaceHead
	var derr error
	err := tx.Scan(s.headKey(), "", func(k string, v []byte) bool {
		if k == s.headKey() {
			derr = unmarshal(k, v, &h)
		}
		return false
	})
	if err != nil {
		return 0, err
	}
	return h.Used, derr
}
