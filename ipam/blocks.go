package ipam

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Default block sizes of a [BlockPool], Calico's defaults: 64 IPv4 and 64
// IPv6 addresses a block.
const (
	DefaultBlockSizeV4 = 26
	DefaultBlockSizeV6 = 122
)

// BlockPoolConfig configures a [BlockPool].
type BlockPoolConfig struct {
	// Store keeps the allocations. Default: a bbolt file at
	// [DefaultBoltPath], which Close closes.
	Store Store
	// Name keeps this pool's state apart from others in the same store.
	// Printable ASCII without '/'. Default "default".
	Name string
	// CIDRs are the IP pools, IPv4 and/or IPv6: an owner receives one
	// address per family they have (dual-stack when both), and new blocks
	// are taken from the CIDRs of a family in order. They must not overlap,
	// and each must hold at least one block.
	CIDRs []netip.Prefix
	// BlockSizeV4 and BlockSizeV6 are the prefix lengths of blocks. Default
	// [DefaultBlockSizeV4] and [DefaultBlockSizeV6]. A pool remembers the
	// sizes it was first used with and refuses others.
	BlockSizeV4, BlockSizeV6 int
	// StrictAffinity makes a node hand out addresses only from its own
	// blocks: when they are full and no block is left to claim, it fails
	// instead of borrowing from another node's block.
	StrictAffinity bool
	// Cooldown is how long a released address rests before it is handed out
	// again, unless every other address of its block is held. Default
	// [DefaultCooldown]; negative for none.
	Cooldown time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// A BlockPool hands out pod addresses as Calico IPAM does. Its IP pools are
// split into blocks (/26 by default); a node claims a block when it needs
// one, which gives it affinity to the block, and hands out addresses from
// its own blocks first, in address order. When those are full it claims a
// new block, and when no block is left it borrows an address from another
// node's block, unless StrictAffinity. A node keeps its blocks, empty or
// not, until [BlockPool.ReleaseAffinity].
//
// The state lives in a [Store], so it survives restarts and crashes and is
// shared by every process, on every node, that uses that store.
type BlockPool struct {
	common
	name           string
	sizeV4, sizeV6 int
	strict         bool
	cooldown       time.Duration
	cidrs          []blockCIDR
}

// A blockCIDR is one IP pool: a space whose slots are its blocks, each held
// by the node the block is affine to.
type blockCIDR struct {
	prefix netip.Prefix
	size   int // prefix length of its blocks
	sp     *space
}

// block returns the block of c that holds a.
func (c *blockCIDR) block(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, c.size).Masked()
}

// addrs returns the number of addresses of c, saturated at MaxUint64.
func (c *blockCIDR) addrs() uint64 {
	host := c.prefix.Addr().BitLen() - c.prefix.Bits()
	if host >= 64 {
		return math.MaxUint64
	}
	return 1 << host
}

type blockSpec struct {
	SizeV4 int `json:"sizeV4"`
	SizeV6 int `json:"sizeV6"`
}

// Block describes one claimed block.
type Block struct {
	// CIDR is the block's prefix.
	CIDR netip.Prefix
	// Node is the node the block is affine to.
	Node string
	// Total is the number of addresses of the block (saturated at 2^64-1);
	// InUse the number held, by its node or borrowed by others.
	Total, InUse uint64
}

