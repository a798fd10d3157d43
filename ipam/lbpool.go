package ipam

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// An LBBlock is a block of addresses of an [LBPool]: a CIDR, or a range from
// Start to Stop. Set either CIDR or Start, not both.
type LBBlock struct {
	// CIDR is a prefix whose addresses are all in the block.
	CIDR netip.Prefix
	// Start and Stop bound a range of addresses, inclusive. Stop defaults to
	// Start: one address.
	Start, Stop netip.Addr
}

// String returns the CIDR, or "start-stop".
func (b LBBlock) String() string {
	if b.CIDR.IsValid() {
		return b.CIDR.String()
	}
	lo, hi := b.bounds()
	return lo.String() + "-" + hi.String()
}

// bounds returns the first and last address of the block.
func (b LBBlock) bounds() (lo, hi netip.Addr) {
	if b.CIDR.IsValid() {
		return b.CIDR.Addr(), lastAddr(b.CIDR)
	}
	if !b.Stop.IsValid() {
		return b.Start, b.Start
	}
	return b.Start, b.Stop
}

// An LBPool is a pool of LoadBalancer addresses, as Cilium's
// CiliumLoadBalancerIPPool.
type LBPool struct {
	// Name identifies the pool: printable ASCII without '/' or spaces.
	Name string
	// Blocks are the pool's addresses. They must not overlap each other. A
	// block may overlap a block of another pool: the pool created later is
	// then conflicting (see [LBPoolStatus]).
	Blocks []LBBlock
	// ReserveFirstLastIPs keeps the first and last address of each CIDR
	// block out (Cilium's allowFirstLastIPs: "No"); ignored for /31, /32,
	// /127, /128 and for Start-Stop blocks. Default false: every address is
	// used, as with Cilium's default "Yes".
	ReserveFirstLastIPs bool
	// Disabled stops the pool from handing out addresses, new or shared;
	// the addresses it has handed out stay.
	Disabled bool
}

// LBPoolStatus is a pool with its state.
type LBPoolStatus struct {
	// Pool is the pool as set, with each Start-Stop block's Stop filled in.
	Pool LBPool
	// Conflicting is set when a block of the pool overlaps a block of a
	// non-conflicting pool created earlier. A conflicting pool hands out
	// nothing, new or shared; the addresses it handed out before stay, and
	// the earlier pool does not hand them out. ConflictReason names the
	// earlier pool and the overlapping blocks.
	Conflicting    bool
	ConflictReason string
	// Total is the number of addresses the pool's blocks have, without the
	// ones ReserveFirstLastIPs keeps out (saturated at 2^64-1); Used the
	// number held (an address shared by several services counts once);
	// Available is Total - Used.
	Total, Used, Available uint64
}

// A Family selects the address families of an [LBRequest].
type Family uint8

// Address families of an [LBRequest].
const (
	// FamilyAuto asks for one address: IPv4 when an eligible pool has IPv4
	// blocks, else IPv6.
	FamilyAuto Family = iota
	// FamilyIPv4 asks for one IPv4 address.
	FamilyIPv4
	// FamilyIPv6 asks for one IPv6 address.
	FamilyIPv6
	// FamilyDual asks for an IPv4 and an IPv6 address, from one pool.
	FamilyDual
)

// String returns "auto", "IPv4", "IPv6" or "dual".
func (f Family) String() string {
	switch f {
	case FamilyAuto:
		return "auto"
	case FamilyIPv4:
		return "IPv4"
	case FamilyIPv6:
		return "IPv6"
	case FamilyDual:
		return "dual"
	}
	return fmt.Sprintf("Family(%d)", uint8(f))
}

// A ServicePort is a port a service listens on, for address sharing.
type ServicePort struct {
	// Port is the port number, in host order; not 0.
	Port uint16
	// Protocol is "TCP", "UDP" or "SCTP".
	Protocol string
}

// String returns "port/protocol", as "80/TCP".
func (p ServicePort) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// An LBRequest asks for the addresses of a LoadBalancer service.
type LBRequest struct {
	// Service is the service, "namespace/name"; each part lowercase letters,
	// digits, '-' and '.'. Required.
	Service string
	// Pool restricts the request to one pool. Default: any enabled,
	// non-conflicting pool, tried in the order the pools were created.
	Pool string
	// Family is the address families asked for. Default FamilyAuto.
	Family Family
	// Addrs asks for specific addresses, at most one per family, all in one
	// pool (Cilium's lbipam.cilium.io/ips). It overrides Family.
	Addrs []netip.Addr
	// SharingKey lets services with the same key share one address when
	// their ports do not clash (Cilium's lbipam.cilium.io/sharing-key).
	// Printable ASCII without '/' or spaces. Default: the service's address
	// is its own.
	SharingKey string
	// Ports are the service's ports. Two services sharing an address must
	// not have a port with the same number and protocol.
	Ports []ServicePort
}

