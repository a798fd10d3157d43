package ipam

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// checkService validates a service name, "namespace/name".
func checkService(s string) error {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || strings.Contains(name, "/") {
		return fmt.Errorf("service %q: want namespace/name", s)
	}
	for _, part := range []string{ns, name} {
		if part == "" {
			return fmt.Errorf("service %q: want namespace/name, both non-empty", s)
		}
		if len(part) > 253 {
			return fmt.Errorf("service %q: %q is longer than 253 bytes", s, part)
		}
		for _, c := range []byte(part) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
				return fmt.Errorf("service %q has %q; use lowercase letters, digits, '-' and '.'", s, c)
			}
		}
	}
	return nil
}

// checkRequest validates req and returns it with Ports sorted and Addrs
// IPv4 first.
func checkRequest(req LBRequest) (LBRequest, error) {
	if err := checkService(req.Service); err != nil {
		return req, err
	}
	if req.Pool != "" {
		if err := checkName("pool name", req.Pool); err != nil {
			return req, err
		}
	}
	if req.SharingKey != "" {
		if err := checkName("sharing key", req.SharingKey); err != nil {
			return req, err
		}
	}
	if req.Family > FamilyDual {
		return req, fmt.Errorf("unknown address family %v", req.Family)
	}
	out := req
	out.Ports = nil
	for _, p := range req.Ports {
		switch {
		case p.Port == 0:
			return req, fmt.Errorf("port %v: port 0", p)
		case p.Protocol != "TCP" && p.Protocol != "UDP" && p.Protocol != "SCTP":
			return req, fmt.Errorf("port %v: protocol %q; want TCP, UDP or SCTP", p, p.Protocol)
		case slices.Contains(out.Ports, p):
			return req, fmt.Errorf("port %v listed twice", p)
		}
		out.Ports = append(out.Ports, p)
	}
	slices.SortFunc(out.Ports, comparePorts)
	out.Addrs = slices.Clone(req.Addrs)
	slices.SortStableFunc(out.Addrs, func(x, y netip.Addr) int { return familyIndex(x) - familyIndex(y) })
	for i, a := range out.Addrs {
		switch {
		case !a.IsValid():
			return req, errors.New("invalid address")
		case a.Zone() != "" || a.Is4In6():
			return req, fmt.Errorf("address %v: zoned and IPv4-mapped addresses are not allowed", a)
		case i > 0 && a.Is4() == out.Addrs[i-1].Is4():
			return req, fmt.Errorf("two %s addresses (%v, %v); one per family", family(a), out.Addrs[i-1], a)
		}
	}
	return out, nil
}