// NewBlockPool checks cfg and returns a pool. Bad CIDRs (invalid,
// overlapping, smaller than a block) and bad block sizes are errors that
// name them.
func NewBlockPool(cfg BlockPoolConfig) (*BlockPool, error) {
	p := &BlockPool{name: cfg.Name, sizeV4: cfg.BlockSizeV4, sizeV6: cfg.BlockSizeV6, strict: cfg.StrictAffinity, cooldown: cfg.Cooldown}
	if p.name == "" {
		p.name = "default"
	}
	if err := checkName("pool name", p.name); err != nil {
		return nil, fmt.Errorf("new block pool: %w", err)
	}
	if p.sizeV4 == 0 {
		p.sizeV4 = DefaultBlockSizeV4
	}
	if p.sizeV6 == 0 {
		p.sizeV6 = DefaultBlockSizeV6
	}
	if p.sizeV4 < 1 || p.sizeV4 > 32 {
		return nil, fmt.Errorf("new block pool: IPv4 block size /%d: want 1 to 32", p.sizeV4)
	}
	if p.sizeV6 < 1 || p.sizeV6 > 128 {
		return nil, fmt.Errorf("new block pool: IPv6 block size /%d: want 1 to 128", p.sizeV6)
	}
	if p.cooldown == 0 {
		p.cooldown = DefaultCooldown
	}
	if len(cfg.CIDRs) == 0 {
		return nil, errors.New("new block pool: no CIDRs")
	}
	for i, c := range cfg.CIDRs {
		if err := checkPrefix("pool", c); err != nil {
			return nil, fmt.Errorf("new block pool: %w", err)
		}
		size := p.sizeV6
		if c.Addr().Is4() {
			size = p.sizeV4
		}
		if size < c.Bits() {
			return nil, fmt.Errorf("new block pool: block size /%d is larger than pool %v", size, c)
		}
		for _, o := range cfg.CIDRs[:i] {
			if o.Overlaps(c) {
				return nil, fmt.Errorf("new block pool: pools %v and %v overlap", o, c)
			}
		}
		shift := uint(c.Addr().BitLen() - size)
		lastBlock := fromU128(toU128(lastAddr(c)).rsh(shift).shl(shift), c.Addr().Is4())
		key := fmt.Sprintf("blocks/%s/p/%s-%d/", p.name, addrKey(c.Addr()), c.Bits())
		p.cidrs = append(p.cidrs, blockCIDR{prefix: c, size: size, sp: newSpace(key, c.Addr(), lastBlock, shift, nil)})
	}
	c, err := newCommon(cfg.Store, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("new block pool: %w", err)
	}
	p.common = c
	return p, nil
}

// Close closes the store if the pool opened it (BlockPoolConfig.Store nil).
func (p *BlockPool) Close() error { return p.close() }

func (p *BlockPool) specKey() string              { return "blocks/" + p.name + "/spec" }
func (p *BlockPool) ownerKey(o Owner) string      { return p.ownerPrefix() + o.ContainerID + "/" + o.IfName }
func (p *BlockPool) ownerPrefix() string          { return "blocks/" + p.name + "/owner/" }
func (p *BlockPool) affRoot() string              { return "blocks/" + p.name + "/aff/" }
func (p *BlockPool) affPrefix(node string) string { return p.affRoot() + node + "/" }
func (p *BlockPool) blockRoot() string            { return "blocks/" + p.name + "/b/" }

func (p *BlockPool) affKey(node string, b netip.Prefix) string {
	return p.affPrefix(node) + addrKey(b.Addr())
}

// blockSpace returns the space of the addresses of block b: all of them,
// as Calico hands out every address of a block.
func (p *BlockPool) blockSpace(b netip.Prefix) *space {
	return newSpace(p.blockRoot()+addrKey(b.Addr())+"/", b.Addr(), lastAddr(b), 0, nil)
}

// cidrOf returns the pool that contains addr.
func (p *BlockPool) cidrOf(addr netip.Addr) (*blockCIDR, error) {
	for i := range p.cidrs {
		if p.cidrs[i].prefix.Contains(addr) {
			return &p.cidrs[i], nil
		}
	}
	return nil, fmt.Errorf("address %v is outside every pool", addr)
}

// checkSpec refuses block sizes other than those the pool was first used
// with, and records them on first use.
func (p *BlockPool) checkSpec(tx Txn) error {
	want := blockSpec{SizeV4: p.sizeV4, SizeV6: p.sizeV6}
	var have blockSpec
	ok, err := getJSON(tx, p.specKey(), &have)
	if err != nil {
		return err
	}
	if !ok {
		return putJSON(tx, p.specKey(), want)
	}
	if have != want {
		return fmt.Errorf("block pool %q has /%d (IPv4) and /%d (IPv6) blocks; this configuration asks for /%d and /%d",
			p.name, have.SizeV4, have.SizeV6, want.SizeV4, want.SizeV6)
	}
	return nil
}

func (p *BlockPool) families() []bool {
	var addrs []netip.Addr
	for _, x := range p.cidrs {
		addrs = append(addrs, x.prefix.Addr())
	}
	return familiesOf(addrs)
}

func (p *BlockPool) allocation(o Owner, rec ownerRecord) Allocation {
	al := Allocation{Owner: o, Since: rec.Since}
	for _, addr := range rec.Addrs {
		al.IPs = append(al.IPs, IPConfig{Address: netip.PrefixFrom(addr, addr.BitLen())})
	}
	return al
}

