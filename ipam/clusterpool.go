package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
)

// Default node CIDR sizes of a [ClusterPool], Cilium's cluster-pool
// defaults.
const (
	DefaultNodeMaskSizeV4 = 24
	DefaultNodeMaskSizeV6 = 120
)

// ClusterPoolConfig configures a [ClusterPool].
type ClusterPoolConfig struct {
	// Store keeps the allocations. Default: a bbolt file at
	// [DefaultBoltPath], which Close closes.
	Store Store
	// Name keeps this pool's state apart from others in the same store.
	// Default "default".
	Name string
	// CIDRs are the cluster's pod networks, IPv4 and/or IPv6 (dual-stack
	// when both). They must not overlap. A node receives one node CIDR per
	// family; the CIDRs of a family are used in order.
	CIDRs []netip.Prefix
	// NodeMaskSizeV4 and NodeMaskSizeV6 are the prefix lengths of node
	// CIDRs. Default [DefaultNodeMaskSizeV4] and [DefaultNodeMaskSizeV6]. A
	// pool remembers the sizes it was first used with and refuses others.
	NodeMaskSizeV4, NodeMaskSizeV6 int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// A ClusterPool carves node CIDRs out of the cluster's pod networks, as
// Cilium's cluster-pool IPAM mode and the Kubernetes node IPAM controller
// do: each node name receives one prefix per family, 10.244.1.0/24 from
// 10.244.0.0/16, say. Give a node's CIDRs to a [NodeAllocator] to hand out
// its pod addresses.
type ClusterPool struct {
	common
	name           string
	maskV4, maskV6 int
	cidrs          []clusterCIDR
}

type clusterCIDR struct {
	prefix netip.Prefix
	mask   int
	sp     *space
}

type nodeCIDRRecord struct {
	CIDRs []netip.Prefix `json:"cidrs"`
	Since time.Time      `json:"since"`
}

type clusterSpec struct {
	MaskV4 int `json:"maskV4"`
	MaskV6 int `json:"maskV6"`
}

// NewClusterPool checks cfg and returns a pool. Overlapping CIDRs and a node
// CIDR size larger than a CIDR are errors.
func NewClusterPool(cfg ClusterPoolConfig) (*ClusterPool, error) {
	p := &ClusterPool{name: cfg.Name, maskV4: cfg.NodeMaskSizeV4, maskV6: cfg.NodeMaskSizeV6}
	if p.name == "" {
		p.name = "default"
	}
	if err := checkName("pool name", p.name); err != nil {
		return nil, fmt.Errorf("new cluster pool: %w", err)
	}
	if p.maskV4 == 0 {
		p.maskV4 = DefaultNodeMaskSizeV4
	}
	if p.maskV6 == 0 {
		p.maskV6 = DefaultNodeMaskSizeV6
	}
	if p.maskV4 < 1 || p.maskV4 > 32 {
		return nil, fmt.Errorf("new cluster pool: IPv4 node mask size /%d: want 1 to 32", p.maskV4)
	}
	if p.maskV6 < 1 || p.maskV6 > 128 {
		return nil, fmt.Errorf("new cluster pool: IPv6 node mask size /%d: want 1 to 128", p.maskV6)
	}
	if len(cfg.CIDRs) == 0 {
		return nil, errors.New("new cluster pool: no CIDRs")
	}
	for i, c := range cfg.CIDRs {
		if err := checkPrefix("cluster CIDR", c); err != nil {
			return nil, fmt.Errorf("new cluster pool: %w", err)
		}
		mask := p.maskV6
		if c.Addr().Is4() {
			mask = p.maskV4
		}
		if mask < c.Bits() {
			return nil, fmt.Errorf("new cluster pool: node CIDR size /%d is larger than cluster CIDR %v", mask, c)
		}
		for _, o := range cfg.CIDRs[:i] {
			if o.Overlaps(c) {
				return nil, fmt.Errorf("new cluster pool: cluster CIDRs %v and %v overlap", o, c)
			}
		}
		last := lastAddr(c)
		shift := uint(c.Addr().BitLen() - mask)
		lastSlot := fromU128(toU128(last).rsh(shift).shl(shift), c.Addr().Is4())
		key := fmt.Sprintf("cluster/%s/c/%s-%d/", p.name, addrKey(c.Addr()), c.Bits())
		p.cidrs = append(p.cidrs, clusterCIDR{prefix: c, mask: mask, sp: newSpace(key, c.Addr(), lastSlot, shift, nil)})
	}
	c, err := newCommon(cfg.Store, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("new cluster pool: %w", err)
	}
	p.common = c
	return p, nil
}

// Close closes the store if the pool opened it.
func (p *ClusterPool) Close() error { return p.close() }

func (p *ClusterPool) nodeKey(node string) string { return "cluster/" + p.name + "/node/" + node }
func (p *ClusterPool) nodePrefix() string         { return "cluster/" + p.name + "/node/" }
func (p *ClusterPool) specKey() string            { return "cluster/" + p.name + "/spec" }

// checkSpec refuses node mask sizes other than those the pool was first
// used with, and records them on first use.
func (p *ClusterPool) checkSpec(tx Txn) error {
	want := clusterSpec{MaskV4: p.maskV4, MaskV6: p.maskV6}
	var have clusterSpec
	ok, err := getJSON(tx, p.specKey(), &have)
	if err != nil {
		return err
	}
	if !ok {
		return putJSON(tx, p.specKey(), want)
	}
	if have != want {
		return fmt.Errorf("cluster pool %q hands out /%d (IPv4) and /%d (IPv6) node CIDRs; this configuration asks for /%d and /%d",
			p.name, have.MaskV4, have.MaskV6, want.MaskV4, want.MaskV6)
	}
	return nil
}

func (p *ClusterPool) families() []bool {
	var addrs []netip.Addr
	for _, x := range p.cidrs {
		addrs = append(addrs, x.prefix.Addr())
	}
	return familiesOf(addrs)
}

// AllocateNode gives node one CIDR per family and returns them, IPv4 first.
// It is idempotent: a node that has CIDRs gets them again. When a family
// has no free CIDR it returns an error wrapping [ErrExhausted] and gives
// nothing.
func (p *ClusterPool) AllocateNode(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := checkName("node name", node); err != nil {
		return nil, fmt.Errorf("allocate node CIDRs: %w", err)
	}
	var rec nodeCIDRRecord
	err := p.update(ctx, func(tx Txn) error {
		rec = nodeCIDRRecord{}
		if err := p.checkSpec(tx); err != nil {
			return err
		}
		ok, err := getJSON(tx, p.nodeKey(node), &rec)
		if err != nil || ok {
			return err
		}
		now := p.clock()
		rec.Since = now
		for _, v4 := range p.families() {
			var got netip.Prefix
			var errs []error
			for _, c := range p.cidrs {
				if c.prefix.Addr().Is4() != v4 {
					continue
				}
				a, err := c.sp.claimNext(tx, node, nil, now, 0)
				if errors.Is(err, ErrExhausted) {
					errs = append(errs, fmt.Errorf("cluster CIDR %v: %w", c.prefix, err))
					continue
				}
				if err != nil {
					return err
				}
				got = netip.PrefixFrom(a, c.mask)
				break
			}
			if !got.IsValid() {
				fam := "IPv6"
				if v4 {
					fam = "IPv4"
				}
				return fmt.Errorf("no %s node CIDR left: %w", fam, errors.Join(errs...))
			}
			rec.CIDRs = append(rec.CIDRs, got)
		}
		return putJSON(tx, p.nodeKey(node), rec)
	})
	if err != nil {
		return nil, fmt.Errorf("allocate node CIDRs for %q: %w", node, err)
	}
	return rec.CIDRs, nil
}

// AllocateNodeCIDRs gives node the given CIDRs (at most one per family), as
// for a node whose pod CIDR is already set. A CIDR of the wrong size or
// outside the pool is an error; one held by another node is an error
// wrapping [ErrInUse]. Asking again for what the node has returns it.
func (p *ClusterPool) AllocateNodeCIDRs(ctx context.Context, node string, cidrs ...netip.Prefix) ([]netip.Prefix, error) {
	if err := checkName("node name", node); err != nil {
		return nil, fmt.Errorf("allocate node CIDRs: %w", err)
	}
	if len(cidrs) == 0 {
		return nil, fmt.Errorf("allocate node CIDRs for %q: no CIDR given", node)
	}
	want := slices.Clone(cidrs)
	slices.SortFunc(want, func(x, y netip.Prefix) int { return familyIndex(x.Addr()) - familyIndex(y.Addr()) })
	spaces := make([]*clusterCIDR, len(want))
	for i, w := range want {
		if err := checkPrefix("node CIDR", w); err != nil {
			return nil, fmt.Errorf("allocate node CIDRs for %q: %w", node, err)
		}
		if i > 0 && w.Addr().Is4() == want[i-1].Addr().Is4() {
			return nil, fmt.Errorf("allocate node CIDRs for %q: two %s CIDRs (%v, %v); one per family", node, family(w.Addr()), want[i-1], w)
		}
		for j := range p.cidrs {
			if p.cidrs[j].prefix.Overlaps(w) {
				spaces[i] = &p.cidrs[j]
			}
		}
		if spaces[i] == nil {
			return nil, fmt.Errorf("allocate node CIDRs for %q: %v is outside every cluster CIDR", node, w)
		}
		if w.Bits() != spaces[i].mask {
			return nil, fmt.Errorf("allocate node CIDRs for %q: %v is not a /%d, the node CIDR size", node, w, spaces[i].mask)
		}
	}
	var rec nodeCIDRRecord
	err := p.update(ctx, func(tx Txn) error {
		rec = nodeCIDRRecord{}
		if err := p.checkSpec(tx); err != nil {
			return err
		}
		ok, err := getJSON(tx, p.nodeKey(node), &rec)
		if err != nil {
			return err
		}
		if ok {
			if slices.Equal(rec.CIDRs, want) {
				return nil
			}
			return fmt.Errorf("node already has %v", rec.CIDRs)
		}
		now := p.clock()
		rec = nodeCIDRRecord{CIDRs: want, Since: now}
		for i, w := range want {
			if err := spaces[i].sp.claim(tx, w.Addr(), node, nil, now); err != nil {
				return err
			}
		}
		return putJSON(tx, p.nodeKey(node), rec)
	})
	if err != nil {
		return nil, fmt.Errorf("allocate node CIDRs %v for %q: %w", want, node, err)
	}
	return rec.CIDRs, nil
}

// NodeCIDRs returns node's CIDRs, or an error wrapping os.ErrNotExist.
func (p *ClusterPool) NodeCIDRs(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := checkName("node name", node); err != nil {
		return nil, fmt.Errorf("get node CIDRs: %w", err)
	}
	var rec nodeCIDRRecord
	var ok bool
	err := p.view(ctx, func(tx Txn) error {
		var err error
		ok, err = getJSON(tx, p.nodeKey(node), &rec)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get node CIDRs of %q: %w", node, err)
	}
	if !ok {
		return nil, fmt.Errorf("get node CIDRs of %q: %w", node, os.ErrNotExist)
	}
	return rec.CIDRs, nil
}

// ReleaseNode takes node's CIDRs back and returns them. Releasing a node
// that has none is not an error: it returns nil.
func (p *ClusterPool) ReleaseNode(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := checkName("node name", node); err != nil {
		return nil, fmt.Errorf("release node CIDRs: %w", err)
	}
	var rec nodeCIDRRecord
	err := p.update(ctx, func(tx Txn) error {
		rec = nodeCIDRRecord{}
		ok, err := getJSON(tx, p.nodeKey(node), &rec)
		if err != nil || !ok {
			return err
		}
		for _, c := range rec.CIDRs {
			for _, cc := range p.cidrs {
				if cc.prefix.Overlaps(c) {
					if _, _, err := cc.sp.release(tx, c.Addr(), p.clock(), 0); err != nil {
						return err
					}
				}
			}
		}
		return tx.Delete(p.nodeKey(node))
	})
	if err != nil {
		return nil, fmt.Errorf("release node CIDRs of %q: %w", node, err)
	}
	return rec.CIDRs, nil
}

// Nodes returns every node and its CIDRs.
func (p *ClusterPool) Nodes(ctx context.Context) (map[string][]netip.Prefix, error) {
	out := map[string][]netip.Prefix{}
	err := p.view(ctx, func(tx Txn) error {
		clear(out)
		var ferr error
		err := tx.Scan(p.nodePrefix(), "", func(k string, v []byte) bool {
			var rec nodeCIDRRecord
			if ferr = unmarshal(k, v, &rec); ferr != nil {
				return false
			}
			out[strings.TrimPrefix(k, p.nodePrefix())] = rec.CIDRs
			return true
		})
		if err != nil {
			return err
		}
		return ferr
	})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return out, nil
}

// GC releases the CIDRs of every node not in valid and returns those nodes.
func (p *ClusterPool) GC(ctx context.Context, valid []string) ([]string, error) {
	nodes, err := p.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	var released []string
	for node := range nodes {
		if slices.Contains(valid, node) {
			continue
		}
		if _, err := p.ReleaseNode(ctx, node); err != nil {
			return released, fmt.Errorf("gc: %w", err)
		}
		released = append(released, node)
	}
	slices.Sort(released)
	return released, nil
}

// Usage returns one row per cluster CIDR, counted in node CIDRs (Grouping
// "Cluster CIDR /24", say): how many the CIDR has and how many nodes hold.
func (p *ClusterPool) Usage(ctx context.Context) ([]Usage, error) {
	var out []Usage
	err := p.view(ctx, func(tx Txn) error {
		out = out[:0]
		for _, c := range p.cidrs {
			used, err := c.sp.used(tx)
			if err != nil {
				return err
			}
			out = append(out, Usage{Grouping: fmt.Sprintf("Cluster CIDR /%d", c.mask), CIDR: c.prefix.String(), Total: c.sp.capacity(), InUse: used})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return out, nil
}

// Check verifies that every node's CIDRs are held by that node, that no
// CIDR is held twice and that the counts are right.
func (p *ClusterPool) Check(ctx context.Context) error {
	nodes, err := p.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	var problems []string
	err = p.view(ctx, func(tx Txn) error {
		problems = problems[:0]
		held := map[netip.Addr]string{}
		for _, c := range p.cidrs {
			var n uint64
			err := c.sp.each(tx, func(a netip.Addr, r slotRecord) bool {
				n++
				held[a] = r.Owner
				if !slices.Contains(nodes[r.Owner], netip.PrefixFrom(a, c.mask)) {
					problems = append(problems, fmt.Sprintf("%v is held by %q, which does not list it", netip.PrefixFrom(a, c.mask), r.Owner))
				}
				return true
			})
			if err != nil {
				return err
			}
			if used, err := c.sp.used(tx); err != nil {
				return err
			} else if used != n {
				problems = append(problems, fmt.Sprintf("cluster CIDR %v counts %d held, has %d", c.prefix, used, n))
			}
		}
		for node, cidrs := range nodes {
			for _, c := range cidrs {
				if held[c.Addr()] != node {
					problems = append(problems, fmt.Sprintf("node %q lists %v, which is held by %q", node, c, held[c.Addr()]))
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
