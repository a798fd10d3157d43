package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// DefaultCooldown is how long a released pod address rests before it is
// handed out again, unless every other address is held.
const DefaultCooldown = 30 * time.Second

// A Range is a run of pod addresses in a node's subnet, as in host-local's
// "ranges".
type Range struct {
	// Subnet is the network the addresses belong to, typically the node's
	// pod CIDR. Handed-out addresses carry its prefix length.
	Subnet netip.Prefix
	// Start and End bound the addresses handed out, inclusive. Default: the
	// first and last address of Subnet that is not reserved.
	Start, End netip.Addr
	// Gateway is the address pods route through; it is reserved, never handed
	// out. Default: the first address after the network address (10.244.1.1
	// in 10.244.1.0/24), unless NoGateway.
	Gateway netip.Addr
	// NoGateway leaves the default gateway out: no address is reserved for
	// it and allocations carry none.
	NoGateway bool
	// UseNetworkAddress hands out Subnet's first address, which is reserved
	// by default (for IPv6 it is the subnet-router anycast address).
	UseNetworkAddress bool
	// UseBroadcastAddress hands out the last address of an IPv4 Subnet, which
	// is reserved by default. IPv6 has no broadcast: its last address is
	// always usable. In /31 and /32 (and /127, /128) every address is usable
	// whatever these fields say (RFC 3021).
	UseBroadcastAddress bool
}