// affineBlocks returns the blocks of node in the configured pools, in
// address order, IPv4 first. The scan is guarded only if the caller read
// the heads of the pools' spaces, which every change of affinity writes.
func (p *BlockPool) affineBlocks(tx Txn, node string) ([]netip.Prefix, error) {
	prefix := p.affPrefix(node)
	var out []netip.Prefix
	err := tx.Scan(prefix, "", func(k string, _ []byte) bool {
		a, err := parseAddrKey(strings.TrimPrefix(k, prefix))
		if err != nil {
			return true // Check reports it
		}
		c, err := p.cidrOf(a)
		if err != nil || c.block(a).Addr() != a {
			return true // a pool no longer configured, or a bad key
		}
		out = append(out, c.block(a))
		return true
	})
	slices.SortFunc(out, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return out, err
}

// Allocate hands owner, a pod on node, one address per family, as a host
// prefix (/32 or /128) without gateway, as Calico does. The address comes
// from the first of node's blocks that has one free; failing that from a
// block newly claimed for node; failing that, unless StrictAffinity, from
// another node's block. When none is left it returns an error wrapping
// [ErrExhausted] and hands out nothing.
//
// It is idempotent: an owner that already holds addresses gets them again,
// whatever node is given.
func (p *BlockPool) Allocate(ctx context.Context, node string, owner Owner) (Allocation, error) {
	if err := checkName("node name", node); err != nil {
		return Allocation{}, fmt.Errorf("allocate: %w", err)
	}
	if err := owner.Validate(); err != nil {
		return Allocation{}, fmt.Errorf("allocate: %w", err)
	}
	var rec ownerRecord
	err := p.update(ctx, func(tx Txn) error {
		rec = ownerRecord{}
		if err := p.checkSpec(tx); err != nil {
			return err
		}
		ok, err := getJSON(tx, p.ownerKey(owner), &rec)
		if err != nil || ok {
			return err
		}
		now := p.clock()
		rec = ownerRecord{Since: now}
		// Every change of affinity writes the head of a pool's space:
		// reading them guards the scan of node's blocks.
		for _, c := range p.cidrs {
			if _, err := c.sp.used(tx); err != nil {
				return err
			}
		}
		blocks, err := p.affineBlocks(tx, node)
		if err != nil {
			return err
		}
		for _, v4 := range p.families() {
			addr, err := p.allocFamily(tx, node, owner, v4, blocks, now)
			if err != nil {
				return err
			}
			rec.Addrs = append(rec.Addrs, addr)
		}
		return putJSON(tx, p.ownerKey(owner), rec)
	})
	if err != nil {
		return Allocation{}, fmt.Errorf("allocate for %s on node %q: %w", owner, node, err)
	}
	return p.allocation(owner, rec), nil
}

// allocFamily hands owner an address of one family: from node's blocks,
// else from a new block, else borrowed.
func (p *BlockPool) allocFamily(tx Txn, node string, owner Owner, v4 bool, blocks []netip.Prefix, now time.Time) (netip.Addr, error) {
	affine := 0
	for _, b := range blocks {
		if b.Addr().Is4() != v4 {
			continue
		}
		c, _ := p.cidrOf(b.Addr())
		if slot, ok, err := c.sp.get(tx, b.Addr()); err != nil {
			return netip.Addr{}, err
		} else if !ok || slot.Owner != node {
			continue // a stale index entry, which Check reports
		}
		affine++
		addr, err := p.blockSpace(b).claimNext(tx, owner.String(), nil, now, p.cooldown)
		if errors.Is(err, ErrExhausted) {
			continue
		}
		return addr, err
	}
	for i := range p.cidrs {
		c := &p.cidrs[i]
		if c.prefix.Addr().Is4() != v4 {
			continue
		}
		start, err := c.sp.claimNext(tx, node, nil, now, 0)
		if errors.Is(err, ErrExhausted) {
			continue
		}
		if err != nil {
			return netip.Addr{}, err
		}
		b := netip.PrefixFrom(start, c.size)
		if err := tx.Put(p.affKey(node, b), []byte(b.String())); err != nil {
			return netip.Addr{}, err
		}
		return p.blockSpace(b).claimNext(tx, owner.String(), nil, now, p.cooldown)
	}
	fam := "IPv6"
	if v4 {
		fam = "IPv4"
	}
	if p.strict {
		return netip.Addr{}, fmt.Errorf("no %s address left for node %q: its %d blocks are full, every block is claimed, and strict affinity forbids borrowing: %w", fam, node, affine, ErrExhausted)
	}
	for _, c := range p.cidrs {
		if c.prefix.Addr().Is4() != v4 {
			continue
		}
		// The scan is guarded by the pool's head, read by Allocate.
		var claimed []netip.Prefix
		err := c.sp.each(tx, func(a netip.Addr, r slotRecord) bool {
			if r.Owner != node {
				claimed = append(claimed, netip.PrefixFrom(a, c.size))
			}
			return true
		})
		if err != nil {
			return netip.Addr{}, err
		}
		for _, b := range claimed {
			bs := p.blockSpace(b)
			used, err := bs.peekUsed(tx)
			if err != nil {
				return netip.Addr{}, err
			}
			if used >= bs.capacity() {
				continue
			}
			addr, err := bs.claimNext(tx, owner.String(), nil, now, p.cooldown)
			if errors.Is(err, ErrExhausted) {
				continue
			}
			return addr, err
		}
	}
	return netip.Addr{}, fmt.Errorf("no %s address left for node %q: its %d blocks are full, every block is claimed and full: %w", fam, node, affine, ErrExhausted)
}

// AllocateAddr hands owner, a pod on node, the given addresses (at most one
// per family), as for a pod that asks for a static IP. An address whose
// block is unclaimed claims the block for node; one in another node's
// block is borrowed, or refused with StrictAffinity. An address outside
// every pool is an error; one held by another owner is an error wrapping
// [ErrInUse]. Asking again for what the owner holds returns it; asking for
// an owner that holds other addresses is an error.
func (p *BlockPool) AllocateAddr(ctx context.Context, node string, owner Owner, addrs ...netip.Addr) (Allocation, error) {
	if err := checkName("node name", node); err != nil {
		return Allocation{}, fmt.Errorf("allocate: %w", err)
	}
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
		if _, err := p.cidrOf(addr); err != nil {
			return Allocation{}, fmt.Errorf("allocate for %s: %w", owner, err)
		}
	}
	var rec ownerRecord
	err := p.update(ctx, func(tx Txn) error {
		rec = ownerRecord{}
		if err := p.checkSpec(tx); err != nil {
			return err
		}
		ok, err := getJSON(tx, p.ownerKey(owner), &rec)
		if err != nil {
			return err
		}
		if ok {
			if slices.Equal(rec.Addrs, want) {
				return nil
			}
			return fmt.Errorf("owner already holds %v", rec.Addrs)
		}
		now := p.clock()
		rec = ownerRecord{Since: now, Addrs: want}
		for _, addr := range want {
			c, _ := p.cidrOf(addr)
			b := c.block(addr)
			slot, ok, err := c.sp.get(tx, b.Addr())
			if err != nil {
				return err
			}
			switch {
			case !ok || !slot.held():
				if err := c.sp.claim(tx, b.Addr(), node, nil, now); err != nil {
					return err
				}
				if err := tx.Put(p.affKey(node, b), []byte(b.String())); err != nil {
					return err
				}
			case slot.Owner != node && p.strict:
				return fmt.Errorf("%v is in block %v of node %q, and strict affinity forbids borrowing", addr, b, slot.Owner)
			}
			if err := p.blockSpace(b).claim(tx, addr, owner.String(), nil, now); err != nil {
				return err
			}
		}
		return putJSON(tx, p.ownerKey(owner), rec)
	})
	if err != nil {
		return Allocation{}, fmt.Errorf("allocate %v for %s on node %q: %w", want, owner, node, err)
	}
	return p.allocation(owner, rec), nil
}

