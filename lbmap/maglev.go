package lbmap

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"
)

// Maglev table sizes: prime, within these bounds.
const (
	MaglevMinTableSize     = 251
	MaglevMaxTableSize     = 131071
	DefaultMaglevTableSize = 16381
)

// ValidMaglevTableSize returns nil if m is a prime in [MaglevMinTableSize,
// MaglevMaxTableSize], else an error that says which rule m breaks and names
// the nearest valid sizes, for example "lbmap: Maglev table size 16384 is not
// prime (nearest primes 16381 and 16411)".
//
// A prime size is what makes every backend's permutation visit every slot:
// a skip in [1, m-1] is then coprime with m.
func ValidMaglevTableSize(m int) error {
	switch {
	case m < MaglevMinTableSize:
		return fmt.Errorf("lbmap: Maglev table size %d is below the minimum %d (nearest valid size %d)",
			m, MaglevMinTableSize, MaglevMinTableSize)
	case m > MaglevMaxTableSize:
		return fmt.Errorf("lbmap: Maglev table size %d is above the maximum %d (nearest valid size %d)",
			m, MaglevMaxTableSize, MaglevMaxTableSize)
	case !isPrime(m):
		// Both bounds are prime, so both neighbours are valid sizes.
		return fmt.Errorf("lbmap: Maglev table size %d is not prime (nearest primes %d and %d)",
			m, prevPrime(m), nextPrime(m))
	}
	return nil
}

// isPrime reports whether n is prime, by trial division: n is at most a
// little over MaglevMaxTableSize here, so at most ~180 divisions.
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := 3; d*d <= n; d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// prevPrime returns the largest prime below n, or 0 if there is none.
func prevPrime(n int) int {
	for p := n - 1; p >= 2; p-- {
		if isPrime(p) {
			return p
		}
	}
	return 0
}

// nextPrime returns the smallest prime above n.
func nextPrime(n int) int {
	p := max(n+1, 2)
	for !isPrime(p) {
		p++
	}
	return p
}

// maglevBackend is one backend as Maglev sees it.
type maglevBackend struct {
	// Key is the backend's stable identity, for example "10.0.0.1:80/TCP":
	// the same backend gets the same permutation on every node and after a
	// restart.
	Key string
	// Weight is > 0; the backend's share of the table's slots is
	// proportional to it.
	Weight uint16
}

// maglevPerm is where a backend stands in its permutation while the table
// fills.
type maglevPerm struct {
	index uint32 // into the caller's slice
	next  uint32 // the next slot in the backend's permutation
	skip  uint32 // the permutation's stride, in [1, m-1]
}

// maglevFill is a table being filled. Most of the work is probing for a free
// slot, so which slots are taken is kept in a bitmap: m bits (2 KiB at the
// default size) stay in L1 cache, where the table itself does not.
type maglevFill struct {
	table []uint32
	taken []uint64
	m     uint32
}

// claim gives p its most preferred slot that is still free. One must be: the
// permutation visits every slot, and there are m turns for m slots.
func (f *maglevFill) claim(p *maglevPerm) {
	s := p.next
	for f.taken[s/64]&(1<<(s%64)) != 0 {
		if s += p.skip; s >= f.m {
			s -= f.m
		}
	}
	f.taken[s/64] |= 1 << (s % 64)
	f.table[s] = p.index
	if s += p.skip; s >= f.m {
		s -= f.m
	}
	p.next = s
}

// maglevClock is a backend's virtual time while the table fills: turns/weight.
type maglevClock struct {
	turns  uint32 // turns taken so far
	weight uint32
	rank   uint32 // index into the maglevPerms, in Key order
}

// before reports whether a takes its turn before b: the earlier virtual
// time, and on a tie the lower rank. Times are compared as turns_a*weight_b <
// turns_b*weight_a, so no division or rounding is involved; turns <= 2^17 and
// weight < 2^16, so a product fits in 33 bits, and the rank (< 2^17) fits
// below it to make one comparison of the two.
func (a maglevClock) before(b maglevClock) bool {
	x := uint64(a.turns)*uint64(b.weight)<<17 | uint64(a.rank)
	y := uint64(b.turns)*uint64(a.weight)<<17 | uint64(b.rank)
	return x < y
}

