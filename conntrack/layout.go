package conntrack

import (
	"encoding/binary"
	"net/netip"
)

// The Go mirrors of the C structs in bpf/conntrack.h. TestLayout checks them
// against the BTF of the compiled object.

// ctTuple mirrors struct ct_tuple, the map key.
type ctTuple struct {
	Saddr  [16]byte
	Daddr  [16]byte
	Sport  [2]byte // network order
	Dport  [2]byte // network order
	Proto  uint8
	Family uint8
	Pad    [2]byte
}

// ctEntry mirrors struct ct_entry, the map value.
type ctEntry struct {
	RxPackets   uint64
	RxBytes     uint64
	TxPackets   uint64
	TxBytes     uint64
	Created     uint64
	Expires     uint64
	Flags       uint32
	RxFlagsSeen uint32
	TxFlagsSeen uint32
	User        uint32
	RevNAT      uint32 `btf:"rev_nat"`
	State       uint8
	Dir         uint8
	Pad         uint16
}

// ctConfig mirrors struct ct_config: timeouts in nanoseconds, 0 for the default.
type ctConfig struct {
	TCPEstablished uint64 `btf:"tcp_established"`
	TCPSyn         uint64 `btf:"tcp_syn"`
	TCPClosing     uint64 `btf:"tcp_closing"`
	NonTCP         uint64 `btf:"nontcp"`
}

// Indexes of nb_ct_stats.
const (
	statNew          = 1
	statEstablished  = 2
	statReply        = 3
	statRelated      = 4
	statUntracked    = 5
	statCreateFailed = 6
)

// key returns the map key of a flow in the direction given.
func (f Flow) key() ctTuple {
	var k ctTuple
	// IPv4-mapped IPv6 addresses (what net.TCPAddr.AddrPort gives for an IPv4
	// socket) are IPv4 on the wire.
	src, dst := f.Src.Addr().Unmap(), f.Dst.Addr().Unmap()
	k.Family = 6
	if src.Is4() {
		k.Family = 4
		a, b := src.As4(), dst.As4()
		copy(k.Saddr[:], a[:])
		copy(k.Daddr[:], b[:])
	} else {
		k.Saddr, k.Daddr = src.As16(), dst.As16()
	}
	binary.BigEndian.PutUint16(k.Sport[:], f.Src.Port())
	binary.BigEndian.PutUint16(k.Dport[:], f.Dst.Port())
	k.Proto = uint8(f.Proto)
	return k
}

// flow turns a map key into a Flow.
func (k ctTuple) flow() Flow {
	addr := func(b [16]byte) netip.Addr {
		if k.Family == 4 {
			return netip.AddrFrom4([4]byte(b[:4]))
		}
		return netip.AddrFrom16(b)
	}
	return Flow{
		Src:   netip.AddrPortFrom(addr(k.Saddr), binary.BigEndian.Uint16(k.Sport[:])),
		Dst:   netip.AddrPortFrom(addr(k.Daddr), binary.BigEndian.Uint16(k.Dport[:])),
		Proto: Protocol(k.Proto),
	}
}

// entry turns a map key and value into an Entry, with times converted by clk.
func (v *ctEntry) entry(k ctTuple, clk clock) Entry {
	return Entry{
		Flow:        k.flow(),
		Direction:   Direction(v.Dir),
		State:       State(v.State),
		Created:     clk.wall(v.Created),
		Expires:     clk.wall(v.Expires),
		RxPackets:   v.RxPackets,
		RxBytes:     v.RxBytes,
		TxPackets:   v.TxPackets,
		TxBytes:     v.TxBytes,
		RxFlagsSeen: TCPFlags(v.RxFlagsSeen),
		TxFlagsSeen: TCPFlags(v.TxFlagsSeen),
		Flags:       Flags(v.Flags),
		RevNAT:      v.RevNAT,
		User:        v.User,
	}
}