// Get returns what owner holds, or an error wrapping os.ErrNotExist.
func (p *BlockPool) Get(ctx context.Context, owner Owner) (Allocation, error) {
	if err := owner.Validate(); err != nil {
		return Allocation{}, fmt.Errorf("get allocation: %w", err)
	}
	rec, err := p.getOwner(ctx, p.ownerKey(owner), owner)
	if err != nil {
		return Allocation{}, err
	}
	return p.allocation(owner, rec), nil
}

// Release frees what owner holds and returns it. Releasing an owner that
// holds nothing is not an error (CNI DEL is idempotent): it returns false.
// The blocks stay affine to their nodes, as in Calico, until
// [BlockPool.ReleaseAffinity].
func (p *BlockPool) Release(ctx context.Context, owner Owner) (Allocation, bool, error) {
	if err := owner.Validate(); err != nil {
		return Allocation{}, false, fmt.Errorf("release: %w", err)
	}
	var rec ownerRecord
	var ok bool
	err := p.update(ctx, func(tx Txn) error {
		var err error
		rec = ownerRecord{}
		ok, err = getJSON(tx, p.ownerKey(owner), &rec)
		if err != nil || !ok {
			return err
		}
		now := p.clock()
		for _, addr := range rec.Addrs {
			c, err := p.cidrOf(addr)
			if err != nil {
				// The pools changed since the address was handed out: its
				// slot is in a block no longer configured. Drop the index
				// entry.
				continue
			}
			if _, _, err := p.blockSpace(c.block(addr)).release(tx, addr, now, p.cooldown); err != nil {
				return err
			}
		}
		return tx.Delete(p.ownerKey(owner))
	})
	if err != nil {
		return Allocation{}, false, fmt.Errorf("release %s: %w", owner, err)
	}
	return p.allocation(owner, rec), ok, nil
}