// maglevTable returns a Maglev lookup table of m slots (m valid per
// ValidMaglevTableSize); slot i holds an index into backends.
//
// The table depends on the set of backends, not their order: they are ranked
// by Key internally, and the returned indexes point into the caller's slice.
// It fails if there are no backends, if a backend has weight 0, if two have
// the same Key, or if there are more backends than slots.
//
// # Permutations
//
// As in the Maglev paper, backend b prefers the slots offset, offset+skip,
// offset+2*skip, ... (mod m), with offset = h1 mod m and skip = h2 mod (m-1)
// + 1, where h1 and h2 are the two halves of MurmurHash3 x64_128 of Key with
// seed 0 (see maglevHash). Backends take turns, each claiming its most
// preferred slot that is still free, until all m slots are taken. Each
// permutation is walked lazily, so the memory needed is the table, a bitmap
// of m bits and a few words per backend, not the m-by-n matrix of
// precomputed permutations.
//
// # Weights
//
// Weight decides how often a backend gets a turn, as Cilium does (after
// Envoy's weighted Maglev): after t turns a backend has earned its next one
// at virtual time t/Weight, and the backend with the earliest virtual time
// goes next. Backend b's share of the slots then tracks m*Weight_b/sum(Weight)
// to within a slot or two. Every backend takes its first turn at time 0, so
// each gets at least one slot even if its share is below one; those slots
// come out of the others' shares. Equal weights reduce to the paper's plain
// round robin in Key order, and scaling every weight by the same factor
// leaves the table unchanged.
func maglevTable(backends []maglevBackend, m int) ([]uint32, error) {
	if err := ValidMaglevTableSize(m); err != nil {
		return nil, err
	}
	if len(backends) == 0 {
		return nil, fmt.Errorf("lbmap: build Maglev table: no backends")
	}
	if len(backends) > m {
		return nil, fmt.Errorf("lbmap: build Maglev table: %d backends do not fit in %d slots", len(backends), m)
	}

	perms := make([]maglevPerm, len(backends))
	sameWeight := true
	for i, b := range backends {
		if b.Weight == 0 {
			return nil, fmt.Errorf("lbmap: build Maglev table: backend %q has weight 0", b.Key)
		}
		sameWeight = sameWeight && b.Weight == backends[0].Weight
		h1, h2 := maglevHash(b.Key)
		perms[i] = maglevPerm{
			index: uint32(i),
			next:  uint32(h1 % uint64(m)),
			skip:  uint32(h2%uint64(m-1)) + 1,
		}
	}
	slices.SortFunc(perms, func(a, b maglevPerm) int {
		return strings.Compare(backends[a.index].Key, backends[b.index].Key)
	})
	for i := 1; i < len(perms); i++ {
		if k := backends[perms[i].index].Key; k == backends[perms[i-1].index].Key {
			return nil, fmt.Errorf("lbmap: build Maglev table: backend %q is listed twice", k)
		}
	}

	f := maglevFill{
		table: make([]uint32, m),
		taken: make([]uint64, (m+63)/64),
		m:     uint32(m),
	}
	if sameWeight {
		// Every virtual time ties, so the turns go round robin by rank.
		r := 0
		for range m {
			f.claim(&perms[r])
			if r++; r == len(perms) {
				r = 0
			}
		}
		return f.table, nil
	}

	// A binary min-heap of clocks. At the start every virtual time is 0, so
	// the clocks in rank order already form a valid heap. Each turn moves the
	// root's time forward and sifts it down.
	heap := make([]maglevClock, len(perms))
	for r, p := range perms {
		heap[r] = maglevClock{weight: uint32(backends[p.index].Weight), rank: uint32(r)}
	}
	for range m {
		top := heap[0]
		f.claim(&perms[top.rank])
		top.turns++
		i := 0
		for {
			c := 2*i + 1
			if c >= len(heap) {
				break
			}
			if d := c + 1; d < len(heap) && heap[d].before(heap[c]) {
				c = d
			}
			if !heap[c].before(top) {
				break
			}
			heap[i] = heap[c]
			i = c
		}
		heap[i] = top
	}
	return f.table, nil
}

// maglevHash returns MurmurHash3 x64_128 (Austin Appleby's public-domain
// algorithm, the one Cilium's Maglev uses) of key with seed 0, as its two
// 64-bit halves.
//
// It is a pure function of the key's bytes, written out here so it can never
// change under us: the same backend gets the same permutation on every node,
// in every process and with every Go release. hash/maphash would not do (its
// seed is random per process), and FNV-1a's weak mixing of short, similar keys
// such as "10.0.0.1:80/TCP" and "10.0.0.2:80/TCP" would need a finaliser on
// top. Seed 0 keeps the values checkable against any MurmurHash3
// implementation.
func maglevHash(key string) (h1, h2 uint64) {
	const (
		c1 = 0x87c37b91114253d5
		c2 = 0x4cf5ad432745937f
	)
	n := len(key)
	for len(key) >= 16 {
		k1 := le64(key[0:8])
		k2 := le64(key[8:16])
		key = key[16:]

		k1 *= c1
		k1 = bits.RotateLeft64(k1, 31)
		k1 *= c2
		h1 ^= k1
		h1 = bits.RotateLeft64(h1, 27)
		h1 += h2
		h1 = h1*5 + 0x52dce729

		k2 *= c2
		k2 = bits.RotateLeft64(k2, 33)
		k2 *= c1
		h2 ^= k2
		h2 = bits.RotateLeft64(h2, 31)
		h2 += h1
		h2 = h2*5 + 0x38495ab5
	}

	// The tail: up to 15 bytes, little-endian into k1 (bytes 0-7) and k2
	// (bytes 8-14).
	var k1, k2 uint64
	for i := len(key) - 1; i >= 8; i-- {
		k2 = k2<<8 | uint64(key[i])
	}
	for i := min(len(key), 8) - 1; i >= 0; i-- {
		k1 = k1<<8 | uint64(key[i])
	}
	if len(key) > 8 {
		k2 *= c2
		k2 = bits.RotateLeft64(k2, 33)
		k2 *= c1
		h2 ^= k2
	}
	if len(key) > 0 {
		k1 *= c1
		k1 = bits.RotateLeft64(k1, 31)
		k1 *= c2
		h1 ^= k1
	}

	h1 ^= uint64(n)
	h2 ^= uint64(n)
	h1 += h2
	h2 += h1
	h1 = fmix64(h1)
	h2 = fmix64(h2)
	h1 += h2
	h2 += h1
	return h1, h2
}

// le64 reads the first 8 bytes of s as a little-endian word.
func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// fmix64 is MurmurHash3's 64-bit finaliser.
func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}
