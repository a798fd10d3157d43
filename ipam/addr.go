package ipam

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
)

// u128 is an address as a 128-bit number (IPv4 in the low 32 bits).
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	b := a.As16()
	if a.Is4() {
		v := a.As4()
		return u128{lo: uint64(v[0])<<24 | uint64(v[1])<<16 | uint64(v[2])<<8 | uint64(v[3])}
	}
	var u u128
	for i := 0; i < 8; i++ {
		u.hi = u.hi<<8 | uint64(b[i])
		u.lo = u.lo<<8 | uint64(b[8+i])
	}
	return u
}

func fromU128(u u128, v4 bool) netip.Addr {
	if v4 {
		return netip.AddrFrom4([4]byte{byte(u.lo >> 24), byte(u.lo >> 16), byte(u.lo >> 8), byte(u.lo)})
	}
	var b [16]byte
	for i := 0; i < 8; i++ {
		b[7-i] = byte(u.hi >> (8 * i))
		b[15-i] = byte(u.lo >> (8 * i))
	}
	return netip.AddrFrom16(b)
}

func (u u128) add(v u128) u128 {
	lo, c := bits.Add64(u.lo, v.lo, 0)
	hi, _ := bits.Add64(u.hi, v.hi, c)
	return u128{hi, lo}
}

func (u u128) sub(v u128) u128 {
	lo, b := bits.Sub64(u.lo, v.lo, 0)
	hi, _ := bits.Sub64(u.hi, v.hi, b)
	return u128{hi, lo}
}

func (u u128) cmp(v u128) int {
	switch {
	case u.hi < v.hi || (u.hi == v.hi && u.lo < v.lo):
		return -1
	case u == v:
		return 0
	}
	return 1
}

func (u u128) rsh(n uint) u128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{lo: u.hi >> (n - 64)}
	}
	return u128{hi: u.hi >> n, lo: u.lo>>n | u.hi<<(64-n)}
}

// sat returns u as a uint64, saturated at math.MaxUint64.
func (u u128) sat() uint64 {
	if u.hi != 0 {
		return math.MaxUint64
	}
	return u.lo
}

func pow2(n uint) u128 {
	if n >= 64 {
		return u128{hi: 1 << (n - 64)}
	}
	return u128{lo: 1 << n}
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	host := uint(p.Addr().BitLen() - p.Bits())
	return fromU128(toU128(p.Addr()).add(pow2(host).sub(u128{lo: 1})), p.Addr().Is4())
}

// addrKey is the fixed-width hex form of a, which sorts like the address
// within one family.
func addrKey(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		return hex.EncodeToString(b[:])
	}
	b := a.As16()
	return hex.EncodeToString(b[:])
}

func parseAddrKey(k string) (netip.Addr, error) {
	b, err := hex.DecodeString(k)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("parse address key %q: %w", k, err)
	}
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("parse address key %q: length %d", k, len(b))
	}
	return a, nil
}

// overlaps reports whether the inclusive ranges [a1,a2] and [b1,b2] of one
// family share an address.
func overlaps(a1, a2, b1, b2 netip.Addr) bool {
	return a1.Is4() == b1.Is4() && a1.Compare(b2) <= 0 && b1.Compare(a2) <= 0
}

// family names the address family of a for messages.
func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// checkPrefix refuses a prefix that is invalid, has host bits set, or is an
// IPv4-mapped IPv6 prefix.
func checkPrefix(what string, p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("%s %v: not a valid prefix", what, p)
	case p.Addr().Is4In6():
		return fmt.Errorf("%s %v: IPv4-mapped IPv6 prefixes are not supported; use the IPv4 form", what, p)
	case p.Addr().Zone() != "":
		return fmt.Errorf("%s %v: a prefix must not have a zone", what, p)
	case p.Masked() != p:
		return fmt.Errorf("%s %v: host bits are set (did you mean %v?)", what, p, p.Masked())
	}
	return nil
}

func (u u128) shl(n uint) u128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: u.lo << (n - 64)}
	}
	return u128{hi: u.hi<<n | u.lo>>(64-n), lo: u.lo << n}
}
