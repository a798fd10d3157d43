package etcdelect

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"

	"github.com/netblocks/netblocks/l2announce"
)

// score is the rendezvous (highest random weight) hash of node for key: every
// node computes the same scores, and the candidate with the highest score
// for a key is its preferred holder.
func score(key l2announce.Key, node string) uint64 {
	h := sha256.New()
	h.Write([]byte(key.Segment))
	h.Write([]byte{0})
	h.Write(key.VIP.AsSlice())
	h.Write([]byte{0})
	h.Write([]byte(node))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// rank returns how many of candidates rank before node for key: 0 for the
// preferred one. node counts as a candidate whether or not it is in
// candidates.
func rank(key l2announce.Key, node string, candidates []string) int {
	mine := score(key, node)
	n := 0
	for _, c := range candidates {
		if c == node {
			continue
		}
		if s := score(key, c); s > mine || s == mine && c < node {
			n++
		}
	}
	return n
}

// Preferred returns candidates ordered by their preference for key, as the
// Elector ranks them: the first is the node that acquires key when all of
// them compete for it at once.
func Preferred(key l2announce.Key, candidates []string) []string {
	out := slices.Clone(candidates)
	slices.SortFunc(out, func(a, b string) int {
		return cmp.Or(cmp.Compare(score(key, b), score(key, a)), cmp.Compare(a, b))
	})
	return slices.Compact(out)
}