// NodeConfig configures a [NodeAllocator].
type NodeConfig struct {
	// Store keeps the allocations. Default: a bbolt file at
	// [DefaultBoltPath], which Close closes.
	Store Store
	// Name keeps this allocator's state apart from others in the same store,
	// such as the CNI network name. Printable ASCII without '/'. Default
	// "default".
	Name string
	// Ranges are where addresses come from. An owner receives one address
	// per family that Ranges has (dual-stack when both); the ranges of a
	// family are tried in order. Ranges must not overlap.
	Ranges []Range
	// Cooldown is how long a released address rests before it is handed out
	// again, unless every other address of its range is held. Default
	// [DefaultCooldown]; negative for none.
	Cooldown time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// IPConfig is one address of an [Allocation]: the address with its subnet's
// prefix length, as CNI reports it, and the range's gateway (invalid when it
// has none).
type IPConfig struct {
	Address netip.Prefix
	Gateway netip.Addr
}

// An Allocation is what one owner holds.
type Allocation struct {
	Owner Owner
	// IPs has one entry per family, IPv4 first.
	IPs []IPConfig
	// Since is when the first address was handed out.
	Since time.Time
}

// A NodeAllocator hands out pod addresses from a node's ranges, as CNI's
// host-local plugin does, keeping its state in a [Store] so that it survives
// restarts and crashes and is shared by every process using that store.
type NodeAllocator struct {
	common
	name     string
	ranges   []nodeRange
	cooldown time.Duration
}

type nodeRange struct {
	Range
	sp *space
}

// ownerRecord is the index from an owner to its addresses.
type ownerRecord struct {
	Addrs []netip.Addr `json:"addrs"`
	Since time.Time    `json:"since"`
}

// NewNodeAllocator checks cfg and returns an allocator. Bad ranges (invalid,
// overlapping, a Start, End or Gateway outside the subnet, nothing left to
// hand out) are errors that name the range.
func NewNodeAllocator(cfg NodeConfig) (*NodeAllocator, error) {
	name := cfg.Name
	if name == "" {
		name = "default"
	}
	if err := checkName("allocator name", name); err != nil {
		return nil, fmt.Errorf("new node allocator: %w", err)
	}
	if len(cfg.Ranges) == 0 {
		return nil, errors.New("new node allocator: no ranges")
	}
	a := &NodeAllocator{name: name, cooldown: cfg.Cooldown}
	if a.cooldown == 0 {
		a.cooldown = DefaultCooldown
	}
	for i, r := range cfg.Ranges {
		nr, err := a.newRange(r)
		if err != nil {
			return nil, fmt.Errorf("new node allocator: range %d: %w", i, err)
		}
		for _, o := range a.ranges {
			if overlaps(o.sp.first, o.sp.last, nr.sp.first, nr.sp.last) {
				return nil, fmt.Errorf("new node allocator: range %d (%v-%v) overlaps range %v-%v", i, nr.Start, nr.End, o.Start, o.End)
			}
		}
		a.ranges = append(a.ranges, nr)
	}
	c, err := newCommon(cfg.Store, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("new node allocator: %w", err)
	}
	a.common = c
	return a, nil
}

func (a *NodeAllocator) newRange(r Range) (nodeRange, error) {
	if err := checkPrefix("subnet", r.Subnet); err != nil {
		return nodeRange{}, err
	}
	net, last := r.Subnet.Addr(), lastAddr(r.Subnet)
	small := r.Subnet.Bits() >= net.BitLen()-1 // /31, /32, /127, /128
	var reserved []netip.Addr
	first := net
	if !small && !r.UseNetworkAddress {
		first = net.Next()
	}
	end := last
	if !small && net.Is4() && !r.UseBroadcastAddress {
		end = last.Prev()
	}
	if !r.NoGateway {
		if !r.Gateway.IsValid() {
			r.Gateway = net.Next()
			if small {
				r.Gateway = netip.Addr{}
			}
		}
		if r.Gateway.IsValid() {
			if !r.Subnet.Contains(r.Gateway) {
				return nodeRange{}, fmt.Errorf("gateway %v is outside subnet %v", r.Gateway, r.Subnet)
			}
			reserved = append(reserved, r.Gateway)
		}
	} else if r.Gateway.IsValid() {
		return nodeRange{}, fmt.Errorf("subnet %v: both Gateway and NoGateway set", r.Subnet)
	}
	if r.Start.IsValid() {
		if !r.Subnet.Contains(r.Start) {
			return nodeRange{}, fmt.Errorf("start %v is outside subnet %v", r.Start, r.Subnet)
		}
		first = r.Start
	}
	if r.End.IsValid() {
		if !r.Subnet.Contains(r.End) {
			return nodeRange{}, fmt.Errorf("end %v is outside subnet %v", r.End, r.Subnet)
		}
		end = r.End
	}
	if first.Compare(end) > 0 {
		return nodeRange{}, fmt.Errorf("subnet %v: start %v is after end %v", r.Subnet, first, end)
	}
	r.Start, r.End = first, end
	key := fmt.Sprintf("node/%s/r/%s-%s/", a.name, addrKey(first), addrKey(end))
	in := reserved[:0:0]
	for _, x := range reserved {
		if x.Compare(first) >= 0 && x.Compare(end) <= 0 {
			in = append(in, x)
		}
	}
	sp := newSpace(key, first, end, 0, in)
	if sp.capacity() == 0 {
		return nodeRange{}, fmt.Errorf("subnet %v: range %v-%v has no address left once the gateway is reserved", r.Subnet, first, end)
	}
	return nodeRange{Range: r, sp: sp}, nil
}

// Close closes the store if the allocator opened it (NodeConfig.Store nil).
func (a *NodeAllocator) Close() error { return a.close() }

func (a *NodeAllocator) ownerKey(o Owner) string {
	return "node/" + a.name + "/owner/" + o.ContainerID + "/" + o.IfName
}

func (a *NodeAllocator) ownerPrefix() string { return "node/" + a.name + "/owner/" }

// rangeOf returns the range that contains addr.
func (a *NodeAllocator) rangeOf(addr netip.Addr) (*nodeRange, error) {
	for i := range a.ranges {
		r := &a.ranges[i]
		if addr.Is4() == r.Start.Is4() && addr.Compare(r.Start) >= 0 && addr.Compare(r.End) <= 0 {
			return r, nil
		}
	}
	return nil, fmt.Errorf("address %v is outside every range", addr)
}

func (a *NodeAllocator) families() []bool {
	var addrs []netip.Addr
	for _, x := range a.ranges {
		addrs = append(addrs, x.Start)
	}
	return familiesOf(addrs)
}

func (a *NodeAllocator) allocation(o Owner, rec ownerRecord) Allocation {
	al := Allocation{Owner: o, Since: rec.Since}
	for _, addr := range rec.Addrs {
		ipc := IPConfig{Address: netip.PrefixFrom(addr, addr.BitLen())}
		if r, err := a.rangeOf(addr); err == nil {
			ipc.Address = netip.PrefixFrom(addr, r.Subnet.Bits())
			if !r.NoGateway {
				ipc.Gateway = r.Gateway
			}
		}
		al.IPs = append(al.IPs, ipc)
	}
	return al
}

// Allocate hands owner one address per family. It is idempotent: an owner
// that already holds addresses gets them again. When a family's ranges are
// all held it returns an error wrapping [ErrExhausted] and hands out
// nothing.
func (a *NodeAllocator) Allocate(ctx context.Context, owner Owner) (Allocation, error) {
	if err := owner.Validate(); err != nil {
		return Allocation{}, fmt.Errorf("allocate: %w", err)
	}
	var rec ownerRecord
	err := a.update(ctx, func(tx Txn) error {
		rec = ownerRecord{}
		ok, err := getJSON(tx, a.ownerKey(owner), &rec)
		if err != nil || ok {
			return err
		}
		now := a.clock()
		rec = ownerRecord{Since: now}
		for _, v4 := range a.families() {
			var got netip.Addr
			var errs []error
			for _, r := range a.ranges {
				if r.Start.Is4() != v4 {
					continue
				}
				addr, err := r.sp.claimNext(tx, owner.String(), nil, now, a.cooldown)
				if errors.Is(err, ErrExhausted) {
					errs = append(errs, err)
					continue
				}
				if err != nil {
					return err
				}
				got = addr
				break
			}
			if !got.IsValid() {
				fam := "IPv6"
				if v4 {
					fam = "IPv4"
				}
				return fmt.Errorf("no %s address left: %w", fam, errors.Join(errs...))
			}
			rec.Addrs = append(rec.Addrs, got)
		}
		return putJSON(tx, a.ownerKey(owner), rec)
	})
	if err != nil {
		return Allocation{}, fmt.Errorf("allocate for %s: %w", owner, err)
	}
	return a.allocation(owner, rec), nil
}

// AllocateAddr hands owner the given addresses (at most one per family), as
// for a pod that asks for a static IP. An address outside every range or
// reserved is an error; one held by another owner is an error wrapping
// [ErrInUse]. Asking again for what the owner holds returns it; asking an
// owner that holds other addresses is an error.
func (a *NodeAllocator) AllocateAddr(ctx context.Context, owner Owner, addrs ...netip.Addr) (Allocation, error) {
	if err := owner.Validate(); err != nil {
		return Allocation{}, fmt.Errorf("allocate: %w", err)
	}
	if len(addrs) == 0 {
		return Allocation{}, fmt.Errorf("allocate for %s: no address given", owner)
	}
	want := slices.Clone(addrs)
	slices.SortFunc(want, func(x, y netip.Addr) int { return familyIndex(x) - familyIndex(y) })
	for i, addr := range want {
		if !addr.IsValid() {
			return Allocation{}, fmt.Errorf("allocate for %s: invalid address", owner)
		}
		if i > 0 && addr.Is4() == want[i-1].Is4() {
			return Allocation{}, fmt.Errorf("allocate for %s: two %s addresses (%v, %v); one per family", owner, family(addr), want[i-1], addr)
		}
		if addr.Zone() != "" || addr.Is4In6() {
			return Allocation{}, fmt.Errorf("allocate for %s: address %v: zoned and IPv4-mapped addresses are not allowed", owner, addr)
		}
		r, err := a.rangeOf(addr)
		if err != nil {
			return Allocation{}, fmt.Errorf("allocate for %s: %w", owner, err)
		}
		if err := r.sp.contains(addr); err != nil {
			return Allocation{}, fmt.Errorf("allocate for %s: %w", owner, err)
		}
	}
	var rec ownerRecord
	err := a.update(ctx, func(tx Txn) error {
		rec = ownerRecord{}
		ok, err := getJSON(tx, a.ownerKey(owner), &rec)
		if err != nil {
			return err
		}
		if ok {
			if slices.Equal(rec.Addrs, want) {
				return nil
			}
			return fmt.Errorf("owner already holds %v", rec.Addrs)
		}
		now := a.clock()
		rec = ownerRecord{Since: now, Addrs: want}
		for _, addr := range want {
			r, _ := a.rangeOf(addr)
			if err := r.sp.claim(tx, addr, owner.String(), nil, now); err != nil {
				return err
			}
		}
		return putJSON(tx, a.ownerKey(owner), rec)
	})
	if err != nil {
		return Allocation{}, fmt.Errorf("allocate %v for %s: %w", want, owner, err)
	}
	return a.allocation(owner, rec), nil
}

// Get returns what owner holds, or an error wrapping os.ErrNotExist.
func (a *NodeAllocator) Get(ctx context.Context, owner Owner) (Allocation, error) {
	if err := owner.Validate(); err != nil {
		return Allocation{}, fmt.Errorf("get allocation: %w", err)
	}
	rec, err := a.getOwner(ctx, a.ownerKey(owner), owner)
	if err != nil {
		return Allocation{}, err
	}
	return a.allocation(owner, rec), nil
}

// Release frees what owner holds and returns it. Releasing an owner that
// holds nothing is not an error (CNI DEL is idempotent): it returns false.
func (a *NodeAllocator) Release(ctx context.Context, owner Owner) (Allocation, bool, error) {
	if err := owner.Validate(); err != nil {
		return Allocation{}, false, fmt.Errorf("release: %w", err)
	}
	var rec ownerRecord
	var ok bool
	err := a.update(ctx, func(tx Txn) error {
		var err error
		rec = ownerRecord{}
		ok, err = getJSON(tx, a.ownerKey(owner), &rec)
		if err != nil || !ok {
			return err
		}
		return a.releaseOwner(tx, owner, rec)
	})
	if err != nil {
		return Allocation{}, false, fmt.Errorf("release %s: %w", owner, err)
	}
	return a.allocation(owner, rec), ok, nil
}

func (a *NodeAllocator) releaseOwner(tx Txn, owner Owner, rec ownerRecord) error {
	now := a.clock()
	for _, addr := range rec.Addrs {
		r, err := a.rangeOf(addr)
		if err != nil {
			// The ranges changed since the address was handed out: its slot
			// is in a space no longer configured. Drop the index entry.
			continue
		}
		if _, _, err := r.sp.release(tx, addr, now, a.cooldown); err != nil {
			return err
		}
	}
	return tx.Delete(a.ownerKey(owner))
}

// ReleaseAddr frees one address, whoever holds it, and returns the owner
// that held it (false when it was free). An address outside every range is
// an error.
func (a *NodeAllocator) ReleaseAddr(ctx context.Context, addr netip.Addr) (Owner, bool, error) {
	r, err := a.rangeOf(addr)
	if err != nil {
		return Owner{}, false, fmt.Errorf("release %v: %w", addr, err)
	}
	var owner Owner
	var held bool
	err = a.update(ctx, func(tx Txn) error {
		owner, held = Owner{}, false
		slot, ok, err := r.sp.get(tx, addr)
		if err != nil || !ok || !slot.held() {
			return err
		}
		if owner, err = ParseOwner(slot.Owner); err != nil {
			return fmt.Errorf("record of %v: %w", addr, err)
		}
		held = true
		var rec ownerRecord
		if _, err := getJSON(tx, a.ownerKey(owner), &rec); err != nil {
			return err
		}
		if _, _, err := r.sp.release(tx, addr, a.clock(), a.cooldown); err != nil {
			return err
		}
		rec.Addrs = slices.DeleteFunc(rec.Addrs, func(x netip.Addr) bool { return x == addr })
		if len(rec.Addrs) == 0 {
			return tx.Delete(a.ownerKey(owner))
		}
		return putJSON(tx, a.ownerKey(owner), rec)
	})
	if err != nil {
		return Owner{}, false, fmt.Errorf("release %v: %w", addr, err)
	}
	return owner, held, nil
}

// List returns every allocation, ordered by owner.
func (a *NodeAllocator) List(ctx context.Context) ([]Allocation, error) {
	var out []Allocation
	err := a.view(ctx, func(tx Txn) error {
		out = out[:0]
		return scanOwners(tx, a.ownerPrefix(), func(o Owner, rec ownerRecord) {
			out = append(out, a.allocation(o, rec))
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list allocations: %w", err)
	}
	return out, nil
}

func scanOwners(tx Txn, prefix string, fn func(Owner, ownerRecord)) error {
	var ferr error
	err := tx.Scan(prefix, "", func(k string, v []byte) bool {
		o, err := ParseOwner(strings.TrimPrefix(k, prefix))
		if err != nil {
			ferr = fmt.Errorf("key %s: %w", k, err)
			return false
		}
		var rec ownerRecord
		if err := unmarshal(k, v, &rec); err != nil {
			ferr = err
			return false
		}
		fn(o, rec)
		return true
	})
	if err != nil {
		return err
	}
	return ferr
}

// GC releases every allocation whose owner is not in valid, as CNI's GC
// does with its valid-attachments list, and returns what it released. Each
// owner is released in its own transaction, so an allocation made while GC
// runs is not lost, provided valid includes it.
func (a *NodeAllocator) GC(ctx context.Context, valid []Owner) ([]Allocation, error) {
	return gc(ctx, valid, a.List, func(al Allocation) Owner { return al.Owner }, a.Release)
}

// Usage returns one row per range: its addresses and how many are held.
func (a *NodeAllocator) Usage(ctx context.Context) ([]Usage, error) {
	var out []Usage
	err := a.view(ctx, func(tx Txn) error {
		out = out[:0]
		for _, r := range a.ranges {
			used, err := r.sp.used(tx)
			if err != nil {
				return err
			}
			cidr := r.Subnet.String()
			if r.Start != r.Subnet.Addr() || r.End != lastAddr(r.Subnet) {
				cidr = fmt.Sprintf("%v (%v-%v)", r.Subnet, r.Start, r.End)
			}
			out = append(out, Usage{Grouping: "Range", CIDR: cidr, Total: r.sp.capacity(), InUse: used})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return out, nil
}

// Check verifies that the stored state is consistent: every owner's
// addresses are held by that owner, every held address has an owner that
// lists it, no address is held twice, and each range's count of held
// addresses is right. It returns an error listing what is wrong.
func (a *NodeAllocator) Check(ctx context.Context) error {
	var problems []string
	err := a.view(ctx, func(tx Txn) error {
		problems = problems[:0]
		owners := map[Owner]ownerRecord{}
		if err := scanOwners(tx, a.ownerPrefix(), func(o Owner, rec ownerRecord) { owners[o] = rec }); err != nil {
			return err
		}
		holder := map[netip.Addr]Owner{}
		for _, r := range a.ranges {
			var n uint64
			err := r.sp.each(tx, func(addr netip.Addr, slot slotRecord) bool {
				n++
				o, err := ParseOwner(slot.Owner)
				if err != nil {
					problems = append(problems, fmt.Sprintf("%v: bad owner %q", addr, slot.Owner))
					return true
				}
				holder[addr] = o
				if !slices.Contains(owners[o].Addrs, addr) {
					problems = append(problems, fmt.Sprintf("%v is held by %s, which does not list it", addr, o))
				}
				return true
			})
			if err != nil {
				return err
			}
			used, err := r.sp.used(tx)
			if err != nil {
				return err
			}
			if used != n {
				problems = append(problems, fmt.Sprintf("range %v-%v counts %d held, has %d", r.Start, r.End, used, n))
			}
		}
		for o, rec := range owners {
			for _, addr := range rec.Addrs {
				if _, err := a.rangeOf(addr); err != nil {
					continue
				}
				if h, ok := holder[addr]; !ok || h != o {
					problems = append(problems, fmt.Sprintf("%s lists %v, which is held by %q", o, addr, h))
				}
			}
		}
		return nil
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