// ReleaseAddr frees one address, whoever holds it, and returns the owner
// that held it (false when it was free). An address outside every pool is
// an error.
func (p *BlockPool) ReleaseAddr(ctx context.Context, addr netip.Addr) (Owner, bool, error) {
	c, err := p.cidrOf(addr)
	if err != nil {
		return Owner{}, false, fmt.Errorf("release %v: %w", addr, err)
	}
	bs := p.blockSpace(c.block(addr))
	var owner Owner
	var held bool
	err = p.update(ctx, func(tx Txn) error {
		owner, held = Owner{}, false
		slot, ok, err := bs.get(tx, addr)
		if err != nil || !ok || !slot.held() {
			return err
		}
		if owner, err = ParseOwner(slot.Owner); err != nil {
			return fmt.Errorf("record of %v: %w", addr, err)
		}
		held = true
		var rec ownerRecord
		if _, err := getJSON(tx, p.ownerKey(owner), &rec); err != nil {
			return err
		}
		if _, _, err := bs.release(tx, addr, p.clock(), p.cooldown); err != nil {
			return err
		}
		rec.Addrs = slices.DeleteFunc(rec.Addrs, func(x netip.Addr) bool { return x == addr })
		if len(rec.Addrs) == 0 {
			return tx.Delete(p.ownerKey(owner))
		}
		return putJSON(tx, p.ownerKey(owner), rec)
	})
	if err != nil {
		return Owner{}, false, fmt.Errorf("release %v: %w", addr, err)
	}
	return owner, held, nil
}

