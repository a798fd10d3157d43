package ipam

import (
	"fmt"
	"net/netip"
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