func comparePorts(a, b ServicePort) int {
	return cmp.Or(strings.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
}

func toLBPorts(ps []ServicePort) []lbPort {
	var out []lbPort
	for _, p := range ps {
		out = append(out, lbPort(p))
	}
	return out
}

func (r lbSvcRecord) allocation() LBAllocation {
	al := LBAllocation{Service: r.Service, Pool: r.Pool, Addrs: slices.Clone(r.Addrs), SharingKey: r.SharingKey}
	for _, p := range r.Ports {
		al.Ports = append(al.Ports, ServicePort(p))
	}
	return al
}

// clash returns the first port that two port lists both have.
func clash(a, b []lbPort) (lbPort, bool) {
	for _, p := range a {
		if slices.Contains(b, p) {
			return p, true
		}
	}
	return lbPort{}, false
}

// memberClash returns an error naming the service on a shared address whose
// ports clash with ports, leaving out service self.
func memberClash(ms []lbMember, self string, ports []lbPort, a netip.Addr) error {
	for _, m := range ms {
		if m.Service == self {
			continue
		}
		if p, ok := clash(m.Ports, ports); ok {
			return fmt.Errorf("port %v is used by %s on %v: %w", ServicePort(p), m.Service, a, ErrInUse)
		}
	}
	return nil
}

func decodeMembers(a netip.Addr, r slotRecord) ([]lbMember, error) {
	var ms []lbMember
	if err := json.Unmarshal(r.Data, &ms); err != nil {
		return nil, fmt.Errorf("decode services sharing %v: %w", a, err)
	}
	return ms, nil
}

// Allocate hands req.Service its addresses and returns them. It is
// idempotent: a service that holds addresses satisfying req gets them again
// (with its ports updated if they changed and do not clash); one that holds
// others is an error: release them first.
//
// With a SharingKey, an address of that key whose services' ports do not
// clash with req.Ports is shared before a new one is handed out. With
// Addrs, those addresses are handed out, or shared when they are held by
// the same sharing key without a port clash; an address held otherwise is
// an error wrapping [ErrInUse]. When every eligible pool's addresses of the
// family are held, Allocate returns an error wrapping [ErrExhausted].
func (l *LBIPAM) Allocate(ctx context.Context, req LBRequest) (LBAllocation, error) {
	r, err := checkRequest(req)
	if err != nil {
		return LBAllocation{}, fmt.Errorf("allocate: %w", err)
	}
	var rec lbSvcRecord
	err = l.update(ctx, func(tx Txn) error {
		var err error
		rec, err = l.allocate(tx, r)
		return err
	})
	if err != nil {
		return LBAllocation{}, fmt.Errorf("allocate for %s: %w", r.Service, err)
	}
	return rec.allocation(), nil
}

// lbStep is one address of an allocation being planned: a new slot of sp,
// or joining the shared slot addr with members.
type lbStep struct {
	sp      *space
	addr    netip.Addr // valid: this address (claim or join)
	join    bool
	members []lbMember
}

func (l *LBIPAM) allocate(tx Txn, req LBRequest) (lbSvcRecord, error) {
	doc, err := l.readPools(tx)
	if err != nil {
		return lbSvcRecord{}, err
	}
	var cur lbSvcRecord
	ok, err := getJSON(tx, l.svcKey(req.Service), &cur)
	if err != nil {
		return cur, err
	}
	if ok {
		err := l.reuse(tx, &doc, req, &cur)
		return cur, err
	}
	pools, err := eligiblePools(&doc, req.Pool)
	if err != nil {
		return cur, err
	}
	var pool *lbPoolEntry
	var steps []lbStep
	if len(req.Addrs) > 0 {
		pool, steps, err = l.planAddrs(tx, &doc, pools, req)
	} else {
		pool, steps, err = l.planNext(tx, &doc, pools, req)
	}
	if err != nil {
		return cur, err
	}
	rec := lbSvcRecord{Service: req.Service, Pool: pool.Name, SharingKey: req.SharingKey, Ports: toLBPorts(req.Ports)}
	if err := l.execute(tx, pool, &rec, steps); err != nil {
		return cur, err
	}
	return rec, putJSON(tx, l.svcKey(req.Service), rec)
}

// eligiblePools returns the pool named name, or every pool that may hand
// out addresses, in creation order.
func eligiblePools(doc *lbPoolsDoc, name string) ([]*lbPoolEntry, error) {
	if name != "" {
		e := doc.find(name)
		switch {
		case e == nil:
			return nil, fmt.Errorf("pool %q: %w", name, os.ErrNotExist)
		case e.Disabled:
			return nil, fmt.Errorf("pool %q is disabled", name)
		case e.Conflicting:
			return nil, fmt.Errorf("pool %q is conflicting: %s", name, e.ConflictReason)
		}
		return []*lbPoolEntry{e}, nil
	}
	var out []*lbPoolEntry
	for i := range doc.Pools {
		if doc.Pools[i].eligible() {
			out = append(out, &doc.Pools[i])
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no enabled, non-conflicting pool")
	}
	return out, nil
}

// satisfies reports whether what a service holds satisfies req.
func satisfies(req LBRequest, cur *lbSvcRecord) bool {
	if req.Pool != "" && req.Pool != cur.Pool || req.SharingKey != cur.SharingKey {
		return false
	}
	if len(req.Addrs) > 0 {
		return slices.Equal(req.Addrs, cur.Addrs)
	}
	fams := make([]bool, 0, 2)
	for _, a := range cur.Addrs {
		fams = append(fams, a.Is4())
	}
	switch req.Family {
	case FamilyIPv4:
		return slices.Equal(fams, []bool{true})
	case FamilyIPv6:
		return slices.Equal(fams, []bool{false})
	case FamilyDual:
		return slices.Equal(fams, []bool{true, false})
	}
	return true
}

// reuse returns in cur what the service holds if it satisfies req, updating
// its ports.
func (l *LBIPAM) reuse(tx Txn, doc *lbPoolsDoc, req LBRequest, cur *lbSvcRecord) error {
	if !satisfies(req, cur) {
		what := fmt.Sprintf("%v from pool %q", cur.Addrs, cur.Pool)
		if cur.SharingKey != "" {
			what += fmt.Sprintf(" with sharing key %q", cur.SharingKey)
		}
		return fmt.Errorf("service holds %s, which does not satisfy the request; release it first", what)
	}
	ports := toLBPorts(req.Ports)
	if slices.Equal(ports, cur.Ports) {
		return nil
	}
	if cur.SharingKey != "" {
		e := doc.find(cur.Pool)
		for _, a := range cur.Addrs {
			if e == nil {
				break
			}
			s, ok := l.spaceOf(e, a)
			if !ok {
				continue
			}
			r, held, err := s.sp.get(tx, a)
			if err != nil {
				return err
			}
			if !held || r.Owner != lbSharePrefix+cur.SharingKey {
				continue
			}
			ms, err := decodeMembers(a, r)
			if err != nil {
				return err
			}
			if err := memberClash(ms, cur.Service, ports, a); err != nil {
				return err
			}
			for i := range ms {
				if ms[i].Service == cur.Service {
					ms[i].Ports = ports
				}
			}
			if r.Data, err = json.Marshal(ms); err != nil {
				return err
			}
			if err := s.sp.update(tx, a, r); err != nil {
				return err
			}
		}
	}
	cur.Ports = ports
	return putJSON(tx, l.svcKey(cur.Service), cur)
}

// reservedIn returns the addresses of [s.sp.first, s.sp.last] that a slot of
// another pool holds. Only conflicting pools overlap an eligible one, and
// their holdings only shrink until the pools document changes, so this scan
// is guarded by the Get of that document.
func (l *LBIPAM) reservedIn(tx Txn, doc *lbPoolsDoc, pool string, s lbSpace) ([]netip.Addr, error) {
	var out []netip.Addr
	for i := range doc.Pools {
		o := &doc.Pools[i]
		if o.Name == pool {
			continue
		}
		for _, os2 := range l.spaces(o) {
			if !overlaps(os2.lo, os2.hi, s.sp.first, s.sp.last) {
				continue
			}
			err := os2.sp.each(tx, func(a netip.Addr, _ slotRecord) bool {
				if overlaps(a, a, s.sp.first, s.sp.last) {
					out = append(out, a)
				}
				return true
			})
			if err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// heldElsewhere returns the pool other than pool whose slot holds a, and
// its owner.
func (l *LBIPAM) heldElsewhere(tx Txn, doc *lbPoolsDoc, pool string, a netip.Addr) (string, string, error) {
	for i := range doc.Pools {
		o := &doc.Pools[i]
		if o.Name == pool {
			continue
		}
		s, ok := l.spaceOf(o, a)
		if !ok {
			continue
		}
		r, held, err := s.sp.get(tx, a)
		if err != nil || held {
			return o.Name, r.Owner, err
		}
	}
	return "", "", nil
}

// joinable returns the first address of the sharing key in pool e of the
// family v4 whose services' ports do not clash with ports.
func (l *LBIPAM) joinable(tx Txn, e *lbPoolEntry, share []lbShareRec, key string, v4 bool, ports []lbPort) (lbStep, bool, error) {
	for _, sh := range share {
		if sh.Pool != e.Name || sh.Addr.Is4() != v4 {
			continue
		}
		s, ok := l.spaceOf(e, sh.Addr)
		if !ok {
			continue
		}
		r, held, err := s.sp.get(tx, sh.Addr)
		if err != nil {
			return lbStep{}, false, err
		}
		if !held || r.Owner != lbSharePrefix+key {
			continue
		}
		ms, err := decodeMembers(sh.Addr, r)
		if err != nil {
			return lbStep{}, false, err
		}
		if memberClash(ms, "", ports, sh.Addr) != nil {
			continue
		}
		return lbStep{sp: s.sp, addr: sh.Addr, join: true, members: ms}, true, nil
	}
	return lbStep{}, false, nil
}

func (l *LBIPAM) readShare(tx Txn, key string) ([]lbShareRec, error) {
	var share []lbShareRec
	if key == "" {
		return nil, nil
	}
	_, err := getJSON(tx, l.shareKey(key), &share)
	return share, err
}

// planNext plans an address of each family req asks for, from the first of
// pools that has them: shared ones of req.SharingKey first, in any of the
// pools, then new ones.
func (l *LBIPAM) planNext(tx Txn, doc *lbPoolsDoc, pools []*lbPoolEntry, req LBRequest) (*lbPoolEntry, []lbStep, error) {
	var fams []bool // true: IPv4
	switch req.Family {
	case FamilyIPv4:
		fams = []bool{true}
	case FamilyIPv6:
		fams = []bool{false}
	case FamilyDual:
		fams = []bool{true, false}
	default:
		fams = []bool{false}
		if slices.ContainsFunc(pools, func(e *lbPoolEntry) bool { return e.has(true) }) {
			fams = []bool{true}
		}
	}
	famName := "IPv4"
	switch {
	case len(fams) == 2:
		famName = "IPv4 and IPv6"
	case !fams[0]:
		famName = "IPv6"
	}
	share, err := l.readShare(tx, req.SharingKey)
	if err != nil {
		return nil, nil, err
	}
	ports := toLBPorts(req.Ports)
	plan := func(e *lbPoolEntry, joinOnly bool) ([]lbStep, error) {
		var steps []lbStep
		for _, v4 := range fams {
			if req.SharingKey != "" {
				st, ok, err := l.joinable(tx, e, share, req.SharingKey, v4, ports)
				if err != nil {
					return nil, err
				}
				if ok {
					steps = append(steps, st)
					continue
				}
			}
			if joinOnly {
				return nil, nil
			}
			var found bool
			for _, s := range l.spaces(e) {
				if s.lo.Is4() != v4 {
					continue
				}
				res, err := l.reservedIn(tx, doc, e.Name, s)
				if err != nil {
					return nil, err
				}
				sp := newSpace(s.sp.key, s.sp.first, s.sp.last, 0, res)
				used, err := sp.used(tx)
				if err != nil {
					return nil, err
				}
				if used < sp.capacity() {
					steps, found = append(steps, lbStep{sp: sp}), true
					break
				}
			}
			if !found {
				return nil, nil
			}
		}
		return steps, nil
	}
	if req.SharingKey != "" {
		for _, e := range pools {
			steps, err := plan(e, true)
			if err != nil || steps != nil {
				return e, steps, err
			}
		}
	}
	var names []string
	for _, e := range pools {
		if !e.has(fams[0]) || !e.has(fams[len(fams)-1]) {
			continue
		}
		names = append(names, fmt.Sprintf("%q", e.Name))
		steps, err := plan(e, false)
		if err != nil || steps != nil {
			return e, steps, err
		}
	}
	if len(names) == 0 {
		if req.Pool != "" {
			return nil, nil, fmt.Errorf("pool %q has no %s blocks", req.Pool, famName)
		}
		return nil, nil, fmt.Errorf("no enabled, non-conflicting pool has %s blocks", famName)
	}
	return nil, nil, fmt.Errorf("no %s address left in pool %s: %w", famName, strings.Join(names, ", "), ErrExhausted)
}

// planAddrs plans the specific addresses req asks for.
func (l *LBIPAM) planAddrs(tx Txn, doc *lbPoolsDoc, pools []*lbPoolEntry, req LBRequest) (*lbPoolEntry, []lbStep, error) {
	var pool *lbPoolEntry
	var steps []lbStep
	ports := toLBPorts(req.Ports)
	for _, a := range req.Addrs {
		var e *lbPoolEntry
		var s lbSpace
		for _, p := range pools {
			if bs, ok := l.spaceOf(p, a); ok {
				e, s = p, bs
				break
			}
		}
		switch {
		case e == nil && req.Pool != "":
			return nil, nil, fmt.Errorf("address %v is not in pool %q", a, req.Pool)
		case e == nil:
			return nil, nil, fmt.Errorf("address %v is in no enabled, non-conflicting pool", a)
		case pool != nil && pool != e:
			return nil, nil, fmt.Errorf("addresses %v and %v are in different pools (%q, %q); ask for addresses of one pool", req.Addrs[0], a, pool.Name, e.Name)
		}
		pool = e
		if err := s.sp.contains(a); err != nil {
			return nil, nil, fmt.Errorf("address %v: pool %q keeps the first and last address of block %v out: %w", a, e.Name, s.block, err)
		}
		other, owner, err := l.heldElsewhere(tx, doc, e.Name, a)
		if err != nil {
			return nil, nil, err
		}
		if other != "" {
			return nil, nil, fmt.Errorf("address %v is held by %s in pool %q: %w", a, owner, other, ErrInUse)
		}
		r, held, err := s.sp.get(tx, a)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case !held:
			steps = append(steps, lbStep{sp: s.sp, addr: a})
		case req.SharingKey != "" && r.Owner == lbSharePrefix+req.SharingKey:
			ms, err := decodeMembers(a, r)
			if err != nil {
				return nil, nil, err
			}
			if err := memberClash(ms, "", ports, a); err != nil {
				return nil, nil, err
			}
			steps = append(steps, lbStep{sp: s.sp, addr: a, join: true, members: ms})
		default:
			return nil, nil, fmt.Errorf("address %v is held by %s: %w", a, r.Owner, ErrInUse)
		}
	}
	return pool, steps, nil
}

// execute takes the planned addresses for rec.
func (l *LBIPAM) execute(tx Txn, pool *lbPoolEntry, rec *lbSvcRecord, steps []lbStep) error {
	now := l.clock()
	owner := rec.Service
	var share []lbShareRec
	if rec.SharingKey != "" {
		owner = lbSharePrefix + rec.SharingKey
		var err error
		if share, err = l.readShare(tx, rec.SharingKey); err != nil {
			return err
		}
	}
	var data json.RawMessage
	me := lbMember{Service: rec.Service, Ports: rec.Ports}
	if rec.SharingKey != "" {
		var err error
		if data, err = json.Marshal([]lbMember{me}); err != nil {
			return err
		}
	}
	for _, st := range steps {
		a := st.addr
		switch {
		case st.join:
			r, _, err := st.sp.get(tx, a)
			if err != nil {
				return err
			}
			if r.Data, err = json.Marshal(append(st.members, me)); err != nil {
				return err
			}
			if err := st.sp.update(tx, a, r); err != nil {
				return err
			}
		case a.IsValid():
			if err := st.sp.claim(tx, a, owner, data, now); err != nil {
				return err
			}
		default:
			var err error
			if a, err = st.sp.claimNext(tx, owner, data, now, 0); err != nil {
				return err
			}
		}
		if rec.SharingKey != "" && !st.join {
			share = append(share, lbShareRec{Addr: a, Pool: pool.Name})
		}
		rec.Addrs = append(rec.Addrs, a)
	}
	if rec.SharingKey != "" {
		return putJSON(tx, l.shareKey(rec.SharingKey), share)
	}
	return nil
}