// An LBAllocation is what a service holds.
type LBAllocation struct {
	// Service is the service, "namespace/name".
	Service string
	// Pool is the pool the addresses come from.
	Pool string
	// Addrs has one address per family, IPv4 first.
	Addrs []netip.Addr
	// SharingKey and Ports are as requested; Ports sorted by protocol and
	// number.
	SharingKey string
	Ports      []ServicePort
}

// LBConfig configures an [LBIPAM].
type LBConfig struct {
	// Store keeps the pools and allocations. Default: a bbolt file at
	// [DefaultBoltPath], which Close closes.
	Store Store
	// Name keeps this LB IPAM's state apart from others in the same store.
	// Printable ASCII without '/'. Default "default".
	Name string
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// LBIPAM hands out LoadBalancer service addresses from pools, as Cilium's
// LB-IPAM does, keeping pools and allocations in a [Store] shared by every
// process that uses it.
//
// Pools are ordered by creation. A pool with a block overlapping a block of
// an earlier non-conflicting pool is conflicting and hands out nothing;
// this is re-evaluated on every [LBIPAM.SetPool] and [LBIPAM.DeletePool]. An
// address is never handed out twice: not even by two pools whose blocks
// overlap, whichever of them is conflicting at the time.
type LBIPAM struct {
	common
	name string
}

// Key layout, under "lb/<name>/":
//
//	pools                     lbPoolsDoc: every pool, in creation order
//	pool/<pool>/<lo>-<hi>/    a space per block (lo, hi: the block's bounds)
//	svc/<escaped service>     lbSvcRecord
//	share/<escaped key>       []lbShareRec: the addresses of a sharing key
//
// Every transaction that allocates or changes pools reads the pools document
// with Get, so a change of pools and an allocation that saw the old pools
// cannot both commit. A slot of a plain address has the service as owner; a
// shared one has "share:<key>" and, as data, the services with their ports.

type lbPoolsDoc struct {
	Seq   uint64        `json:"seq"` // the last creation sequence number
	Pools []lbPoolEntry `json:"pools"`
}

type lbPoolEntry struct {
	Seq                 uint64       `json:"seq"`
	Name                string       `json:"name"`
	Blocks              []lbBlockRec `json:"blocks"`
	ReserveFirstLastIPs bool         `json:"reserveFirstLastIPs,omitempty"`
	Disabled            bool         `json:"disabled,omitempty"`
	Conflicting         bool         `json:"conflicting,omitempty"`
	ConflictReason      string       `json:"conflictReason,omitempty"`
}

// lbBlockRec is LBBlock's stored form.
type lbBlockRec struct {
	CIDR  netip.Prefix `json:"cidr,omitzero"`
	Start netip.Addr   `json:"start,omitzero"`
	Stop  netip.Addr   `json:"stop,omitzero"`
}

type lbSvcRecord struct {
	Service    string       `json:"service"`
	Pool       string       `json:"pool"`
	Addrs      []netip.Addr `json:"addrs"`
	SharingKey string       `json:"sharingKey,omitempty"`
	Ports      []lbPort     `json:"ports,omitempty"`
}

// lbPort is ServicePort's stored form.
type lbPort struct {
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
}

// lbMember is a service on a shared address, in the slot's data.
type lbMember struct {
	Service string   `json:"service"`
	Ports   []lbPort `json:"ports,omitempty"`
}

// lbShareRec is an address of a sharing key, in the sharing index.
type lbShareRec struct {
	Addr netip.Addr `json:"addr"`
	Pool string     `json:"pool"`
}

const lbSharePrefix = "share:"

// NewLBIPAM returns an LB IPAM on cfg.Store. The pools are in the store:
// set them with [LBIPAM.SetPool].
func NewLBIPAM(cfg LBConfig) (*LBIPAM, error) {
	name := cfg.Name
	if name == "" {
		name = "default"
	}
	if err := checkName("LB IPAM name", name); err != nil {
		return nil, fmt.Errorf("new LB IPAM: %w", err)
	}
	c, err := newCommon(cfg.Store, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("new LB IPAM: %w", err)
	}
	return &LBIPAM{common: c, name: name}, nil
}

// Close closes the store if the LB IPAM opened it (LBConfig.Store nil).
func (l *LBIPAM) Close() error { return l.close() }

func (l *LBIPAM) root() string                  { return "lb/" + l.name + "/" }
func (l *LBIPAM) poolsKey() string              { return l.root() + "pools" }
func (l *LBIPAM) poolPrefix(pool string) string { return l.root() + "pool/" + pool + "/" }
func (l *LBIPAM) svcPrefix() string             { return l.root() + "svc/" }
func (l *LBIPAM) svcKey(svc string) string      { return l.svcPrefix() + url.PathEscape(svc) }
func (l *LBIPAM) sharePrefix() string           { return l.root() + "share/" }
func (l *LBIPAM) shareKey(key string) string    { return l.sharePrefix() + url.PathEscape(key) }

func (l *LBIPAM) readPools(tx Txn) (lbPoolsDoc, error) {
	var d lbPoolsDoc
	_, err := getJSON(tx, l.poolsKey(), &d)
	return d, err
}

func (d *lbPoolsDoc) find(name string) *lbPoolEntry {
	for i := range d.Pools {
		if d.Pools[i].Name == name {
			return &d.Pools[i]
		}
	}
	return nil
}

// evalConflicts marks, in creation order, each pool that overlaps an earlier
// non-conflicting pool.
func (d *lbPoolsDoc) evalConflicts() {
	for i := range d.Pools {
		p := &d.Pools[i]
		p.Conflicting, p.ConflictReason = false, ""
		for j := range i {
			q := &d.Pools[j]
			if q.Conflicting {
				continue
			}
			var pairs []string
			for _, a := range p.Blocks {
				alo, ahi := LBBlock(a).bounds()
				for _, b := range q.Blocks {
					if blo, bhi := LBBlock(b).bounds(); overlaps(alo, ahi, blo, bhi) {
						pairs = append(pairs, fmt.Sprintf("%v overlaps %v", LBBlock(a), LBBlock(b)))
					}
				}
			}
			if len(pairs) > 0 {
				p.Conflicting = true
				p.ConflictReason = fmt.Sprintf("pool %q, created earlier, has overlapping blocks: %s", q.Name, strings.Join(pairs, ", "))
				break
			}
		}
	}
}

func (e *lbPoolEntry) eligible() bool { return !e.Disabled && !e.Conflicting }

func (e *lbPoolEntry) pool() LBPool {
	p := LBPool{Name: e.Name, ReserveFirstLastIPs: e.ReserveFirstLastIPs, Disabled: e.Disabled}
	for _, b := range e.Blocks {
		p.Blocks = append(p.Blocks, LBBlock(b))
	}
	return p
}

func (e *lbPoolEntry) has(v4 bool) bool {
	return slices.ContainsFunc(e.Blocks, func(b lbBlockRec) bool { lo, _ := LBBlock(b).bounds(); return lo.Is4() == v4 })
}

// An lbSpace is a block of a pool with its space: the block's addresses
// without the ones ReserveFirstLastIPs keeps out.
type lbSpace struct {
	block  LBBlock
	lo, hi netip.Addr
	sp     *space
}

func (l *LBIPAM) blockSpace(pool string, b LBBlock, reserveFirstLast bool) lbSpace {
	lo, hi := b.bounds()
	first, last := lo, hi
	if reserveFirstLast && b.CIDR.IsValid() && b.CIDR.Bits() < lo.BitLen()-1 {
		first, last = lo.Next(), hi.Prev()
	}
	// The key has the block's bounds, not the space's, so that changing
	// ReserveFirstLastIPs keeps the block's state.
	key := l.poolPrefix(pool) + addrKey(lo) + "-" + addrKey(hi) + "/"
	return lbSpace{block: b, lo: lo, hi: hi, sp: newSpace(key, first, last, 0, nil)}
}

func (l *LBIPAM) spaces(e *lbPoolEntry) []lbSpace {
	out := make([]lbSpace, 0, len(e.Blocks))
	for _, b := range e.Blocks {
		out = append(out, l.blockSpace(e.Name, LBBlock(b), e.ReserveFirstLastIPs))
	}
	return out
}

// spaceOf returns the block of e whose bounds contain a.
func (l *LBIPAM) spaceOf(e *lbPoolEntry, a netip.Addr) (lbSpace, bool) {
	for _, s := range l.spaces(e) {
		if overlaps(s.lo, s.hi, a, a) {
			return s, true
		}
	}
	return lbSpace{}, false
}

// status returns e's status as of tx.
func (l *LBIPAM) status(tx Txn, e *lbPoolEntry) (LBPoolStatus, error) {
	st := LBPoolStatus{Pool: e.pool(), Conflicting: e.Conflicting, ConflictReason: e.ConflictReason}
	for _, s := range l.spaces(e) {
		used, err := s.sp.used(tx)
		if err != nil {
			return st, err
		}
		st.Total = satAdd(st.Total, s.sp.capacity())
		st.Used += used
	}
	st.Available = st.Total - min(st.Used, st.Total)
	return st, nil
}

func satAdd(a, b uint64) uint64 {
	if a+b < a {
		return ^uint64(0)
	}
	return a + b
}

// checkLBPool validates p and returns it with each range's Stop filled in.
func checkLBPool(p LBPool) (LBPool, error) {
	if err := checkName("pool name", p.Name); err != nil {
		return p, err
	}
	if len(p.Blocks) == 0 {
		return p, fmt.Errorf("pool %q: no blocks", p.Name)
	}
	out := p
	out.Blocks = make([]LBBlock, len(p.Blocks))
	for i, b := range p.Blocks {
		if err := checkLBBlock(&b); err != nil {
			return p, fmt.Errorf("pool %q: block %d: %w", p.Name, i, err)
		}
		out.Blocks[i] = b
	}
	for i, a := range out.Blocks {
		alo, ahi := a.bounds()
		for _, b := range out.Blocks[:i] {
			if blo, bhi := b.bounds(); overlaps(alo, ahi, blo, bhi) {
				return p, fmt.Errorf("pool %q: blocks %v and %v overlap", p.Name, b, a)
			}
		}
	}
	return out, nil
}

func checkLBBlock(b *LBBlock) error {
	cidrSet := b.CIDR != netip.Prefix{}
	switch {
	case cidrSet && (b.Start.IsValid() || b.Stop.IsValid()):
		return fmt.Errorf("both CIDR %v and Start-Stop %v-%v set; use one", b.CIDR, b.Start, b.Stop)
	case cidrSet:
		return checkPrefix("CIDR", b.CIDR)
	case !b.Start.IsValid() && b.Stop.IsValid():
		return fmt.Errorf("Stop %v without Start", b.Stop)
	case !b.Start.IsValid():
		return errors.New("neither CIDR nor Start set")
	}
	if !b.Stop.IsValid() {
		b.Stop = b.Start
	}
	for _, a := range []netip.Addr{b.Start, b.Stop} {
		if a.Zone() != "" || a.Is4In6() {
			return fmt.Errorf("address %v: zoned and IPv4-mapped addresses are not allowed", a)
		}
	}
	if b.Start.Is4() != b.Stop.Is4() {
		return fmt.Errorf("Start %v and Stop %v are of different families", b.Start, b.Stop)
	}
	if b.Start.Compare(b.Stop) > 0 {
		return fmt.Errorf("Start %v is after Stop %v", b.Start, b.Stop)
	}
	return nil
}

// SetPool creates pool, or updates the pool of that name, and returns its
// status. The conflicts of every pool are evaluated again. An update that
// would leave held addresses out of the pool (by removing their block, or
// by ReserveFirstLastIPs) is refused with an error naming them; an update
// keeps the pool's place in creation order.
func (l *LBIPAM) SetPool(ctx context.Context, pool LBPool) (LBPoolStatus, error) {
	p, err := checkLBPool(pool)
	if err != nil {
		return LBPoolStatus{}, fmt.Errorf("set pool: %w", err)
	}
	entry := lbPoolEntry{Name: p.Name, ReserveFirstLastIPs: p.ReserveFirstLastIPs, Disabled: p.Disabled}
	for _, b := range p.Blocks {
		entry.Blocks = append(entry.Blocks, lbBlockRec(b))
	}
	var st LBPoolStatus
	err = l.update(ctx, func(tx Txn) error {
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		e := entry
		if old := doc.find(p.Name); old != nil {
			e.Seq = old.Seq
			if err := l.checkKept(tx, old, &e); err != nil {
				return err
			}
			*old = e
		} else {
			doc.Seq++
			e.Seq = doc.Seq
			doc.Pools = append(doc.Pools, e)
		}
		doc.evalConflicts()
		if err := putJSON(tx, l.poolsKey(), doc); err != nil {
			return err
		}
		st, err = l.status(tx, doc.find(p.Name))
		return err
	})
	if err != nil {
		return LBPoolStatus{}, fmt.Errorf("set pool %q: %w", p.Name, err)
	}
	return st, nil
}

// checkKept refuses an update of pool old to e that leaves held addresses
// out, and deletes the state of the blocks that e removes.
func (l *LBIPAM) checkKept(tx Txn, old, e *lbPoolEntry) error {
	next := map[string]lbSpace{}
	for _, s := range l.spaces(e) {
		next[s.sp.key] = s
	}
	for _, s := range l.spaces(old) {
		n, kept := next[s.sp.key]
		if kept && n.sp.first == s.sp.first && n.sp.last == s.sp.last {
			continue
		}
		used, err := s.sp.used(tx)
		if err != nil {
			return err
		}
		var out []netip.Addr
		if used > 0 {
			err := s.sp.each(tx, func(a netip.Addr, _ slotRecord) bool {
				if !kept || n.sp.contains(a) != nil {
					out = append(out, a)
				}
				return true
			})
			if err != nil {
				return err
			}
		}
		switch {
		case len(out) > 0 && kept:
			return fmt.Errorf("block %v: ReserveFirstLastIPs would leave out %v, which are held; release them first", s.block, out)
		case len(out) > 0:
			return fmt.Errorf("block %v still holds %v; release them first", s.block, out)
		case !kept:
			if err := deletePrefix(tx, s.sp.key); err != nil {
				return err
			}
		}
	}
	return nil
}

func deletePrefix(tx Txn, prefix string) error {
	var keys []string
	if err := tx.Scan(prefix, "", func(k string, _ []byte) bool { keys = append(keys, k); return true }); err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// DeletePool deletes a pool, releases what its services hold and returns
// those allocations, ordered by service. The conflicts of the other pools
// are evaluated again: a pool that conflicted only with this one no longer
// does. A pool that does not exist is an error wrapping os.ErrNotExist.
//
// It works in steps, so that no transaction grows with the number of
// services (etcd bounds a transaction's size): it disables the pool, so
// nothing new comes from it, releases each service in its own transaction,
// then deletes the pool and anything allocated meanwhile in one last
// transaction. If it fails part way, the pool is left disabled; calling it
// again finishes the job.
func (l *LBIPAM) DeletePool(ctx context.Context, name string) ([]LBAllocation, error) {
	pools, err := l.Pools(ctx)
	if err != nil {
		return nil, fmt.Errorf("delete pool %q: %w", name, err)
	}
	i := slices.IndexFunc(pools, func(p LBPoolStatus) bool { return p.Pool.Name == name })
	if i < 0 {
		return nil, fmt.Errorf("delete pool %q: %w", name, os.ErrNotExist)
	}
	if p := pools[i].Pool; !p.Disabled {
		p.Disabled = true
		if _, err := l.SetPool(ctx, p); err != nil {
			return nil, fmt.Errorf("delete pool %q: disable it: %w", name, err)
		}
	}
	all, err := l.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("delete pool %q: %w", name, err)
	}
	var released []LBAllocation
	for _, al := range all {
		if al.Pool != name {
			continue
		}
		got, ok, err := l.Release(ctx, al.Service)
		if err != nil {
			return released, fmt.Errorf("delete pool %q: %w", name, err)
		}
		if ok {
			released = append(released, got)
		}
	}
	rest, err := l.deletePool(ctx, name)
	released = append(released, rest...)
	slices.SortFunc(released, func(a, b LBAllocation) int { return strings.Compare(a.Service, b.Service) })
	return released, err
}

// deletePool is the last step of DeletePool.
func (l *LBIPAM) deletePool(ctx context.Context, name string) ([]LBAllocation, error) {
	var released []LBAllocation
	err := l.update(ctx, func(tx Txn) error {
		released = released[:0]
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		e := doc.find(name)
		if e == nil {
			return os.ErrNotExist
		}
		seen := map[string]bool{}
		for _, s := range l.spaces(e) {
			if _, err := s.sp.used(tx); err != nil { // guards the scan
				return err
			}
			var svcs []string
			err := s.sp.each(tx, func(_ netip.Addr, r slotRecord) bool {
				for _, m := range slotServices(r) {
					if !seen[m] {
						seen[m] = true
						svcs = append(svcs, m)
					}
				}
				return true
			})
			if err != nil {
				return err
			}
			for _, svc := range svcs {
				var rec lbSvcRecord
				ok, err := getJSON(tx, l.svcKey(svc), &rec)
				if err != nil {
					return err
				}
				if !ok || rec.Pool != name {
					continue
				}
				if err := l.releaseService(tx, &doc, rec); err != nil {
					return err
				}
				released = append(released, rec.allocation())
			}
		}
		if err := deletePrefix(tx, l.poolPrefix(name)); err != nil {
			return err
		}
		doc.Pools = slices.DeleteFunc(doc.Pools, func(p lbPoolEntry) bool { return p.Name == name })
		doc.evalConflicts()
		return putJSON(tx, l.poolsKey(), doc)
	})
	if err != nil {
		return nil, fmt.Errorf("delete pool %q: %w", name, err)
	}
	slices.SortFunc(released, func(a, b LBAllocation) int { return strings.Compare(a.Service, b.Service) })
	return released, nil
}

// slotServices returns the services on a slot: its owner, or the members of
// a shared address. A shared slot with bad data yields none.
func slotServices(r slotRecord) []string {
	if !strings.HasPrefix(r.Owner, lbSharePrefix) {
		return []string{r.Owner}
	}
	var ms []lbMember
	if json.Unmarshal(r.Data, &ms) != nil {
		return nil
	}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Service)
	}
	return out
}

