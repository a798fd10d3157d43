package lbmap

import (
	"encoding/binary"
	"net/netip"
)

// Go mirrors of the C structs in bpf/lb.h; TestLayout checks them against BTF.

type lbSvcKey struct {
	Addr   [16]byte
	Port   [2]byte // network order
	Proto  uint8
	Family uint8
	Scope  uint8
	Pad    [3]byte
}

type lbSvcInfo struct {
	SetID           uint32 `btf:"set_id"`
	Count           uint32
	MaglevSize      uint32
	AffinityTimeout uint32
	RevNAT          uint32 `btf:"rev_nat"`
	Type            uint8
	Flags           uint8
	Pad             uint16
}

// lbSvc is a service entry: written with BPF_F_LOCK, which updates an
// existing entry in place under its lock (the kernel owns Lock), and carrying
// its own key (see lb.h).
type lbSvc struct {
	Lock uint32
	Info lbSvcInfo
	Key  lbSvcKey
}

type lbSlotKey struct {
	SetID uint32 `btf:"set_id"`
	Slot  uint32
}

type lbBackend struct {
	Addr   [16]byte
	Port   [2]byte
	Family uint8
	State  uint8
}

type lbRevNAT struct {
	Addr   [16]byte
	Port   [2]byte
	Family uint8
	Pad    uint8
}

type lbSrcRangeKey struct {
	Prefixlen uint32
	RevNAT    [4]byte `btf:"rev_nat"` // network order
	Family    uint8
	Pad       [3]byte
	Addr      [16]byte
}

// lbNATKey is struct lb_nat_key: conntrack's tuple layout.
type lbNATKey struct {
	Saddr  [16]byte
	Daddr  [16]byte
	Sport  [2]byte // network order
	Dport  [2]byte // network order
	Proto  uint8
	Family uint8
	Pad    [2]byte
}

type lbNAT struct {
	Addr    [16]byte
	Port    [2]byte // network order
	Flags   uint8
	Pad     uint8
	RevNAT  uint32 `btf:"rev_nat"`
	Created uint64
}

// Values of lb.h's enums.
const (
	natFlagReverse = 1 << 0

	backendFlagLocal = 0x80

	scopeInternal = 0
	scopeExternal = 1

	flagSourceRanges = 1 << 0
	flagLocal        = 1 << 1
)

// Indexes of nb_lb_stats.
const (
	statDNAT            = 0
	statRevNAT          = 1
	statRevNATICMP      = 2
	statDropNoBackend   = 3
	statDropSourceRange = 4
	statSockTranslate   = 5
	statReselect        = 6
	statSNAT            = 7
	statRevSNAT         = 8
	statDropNATFull     = 9
	statHairpin         = 10
	statXDPForward      = 11
	statXDPReverse      = 12
)

func addr16(a netip.Addr) (b [16]byte, family uint8) {
	if a.Is4() {
		v := a.As4()
		copy(b[:], v[:])
		return b, 4
	}
	return a.As16(), 6
}

func be16(v uint16) (b [2]byte) {
	binary.BigEndian.PutUint16(b[:], v)
	return b
}

func svcKey(k ServiceKey, scope uint8) lbSvcKey {
	a, fam := addr16(k.Frontend.Addr())
	return lbSvcKey{Addr: a, Port: be16(k.Frontend.Port()), Proto: uint8(k.Protocol), Family: fam, Scope: scope}
}

func backendValue(b Backend) lbBackend {
	a, fam := addr16(b.Addr.Addr())
	v := lbBackend{Addr: a, Port: be16(b.Addr.Port()), Family: fam, State: uint8(b.State)}
	if b.NodeLocal {
		v.State |= backendFlagLocal
	}
	return v
}

func srcRangeKey(revNAT uint32, p netip.Prefix) lbSrcRangeKey {
	a, fam := addr16(p.Addr())
	var rn [4]byte
	binary.BigEndian.PutUint32(rn[:], revNAT)
	return lbSrcRangeKey{Prefixlen: uint32(64 + p.Bits()), RevNAT: rn, Family: fam, Addr: a}
}

func addrFrom16(b [16]byte, family uint8) netip.Addr {
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func natKeyFlow(k lbNATKey) (src, dst netip.AddrPort) {
	return netip.AddrPortFrom(addrFrom16(k.Saddr, k.Family), binary.BigEndian.Uint16(k.Sport[:])),
		netip.AddrPortFrom(addrFrom16(k.Daddr, k.Family), binary.BigEndian.Uint16(k.Dport[:]))
}
