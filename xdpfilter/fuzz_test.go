package xdpfilter

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Limits of the parser's contract (internal/bpf/include/nb_parse.h), which
// the reference applies where gopacket would go on.
const (
	refMaxVLAN    = 2    // NB_MAX_VLAN: a third tag is "unsupported"
	refMaxIPv6Ext = 8    // NB_IPV6_MAX_EXT: a 9th extension header is "unsupported"
	refMaxHdrOff  = 1024 // NB_MAX_HDR_OFF: no header is looked for beyond this offset
)

// refClassify is the reference classifier: what the filter should make of
// frame under rules, written from the package's documented semantics and the
// parser's contract, not from the C.
//
// Where gopacket and the contract differ, the contract wins, and says so:
//   - A third VLAN tag: gopacket decodes it; the parser stops (unsupported),
//     which the filter treats as too short to parse.
//   - IPv4: the parser requires version 4, IHL >= 5, total length >= IHL*4
//     and the whole header (options included) in the frame; anything else is
//     malformed or truncated, i.e. too short. gopacket takes a total length
//     of 0 as "TSO, use the frame's length" and rejects option lists it cannot
//     parse; the parser does neither (it does not look inside options).
//   - IPv6: the parser requires version 6 and the 40-byte header, then walks
//     hop-by-hop, routing, fragment, destination-options and AH headers (each
//     wholly inside the frame, none starting beyond offset 1024, at most 8 of
//     them, and none after a later fragment's fragment header); more is
//     unsupported, a cut one truncated, both too short. gopacket checks the
//     payload length and jumbogram options, which the parser ignores, so the
//     reference takes only the fixed fields from gopacket.
func refClassify(frame []byte, rules []netip.Prefix) (class, netip.Prefix) {
	var eth layers.Ethernet
	if err := eth.DecodeFromBytes(frame, gopacket.NilDecodeFeedback); err != nil {
		return classShort, netip.Prefix{}
	}
	etype := layers.EthernetType(binary.BigEndian.Uint16(frame[12:14])) // not gopacket's LLC rewrite
	off := 14
	isVLAN := func(t layers.EthernetType) bool {
		return t == layers.EthernetTypeDot1Q || t == layers.EthernetTypeQinQ
	}
	for range refMaxVLAN {
		if !isVLAN(etype) {
			break
		}
		var tag layers.Dot1Q
		if err := tag.DecodeFromBytes(frame[off:], gopacket.NilDecodeFeedback); err != nil {
			return classShort, netip.Prefix{} // cut inside the tag
		}
		etype = tag.Type
		off += 4
	}
	if isVLAN(etype) {
		return classShort, netip.Prefix{} // contract: 3+ tags are unsupported
	}

	var src netip.Addr
	l3 := frame[off:]
	switch etype {
	case layers.EthernetTypeIPv4:
		if len(l3) < 20 {
			return classShort, netip.Prefix{}
		}
		var ip layers.IPv4
		// gopacket fills the fixed fields before it validates anything, and
		// may then reject a total length of 0 or an option list: the contract
		// checks below decide instead.
		_ = ip.DecodeFromBytes(l3, gopacket.NilDecodeFeedback)
		hlen := int(ip.IHL) * 4
		if ip.Version != 4 || ip.IHL < 5 || int(binary.BigEndian.Uint16(l3[2:4])) < hlen {
			return classShort, netip.Prefix{} // malformed
		}
		if len(l3) < hlen {
			return classShort, netip.Prefix{} // options cut off
		}
		src = netip.AddrFrom4([4]byte(ip.SrcIP.To4()))
	case layers.EthernetTypeIPv6:
		if len(l3) < 40 {
			return classShort, netip.Prefix{}
		}
		var ip layers.IPv6
		// As for IPv4: the fixed fields are set before gopacket looks at the
		// payload length or a hop-by-hop header, which the parser does not.
		_ = ip.DecodeFromBytes(l3, gopacket.NilDecodeFeedback)
		if ip.Version != 6 {
			return classShort, netip.Prefix{} // malformed
		}
		if !refWalkIPv6Ext(frame, off+40, ip.NextHeader) {
			return classShort, netip.Prefix{}
		}
		src = netip.AddrFrom16([16]byte(ip.SrcIP.To16()))
	default:
		return classNonIP, netip.Prefix{}
	}

	// Longest prefix wins; an exact rule is the longest there is, so "exact
	// before prefixes" is the same thing.
	var best netip.Prefix
	for _, r := range rules {
		if r.Contains(src) && (!best.IsValid() || r.Bits() > best.Bits()) {
			best = r
		}
	}
	return classIP, best
}