// Pools returns the status of every pool, in creation order.
func (l *LBIPAM) Pools(ctx context.Context) ([]LBPoolStatus, error) {
	var out []LBPoolStatus
	err := l.view(ctx, func(tx Txn) error {
		out = out[:0]
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		for i := range doc.Pools {
			st, err := l.status(tx, &doc.Pools[i])
			if err != nil {
				return err
			}
			out = append(out, st)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	return out, nil
}

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

// Get returns what service holds, or an error wrapping os.ErrNotExist.
func (l *LBIPAM) Get(ctx context.Context, service string) (LBAllocation, error) {
	if err := checkService(service); err != nil {
		return LBAllocation{}, fmt.Errorf("get allocation: %w", err)
	}
	var rec lbSvcRecord
	var ok bool
	err := l.view(ctx, func(tx Txn) error {
		var err error
		ok, err = getJSON(tx, l.svcKey(service), &rec)
		return err
	})
	if err != nil {
		return LBAllocation{}, fmt.Errorf("get allocation of %s: %w", service, err)
	}
	if !ok {
		return LBAllocation{}, fmt.Errorf("get allocation of %s: %w", service, os.ErrNotExist)
	}
	return rec.allocation(), nil
}

// Release frees what service holds and returns it; a shared address is
// freed when its last service leaves it. Releasing a service that holds
// nothing is not an error: it returns false.
func (l *LBIPAM) Release(ctx context.Context, service string) (LBAllocation, bool, error) {
	if err := checkService(service); err != nil {
		return LBAllocation{}, false, fmt.Errorf("release: %w", err)
	}
	var rec lbSvcRecord
	var ok bool
	err := l.update(ctx, func(tx Txn) error {
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		rec = lbSvcRecord{}
		if ok, err = getJSON(tx, l.svcKey(service), &rec); err != nil || !ok {
			return err
		}
		return l.releaseService(tx, &doc, rec)
	})
	if err != nil {
		return LBAllocation{}, false, fmt.Errorf("release %s: %w", service, err)
	}
	return rec.allocation(), ok, nil
}

// releaseService takes rec's service off its addresses and deletes its
// record.
func (l *LBIPAM) releaseService(tx Txn, doc *lbPoolsDoc, rec lbSvcRecord) error {
	now := l.clock()
	share, err := l.readShare(tx, rec.SharingKey)
	if err != nil {
		return err
	}
	shareChanged := false
	e := doc.find(rec.Pool)
	for _, a := range rec.Addrs {
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
		switch {
		case !held:
		case rec.SharingKey != "" && r.Owner == lbSharePrefix+rec.SharingKey:
			ms, err := decodeMembers(a, r)
			if err != nil {
				return err
			}
			ms = slices.DeleteFunc(ms, func(m lbMember) bool { return m.Service == rec.Service })
			if len(ms) > 0 {
				if r.Data, err = json.Marshal(ms); err != nil {
					return err
				}
				if err := s.sp.update(tx, a, r); err != nil {
					return err
				}
				continue
			}
			if _, _, err := s.sp.release(tx, a, now, 0); err != nil {
				return err
			}
			share = slices.DeleteFunc(share, func(sh lbShareRec) bool { return sh.Addr == a && sh.Pool == rec.Pool })
			shareChanged = true
		case r.Owner == rec.Service:
			if _, _, err := s.sp.release(tx, a, now, 0); err != nil {
				return err
			}
		}
	}
	switch {
	case !shareChanged:
	case len(share) == 0:
		if err := tx.Delete(l.shareKey(rec.SharingKey)); err != nil {
			return err
		}
	default:
		if err := putJSON(tx, l.shareKey(rec.SharingKey), share); err != nil {
			return err
		}
	}
	return tx.Delete(l.svcKey(rec.Service))
}

// List returns every allocation, ordered by service.
func (l *LBIPAM) List(ctx context.Context) ([]LBAllocation, error) {
	var out []LBAllocation
	err := l.view(ctx, func(tx Txn) error {
		out = out[:0]
		return l.scanServices(tx, func(_ string, rec lbSvcRecord) error {
			out = append(out, rec.allocation())
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list allocations: %w", err)
	}
	slices.SortFunc(out, func(a, b LBAllocation) int { return strings.Compare(a.Service, b.Service) })
	return out, nil
}

func (l *LBIPAM) scanServices(tx Txn, fn func(key string, rec lbSvcRecord) error) error {
	var ferr error
	err := tx.Scan(l.svcPrefix(), "", func(k string, v []byte) bool {
		var rec lbSvcRecord
		if ferr = unmarshal(k, v, &rec); ferr != nil {
			return false
		}
		ferr = fn(k, rec)
		return ferr == nil
	})
	if err != nil {
		return err
	}
	return ferr
}

// GC releases every allocation whose service is not in valid and returns
// what it released, ordered by service. Each service is released in its
// own transaction, so an allocation made while GC runs is not lost,
// provided valid includes it.
func (l *LBIPAM) GC(ctx context.Context, valid []string) ([]LBAllocation, error) {
	return gc(ctx, valid, l.List, func(al LBAllocation) string { return al.Service }, l.Release)
}

// Usage returns one "LB Pool" row per block of every pool, in creation
// order: the block (a CIDR or "start-stop"), its addresses and how many are
// held.
func (l *LBIPAM) Usage(ctx context.Context) ([]Usage, error) {
	var out []Usage
	err := l.view(ctx, func(tx Txn) error {
		out = out[:0]
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		for i := range doc.Pools {
			for _, s := range l.spaces(&doc.Pools[i]) {
				used, err := s.sp.used(tx)
				if err != nil {
					return err
				}
				out = append(out, Usage{Grouping: "LB Pool", CIDR: s.block.String(), Total: s.sp.capacity(), InUse: used})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return out, nil
}

// Check verifies that the stored state is consistent: the pools are valid
// and their conflicts right; every held address is held once, within its
// block, by a service that lists it or by services sharing it without a
// port clash; every service's addresses are held for it; the sharing index
// matches; each block's count of held addresses is right; and no state is
// left of a deleted block. It returns an error listing what is wrong.
func (l *LBIPAM) Check(ctx context.Context) error {
	var problems []string
	err := l.view(ctx, func(tx Txn) error {
		problems = problems[:0]
		bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
		doc, err := l.readPools(tx)
		if err != nil {
			return err
		}
		names := map[string]bool{}
		for _, e := range doc.Pools {
			if names[e.Name] {
				bad("pool %q is listed twice", e.Name)
			}
			names[e.Name] = true
			if _, err := checkLBPool(e.pool()); err != nil {
				bad("%v", err)
			}
			if e.Seq == 0 || e.Seq > doc.Seq {
				bad("pool %q has sequence number %d, outside 1-%d", e.Name, e.Seq, doc.Seq)
			}
		}
		re := lbPoolsDoc{Pools: slices.Clone(doc.Pools)}
		re.evalConflicts()
		for i, e := range doc.Pools {
			if c := re.Pools[i]; e.Conflicting != c.Conflicting || e.ConflictReason != c.ConflictReason {
				bad("pool %q: stored conflict (%v, %q) is not what its blocks give (%v, %q)", e.Name, e.Conflicting, e.ConflictReason, c.Conflicting, c.ConflictReason)
			}
		}
		svcs := map[string]lbSvcRecord{}
		err = l.scanServices(tx, func(k string, rec lbSvcRecord) error {
			if k != l.svcKey(rec.Service) {
				bad("key %s holds the allocation of %q", k, rec.Service)
			}
			svcs[rec.Service] = rec
			return nil
		})
		if err != nil {
			return err
		}
		shares := map[string][]lbShareRec{}
		var serr error
		err = tx.Scan(l.sharePrefix(), "", func(k string, v []byte) bool {
			key, err := url.PathUnescape(strings.TrimPrefix(k, l.sharePrefix()))
			if err != nil {
				bad("key %s: %v", k, err)
				return true
			}
			var list []lbShareRec
			if serr = unmarshal(k, v, &list); serr != nil {
				return false
			}
			shares[key] = list
			return true
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return err
		}
		holder := map[netip.Addr]string{}
		var live []string
		for i := range doc.Pools {
			e := &doc.Pools[i]
			for _, s := range l.spaces(e) {
				live = append(live, s.sp.key)
				var n uint64
				err := s.sp.each(tx, func(a netip.Addr, r slotRecord) bool {
					n++
					if err := s.sp.contains(a); err != nil {
						bad("pool %q: held %v", e.Name, err)
					}
					if p, dup := holder[a]; dup {
						bad("%v is held in pools %q and %q", a, p, e.Name)
					}
					holder[a] = e.Name
					l.checkSlot(e.Name, a, r, svcs, shares, bad)
					return true
				})
				if err != nil {
					return err
				}
				used, err := s.sp.used(tx)
				if err != nil {
					return err
				}
				if used != n {
					bad("pool %q: block %v counts %d held, has %d", e.Name, s.block, used, n)
				}
			}
		}
		for _, rec := range svcs {
			if err := l.checkAllocation(tx, &doc, rec); err != nil {
				bad("%v", err)
			}
		}
		for key, list := range shares {
			if len(list) == 0 {
				bad("sharing key %q has an empty list", key)
			}
			for _, sh := range list {
				e := doc.find(sh.Pool)
				if e == nil {
					bad("sharing key %q lists %v in pool %q, which does not exist", key, sh.Addr, sh.Pool)
					continue
				}
				s, ok := l.spaceOf(e, sh.Addr)
				if !ok {
					bad("sharing key %q lists %v in pool %q, which has no block with it", key, sh.Addr, sh.Pool)
					continue
				}
				r, held, err := s.sp.get(tx, sh.Addr)
				if err != nil {
					return err
				}
				if !held || r.Owner != lbSharePrefix+key {
					bad("sharing key %q lists %v in pool %q, which that key does not hold", key, sh.Addr, sh.Pool)
				}
			}
		}
		return tx.Scan(l.root()+"pool/", "", func(k string, _ []byte) bool {
			if !slices.ContainsFunc(live, func(p string) bool { return strings.HasPrefix(k, p) }) {
				bad("stray key %s", k)
			}
			return true
		})
	})
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return fmt.Errorf("check: %d problems: %s", len(problems), strings.Join(problems, "; "))
	}
	return nil
}

// checkSlot checks a held slot against the services and sharing index.
func (l *LBIPAM) checkSlot(pool string, a netip.Addr, r slotRecord, svcs map[string]lbSvcRecord, shares map[string][]lbShareRec, bad func(string, ...any)) {
	key, shared := strings.CutPrefix(r.Owner, lbSharePrefix)
	if !shared {
		rec, ok := svcs[r.Owner]
		switch {
		case !ok:
			bad("%v is held by %q, which has no allocation", a, r.Owner)
		case rec.Pool != pool || rec.SharingKey != "" || !slices.Contains(rec.Addrs, a):
			bad("%v is held in pool %q by %s, whose allocation is %v from %q with sharing key %q", a, pool, r.Owner, rec.Addrs, rec.Pool, rec.SharingKey)
		}
		return
	}
	if !slices.Contains(shares[key], lbShareRec{Addr: a, Pool: pool}) {
		bad("%v is held by sharing key %q, whose index does not list it", a, key)
	}
	ms, err := decodeMembers(a, r)
	if err != nil {
		bad("%v", err)
		return
	}
	if len(ms) == 0 {
		bad("%v is held by sharing key %q with no service", a, key)
	}
	for i, m := range ms {
		if err := memberClash(ms[:i], "", m.Ports, a); err != nil {
			bad("%s on %v: %v", m.Service, a, err)
		}
		rec, ok := svcs[m.Service]
		switch {
		case !ok:
			bad("%v is shared by %q, which has no allocation", a, m.Service)
		case rec.Pool != pool || rec.SharingKey != key || !slices.Contains(rec.Addrs, a) || !slices.Equal(rec.Ports, m.Ports):
			bad("%v is shared in pool %q by %s with key %q, ports %v, whose allocation is %v from %q with key %q, ports %v", a, pool, m.Service, key, m.Ports, rec.Addrs, rec.Pool, rec.SharingKey, rec.Ports)
		}
	}
}

// checkAllocation checks that a service's addresses are held for it.
func (l *LBIPAM) checkAllocation(tx Txn, doc *lbPoolsDoc, rec lbSvcRecord) error {
	if err := checkService(rec.Service); err != nil {
		return err
	}
	e := doc.find(rec.Pool)
	if e == nil {
		return fmt.Errorf("%s holds %v from pool %q, which does not exist", rec.Service, rec.Addrs, rec.Pool)
	}
	if len(rec.Addrs) == 0 || len(rec.Addrs) > 2 || len(rec.Addrs) == 2 && (!rec.Addrs[0].Is4() || rec.Addrs[1].Is4()) {
		return fmt.Errorf("%s holds %v; want one address per family, IPv4 first", rec.Service, rec.Addrs)
	}
	for _, a := range rec.Addrs {
		s, ok := l.spaceOf(e, a)
		if !ok {
			return fmt.Errorf("%s holds %v, which is in no block of pool %q", rec.Service, a, rec.Pool)
		}
		r, held, err := s.sp.get(tx, a)
		if err != nil {
			return err
		}
		owner := rec.Service
		if rec.SharingKey != "" {
			owner = lbSharePrefix + rec.SharingKey
		}
		if !held || r.Owner != owner {
			return fmt.Errorf("%s lists %v, which is held by %q", rec.Service, a, r.Owner)
		}
		if rec.SharingKey != "" {
			ms, err := decodeMembers(a, r)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(ms, func(m lbMember) bool { return m.Service == rec.Service }) {
				return fmt.Errorf("%s lists %v, whose sharing services do not include it", rec.Service, a)
			}
		}
	}
	return nil
}