// List returns every allocation, ordered by owner.
func (p *BlockPool) List(ctx context.Context) ([]Allocation, error) {
	var out []Allocation
	err := p.view(ctx, func(tx Txn) error {
		out = out[:0]
		return scanOwners(tx, p.ownerPrefix(), func(o Owner, rec ownerRecord) {
			out = append(out, p.allocation(o, rec))
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list allocations: %w", err)
	}
	return out, nil
}

// GC releases every allocation whose owner is not in valid, as CNI's GC
// does with its valid-attachments list, and returns what it released. Each
// owner is released in its own transaction, so an allocation made while GC
// runs is not lost, provided valid includes it. Blocks keep their affinity.
func (p *BlockPool) GC(ctx context.Context, valid []Owner) ([]Allocation, error) {
	return gc(ctx, valid, p.List, func(al Allocation) Owner { return al.Owner }, p.Release)
}

// blocksOf returns the claimed blocks of c in address order.
func (p *BlockPool) blocksOf(tx Txn, c *blockCIDR) ([]Block, error) {
	var out []Block
	err := c.sp.each(tx, func(a netip.Addr, r slotRecord) bool {
		out = append(out, Block{CIDR: netip.PrefixFrom(a, c.size), Node: r.Owner})
		return true
	})
	if err != nil {
		return nil, err
	}
	for i := range out {
		bs := p.blockSpace(out[i].CIDR)
		out[i].Total = bs.capacity()
		if out[i].InUse, err = bs.used(tx); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Blocks returns every claimed block, in address order, IPv4 first.
func (p *BlockPool) Blocks(ctx context.Context) ([]Block, error) {
	var out []Block
	err := p.view(ctx, func(tx Txn) error {
		out = out[:0]
		for i := range p.cidrs {
			bl, err := p.blocksOf(tx, &p.cidrs[i])
			if err != nil {
				return err
			}
			out = append(out, bl...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list blocks: %w", err)
	}
	slices.SortFunc(out, func(x, y Block) int { return x.CIDR.Addr().Compare(y.CIDR.Addr()) })
	return out, nil
}

// ReleaseAffinity takes back node's empty blocks, so that any node may
// claim them, and returns them in address order, IPv4 first. Blocks that
// still hold addresses stay node's. A block taken back starts afresh: the
// cooldown of its released addresses ends. Each block is taken back in its
// own transaction.
func (p *BlockPool) ReleaseAffinity(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := checkName("node name", node); err != nil {
		return nil, fmt.Errorf("release affinity: %w", err)
	}
	var blocks []netip.Prefix
	err := p.view(ctx, func(tx Txn) error {
		var err error
		blocks, err = p.affineBlocks(tx, node)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("release affinity of node %q: %w", node, err)
	}
	var freed []netip.Prefix
	for _, b := range blocks {
		var ok bool
		err := p.update(ctx, func(tx Txn) error {
			var err error
			ok, err = p.releaseBlock(tx, node, b)
			return err
		})
		if err != nil {
			return freed, fmt.Errorf("release affinity of node %q: block %v: %w", node, b, err)
		}
		if ok {
			freed = append(freed, b)
		}
	}
	return freed, nil
}

// releaseBlock takes block b back from node if it is empty, and reports
// whether it did.
func (p *BlockPool) releaseBlock(tx Txn, node string, b netip.Prefix) (bool, error) {
	c, err := p.cidrOf(b.Addr())
	if err != nil {
		return false, err
	}
	if _, ok, err := tx.Get(p.affKey(node, b)); err != nil || !ok {
		return false, err // taken back meanwhile
	}
	bs := p.blockSpace(b)
	used, err := bs.used(tx)
	if err != nil || used > 0 {
		return false, err
	}
	slot, ok, err := c.sp.get(tx, b.Addr())
	if err != nil {
		return false, err
	}
	if err := tx.Delete(p.affKey(node, b)); err != nil {
		return false, err
	}
	if !ok || slot.Owner != node {
		// A stale index entry: the block is not node's.
		return false, nil
	}
	if _, _, err := c.sp.release(tx, b.Addr(), p.clock(), 0); err != nil {
		return false, err
	}
	// The block's head and the records of released addresses; guarded by
	// the head, read by used.
	var keys []string
	err = tx.Scan(bs.key, "", func(k string, _ []byte) bool {
		keys = append(keys, k)
		return true
	})
	if err != nil {
		return false, err
	}
	for _, k := range keys {
		if err := tx.Delete(k); err != nil {
			return false, err
		}
	}
	return true, nil
}

// Usage returns, for each pool, an "IP Pool" row (all its addresses, and
// how many are held) followed by a "Block" row for each claimed block with
// the node it is affine to: the rows of `calicoctl ipam show --show-blocks`,
// for [WriteUsage].
func (p *BlockPool) Usage(ctx context.Context) ([]Usage, error) {
	var out []Usage
	err := p.view(ctx, func(tx Txn) error {
		out = out[:0]
		for i := range p.cidrs {
			c := &p.cidrs[i]
			blocks, err := p.blocksOf(tx, c)
			if err != nil {
				return err
			}
			pool := Usage{Grouping: "IP Pool", CIDR: c.prefix.String(), Total: c.addrs()}
			for _, b := range blocks {
				pool.InUse += b.InUse
			}
			out = append(out, pool)
			for _, b := range blocks {
				out = append(out, Usage{Grouping: "Block", CIDR: b.CIDR.String(), Node: b.Node, Total: b.Total, InUse: b.InUse})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return out, nil
}

// blockAff is one entry of the affinity index.
type blockAff struct {
	block netip.Prefix
	node  string
}

// Check verifies that the stored state is consistent: every owner's
// addresses are held by that owner, every held address has an owner that
// lists it, lies in a claimed block and is counted in its block's head,
// each pool counts its claimed blocks right, the affinity index lists
// exactly the claimed blocks with their nodes, and no block that is not
// claimed has state. It returns an error listing what is wrong.
func (p *BlockPool) Check(ctx context.Context) error {
	var problems []string
	err := p.view(ctx, func(tx Txn) error {
		problems = problems[:0]
		add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
		owners := map[Owner]ownerRecord{}
		if err := scanOwners(tx, p.ownerPrefix(), func(o Owner, rec ownerRecord) { owners[o] = rec }); err != nil {
			return err
		}

		claimed := map[netip.Prefix]string{}
		var blocks []netip.Prefix
		for _, c := range p.cidrs {
			var n uint64
			err := c.sp.each(tx, func(a netip.Addr, r slotRecord) bool {
				n++
				b := netip.PrefixFrom(a, c.size)
				if err := checkName("node name", r.Owner); err != nil {
					add("block %v: %v", b, err)
				}
				claimed[b] = r.Owner
				blocks = append(blocks, b)
				return true
			})
			if err != nil {
				return err
			}
			used, err := c.sp.used(tx)
			if err != nil {
				return err
			}
			if used != n {
				add("pool %v counts %d blocks claimed, has %d", c.prefix, used, n)
			}
		}

		affs := map[blockAff]bool{}
		err := tx.Scan(p.affRoot(), "", func(k string, v []byte) bool {
			node, ak, _ := strings.Cut(strings.TrimPrefix(k, p.affRoot()), "/")
			a, err := parseAddrKey(ak)
			if err != nil {
				add("affinity key %s: %v", k, err)
				return true
			}
			c, err := p.cidrOf(a)
			if err != nil {
				return true // a pool no longer configured
			}
			b := c.block(a)
			if b.Addr() != a {
				add("affinity key %s: %v is not the start of a /%d block", k, a, c.size)
				return true
			}
			if string(v) != b.String() {
				add("affinity key %s holds %q, want %q", k, v, b)
			}
			if owner, ok := claimed[b]; !ok {
				add("node %q has affinity to block %v, which is not claimed", node, b)
			} else if owner != node {
				add("node %q has affinity to block %v, which is claimed by %q", node, b, owner)
			}
			affs[blockAff{b, node}] = true
			return true
		})
		if err != nil {
			return err
		}
		for b, node := range claimed {
			if !affs[blockAff{b, node}] {
				add("block %v is claimed by %q, which has no affinity to it", b, node)
			}
		}

		holder := map[netip.Addr]Owner{}
		for _, b := range blocks {
			bs := p.blockSpace(b)
			var n uint64
			err := bs.each(tx, func(addr netip.Addr, slot slotRecord) bool {
				n++
				if !b.Contains(addr) {
					add("block %v has a record of %v, outside it", b, addr)
				}
				o, err := ParseOwner(slot.Owner)
				if err != nil {
					add("%v: bad owner %q", addr, slot.Owner)
					return true
				}
				holder[addr] = o
				if !slices.Contains(owners[o].Addrs, addr) {
					add("%v is held by %s, which does not list it", addr, o)
				}
				return true
			})
			if err != nil {
				return err
			}
			used, err := bs.used(tx)
			if err != nil {
				return err
			}
			if used != n {
				add("block %v counts %d held, has %d", b, used, n)
			}
		}

		stray := map[netip.Prefix]bool{}
		err = tx.Scan(p.blockRoot(), "", func(k string, _ []byte) bool {
			ak, _, _ := strings.Cut(strings.TrimPrefix(k, p.blockRoot()), "/")
			a, err := parseAddrKey(ak)
			if err != nil {
				add("key %s: %v", k, err)
				return true
			}
			c, err := p.cidrOf(a)
			if err != nil {
				return true // a pool no longer configured
			}
			b := netip.PrefixFrom(a, c.size)
			if _, ok := claimed[b]; !ok && !stray[b] {
				stray[b] = true
				add("key %s belongs to no claimed block", k)
			}
			return true
		})
		if err != nil {
			return err
		}

		for o, rec := range owners {
			for _, addr := range rec.Addrs {
				if _, err := p.cidrOf(addr); err != nil {
					continue
				}
				if h, ok := holder[addr]; !ok || h != o {
					add("%s lists %v, which is held by %q", o, addr, h)
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