// refWalkIPv6Ext walks the extension headers from off, reporting whether the
// parser gets through them (the contract's limits, see refClassify).
func refWalkIPv6Ext(frame []byte, off int, nh layers.IPProtocol) bool {
	laterFragment := false
	for i := 0; ; i++ {
		switch nh {
		case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing, layers.IPProtocolIPv6Destination,
			layers.IPProtocolAH, layers.IPProtocolIPv6Fragment:
		default:
			return true // the upper layer, or one the parser does not know
		}
		if laterFragment {
			return true // what follows a later fragment's header is data
		}
		if i == refMaxIPv6Ext || off > refMaxHdrOff {
			return false // unsupported
		}
		if len(frame) < off+8 {
			return false // truncated
		}
		var n int
		switch nh {
		case layers.IPProtocolIPv6Fragment:
			laterFragment = binary.BigEndian.Uint16(frame[off+2:])&0xfff8 != 0
			n = 8
		case layers.IPProtocolAH:
			n = (int(frame[off+1]) + 2) * 4 // RFC 4302: in 4-byte units, minus 2
		default:
			n = (int(frame[off+1]) + 1) * 8 // RFC 8200: in 8-byte units, minus the first 8
		}
		if len(frame) < off+n {
			return false // truncated
		}
		nh = layers.IPProtocol(frame[off])
		off += n
	}
}

// TestReference checks the reference against the verdict table, so that the
// fuzz target compares the program with something known to be right.
func TestReference(t *testing.T) {
	for _, f := range tableFrames(t) {
		c, rule := refClassify(f.frame, tableRules)
		if c != f.class || rule != f.rule {
			t.Errorf("%s: reference says class %d rule %v, table says %d %v", f.name, c, rule, f.class, f.rule)
		}
	}
}

// fuzzMaxFrame keeps frames within what BPF_PROG_RUN takes for XDP (a page
// less headroom and tailroom), beyond NB_MAX_HDR_OFF.
const fuzzMaxFrame = 2048

func FuzzFilter(f *testing.F) {
	for _, tf := range tableFrames(f) {
		f.Add(tf.frame)
	}
	// Extension headers with odd lengths, and one running past 1024.
	v6 := make([]byte, 14+40+8)
	copy(v6[12:], []byte{0x86, 0xdd, 0x60})
	v6[14+6] = 0 // hop-by-hop
	v6[54+1] = 200
	f.Add(v6)
	big := make([]byte, 1400)
	copy(big[12:], []byte{0x86, 0xdd, 0x60})
	big[14+6] = 60
	big[54], big[55] = 60, 127 // 1024 bytes: the next header starts at 1078
	big[54+1024] = 17
	f.Add(big)

	deny := newHarness(f, Config{Mode: Deny})
	allow := newHarness(f, Config{Mode: AllowOnly})
	for _, h := range []*harness{deny, allow} {
		if err := addAll(h.Filter, tableRules); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > fuzzMaxFrame {
			t.Skip("BPF_PROG_RUN takes 14 to 2048 bytes here")
		}
		c, rule := refClassify(frame, tableRules)
		for _, h := range []*harness{deny, allow} {
			mode := h.Mode()
			want := wantVerdict(mode, c, rule.IsValid())
			if got := h.verdict(t, frame); got != want {
				t.Errorf("%s: verdict %d, want %d (reference: %s)", mode, got, want, describe(c, rule))
			}
		}
	})
}

func describe(c class, rule netip.Prefix) string {
	switch c {
	case classNonIP:
		return "not IP"
	case classShort:
		return "too short to parse"
	}
	if rule.IsValid() {
		return fmt.Sprintf("IP matching %v", rule)
	}
	return "IP matching no rule"
}
