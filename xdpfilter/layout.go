package xdpfilter

import (
	"net/netip"
)

// Go mirrors of the C structs in bpf/xdpfilter.c; TestLayout checks them.

type xfConfig struct {
	Active   uint32
	Mode     uint32
	Sample   uint32
	Pad      uint32
	Revision uint64
}

type xfLPM4Key struct {
	Prefixlen uint32
	Addr      [4]byte
}

type xfLPM6Key struct {
	Prefixlen uint32
	Addr      [16]byte
}

type xfEvent struct {
	Addr   [16]byte
	Rule   uint32
	Count  uint32
	Family uint8
	Reason uint8
	Pad    [2]byte
}

// Indexes of nb_xf_stats.
const (
	statPassed      = 0
	statDropped     = 1
	statPassedNonIP = 2
	statShort       = 3
	statMatched     = 4
	statEventsLost  = 5
)

// kind is where a rule lives: exact (a host) or prefix, per family.
type kind int

const (
	exact4 kind = iota
	exact6
	lpm4
	lpm6
)

func kindOf(p netip.Prefix) kind {
	switch {
	case p.Addr().Is4() && p.Bits() == 32:
		return exact4
	case p.Addr().Is4():
		return lpm4
	case p.Bits() == 128:
		return exact6
	}
	return lpm6
}

// mapName is the map holding rules of kind k in buffer buf.
func mapName(k kind, buf uint32) string {
	return [...]string{"nb_xf_exact4_", "nb_xf_exact6_", "nb_xf_lpm4_", "nb_xf_lpm6_"}[k] + string(rune('0'+buf))
}

// key is the map key of a rule.
func key(p netip.Prefix) any {
	switch kindOf(p) {
	case exact4:
		return p.Addr().As4()
	case exact6:
		return p.Addr().As16()
	case lpm4:
		return xfLPM4Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As4()}
	}
	return xfLPM6Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
}
