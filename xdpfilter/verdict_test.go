package xdpfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/testutil"
)

// tableRules is the mixed rule set of the verdict table and of FuzzFilter:
// both families, exact and prefix rules, nested prefixes, and an exact rule
// inside a prefix.
var tableRules = mustPrefixes(
	"198.51.100.7/32",                  // exact
	"203.0.113.0/24", "203.0.113.9/32", // a host inside a prefix
	"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", // nested
	"2001:db8:1::7/128",
	"2001:db8:2::/48", "2001:db8:2::9/128",
	"2001:db8:a::/48", "2001:db8:a:b::/64", "2001:db8:a:b:c::/80",
)

// netipEqual compares netip values with ==.
var netipEqual = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

func mustPrefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

// class is what the program should make of a frame, whatever the mode.
type class int

const (
	classIP    class = iota // IP, classified by source: see rule
	classNonIP              // not IP: always passes
	classShort              // too short to parse: passes in Deny, drops in AllowOnly
)

// tableFrame is one frame of the verdict table.
type tableFrame struct {
	name  string
	frame []byte
	class class
	src   netip.Addr   // classIP
	rule  netip.Prefix // classIP: the rule it matches, or invalid for none
}

// wantVerdict is the verdict for a frame of class c matching rule (valid or not) in mode.
func wantVerdict(mode Mode, c class, matched bool) uint32 {
	switch {
	case c == classNonIP:
		return xdpPass
	case c == classShort:
		if mode == AllowOnly {
			return xdpDrop
		}
		return xdpPass
	case matched == (mode == Deny):
		return xdpDrop
	}
	return xdpPass
}

// tableFrames builds the verdict table's frames.
func tableFrames(tb testing.TB) []tableFrame {
	tb.Helper()
	type source struct {
		what string
		src  string
		rule string // "" for no match
	}
	sources := []source{
		{"v4 exact", "198.51.100.7", "198.51.100.7/32"},
		{"v4 prefix", "203.0.113.50", "203.0.113.0/24"},
		{"v4 exact inside prefix", "203.0.113.9", "203.0.113.9/32"},
		{"v4 nested /24", "10.1.2.3", "10.1.2.0/24"},
		{"v4 nested /16", "10.1.9.9", "10.1.0.0/16"},
		{"v4 nested /8", "10.9.9.9", "10.0.0.0/8"},
		{"v4 no match", "192.0.2.99", ""},
		{"v4 no match next to exact", "198.51.100.8", ""},
		{"v6 exact", "2001:db8:1::7", "2001:db8:1::7/128"},
		{"v6 prefix", "2001:db8:2::50", "2001:db8:2::/48"},
		{"v6 exact inside prefix", "2001:db8:2::9", "2001:db8:2::9/128"},
		{"v6 nested /80", "2001:db8:a:b:c::1", "2001:db8:a:b:c::/80"},
		{"v6 nested /64", "2001:db8:a:b:d::1", "2001:db8:a:b::/64"},
		{"v6 nested /48", "2001:db8:a:c::1", "2001:db8:a::/48"},
		{"v6 no match", "2001:db8:ffff::1", ""},
		{"v6 mapped v4 source matches no v4 rule", "::ffff:198.51.100.7", ""},
	}
	payload := make([]byte, 32)
	for i := range payload {
		payload[i] = byte(i)
	}
	type variant struct {
		name string
		v6   bool // only for IPv6
		v4   bool // only for IPv4
		edit func(p *testutil.Packet)
	}
	variants := []variant{
		{name: "plain", edit: func(p *testutil.Packet) {}},
		{name: "802.1Q", edit: func(p *testutil.Packet) { p.VLANs = []uint16{100} }},
		{name: "QinQ", edit: func(p *testutil.Packet) { p.VLANs = []uint16{100, 200} }},
		{name: "first fragment", edit: func(p *testutil.Packet) {
			p.Fragment = &testutil.Fragment{ID: 7, Offset: 0, Len: 16, More: true}
		}},
		{name: "later fragment", edit: func(p *testutil.Packet) { p.Fragment = &testutil.Fragment{ID: 7, Offset: 16} }},
		{name: "QinQ later fragment", edit: func(p *testutil.Packet) {
			p.VLANs = []uint16{100, 200}
			p.Fragment = &testutil.Fragment{ID: 7, Offset: 16}
		}},
		{name: "IPv4 options", v4: true, edit: func(p *testutil.Packet) {
			p.IPv4Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}}
		}},
		{name: "IPv6 extension headers", v6: true, edit: func(p *testutil.Packet) {
			p.IPv6Ext = []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing,
				layers.IPProtocolAH, layers.IPProtocolIPv6Destination}
		}},
		{name: "IPv6 8 extension headers and a later fragment", v6: true, edit: func(p *testutil.Packet) {
			p.IPv6Ext = []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination,
				layers.IPProtocolIPv6Routing, layers.IPProtocolIPv6Destination, layers.IPProtocolIPv6Destination,
				layers.IPProtocolIPv6Destination, layers.IPProtocolIPv6Destination}
			p.Fragment = &testutil.Fragment{ID: 9, Offset: 16} // the 8th
		}},
		{name: "IPv6 first fragment after extension headers", v6: true, edit: func(p *testutil.Packet) {
			p.IPv6Ext = []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination}
			p.Fragment = &testutil.Fragment{ID: 9, Offset: 0, Len: 16, More: true}
		}},
	}
	var out []tableFrame
	for _, s := range sources {
		src := netip.MustParseAddr(s.src)
		var rule netip.Prefix
		if s.rule != "" {
			rule = netip.MustParsePrefix(s.rule)
		}
		for _, v := range variants {
			if (v.v6 && src.Is4()) || (v.v4 && src.Is6()) {
				continue
			}
			p := testutil.Packet{Src: src, Dst: netip.MustParseAddr("192.0.2.1"), Proto: layers.IPProtocolUDP,
				SrcPort: 1000, DstPort: 53, Payload: payload}
			if src.Is6() {
				p.Dst = netip.MustParseAddr("2001:db8::1")
			}
			v.edit(&p)
			out = append(out, tableFrame{name: s.what + "/" + v.name, frame: testutil.BuildPacket(tb, p),
				class: classIP, src: src, rule: rule})
		}
	}

	// Not IP.
	arp := make([]byte, 28)
	copy(arp, []byte{0, 1, 8, 0, 6, 4, 0, 1})
	for _, f := range []struct {
		name  string
		p     testutil.Packet
		short bool
	}{
		{name: "ARP", p: testutil.Packet{EtherType: layers.EthernetTypeARP, Payload: arp}},
		{name: "802.1Q ARP", p: testutil.Packet{EtherType: layers.EthernetTypeARP, VLANs: []uint16{5}, Payload: arp}},
		{name: "QinQ ARP", p: testutil.Packet{EtherType: layers.EthernetTypeARP, VLANs: []uint16{5, 6}, Payload: arp}},
		{name: "LLDP", p: testutil.Packet{EtherType: layers.EthernetTypeLinkLayerDiscovery, Payload: make([]byte, 32)}},
		{name: "802.3 length field", p: testutil.Packet{EtherType: 46, Payload: make([]byte, 46)}},
		// Three tags: beyond the parser's limits, so "too short to parse".
		{name: "three VLAN tags", short: true, p: testutil.Packet{Src: netip.MustParseAddr("192.0.2.99"),
			Dst: netip.MustParseAddr("192.0.2.1"), Proto: layers.IPProtocolUDP, VLANs: []uint16{1, 2, 3}}},
		// Nine extension headers: unsupported, so "too short to parse".
		{name: "nine IPv6 extension headers", short: true, p: testutil.Packet{Src: netip.MustParseAddr("2001:db8:ffff::1"),
			Dst: netip.MustParseAddr("2001:db8::1"), Proto: layers.IPProtocolUDP, IPv6Ext: []layers.IPProtocol{
				0, 60, 60, 60, 60, 60, 60, 60, 60}}},
	} {
		c := classNonIP
		if f.short {
			c = classShort
		}
		out = append(out, tableFrame{name: f.name, frame: testutil.BuildPacket(tb, f.p), class: c})
	}

	// Truncated: every length from 14 to just before the end of the IP
	// header (extension headers and options included), and the whole header.
	for _, f := range []struct {
		name   string
		p      testutil.Packet
		l3     int // offset of the IP header
		l3Len  int // bytes of IP header
		vlanAt int // for a VLAN frame: cut from 14 up to l3
	}{
		{name: "v4", l3: 14, l3Len: 20, p: testutil.Packet{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: layers.IPProtocolUDP}},
		{name: "v4 options", l3: 14, l3Len: 24, p: testutil.Packet{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: layers.IPProtocolUDP,
			IPv4Options: []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}}}},
		{name: "v6", l3: 14, l3Len: 40, p: testutil.Packet{Src: netip.MustParseAddr("2001:db8:1::7"), Dst: netip.MustParseAddr("2001:db8::1"), Proto: layers.IPProtocolUDP}},
		{name: "v6 ext", l3: 14, l3Len: 40 + 8 + 24 + 8, p: testutil.Packet{Src: netip.MustParseAddr("2001:db8:1::7"), Dst: netip.MustParseAddr("2001:db8::1"), Proto: layers.IPProtocolUDP,
			IPv6Ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolAH}, Fragment: &testutil.Fragment{ID: 1, Len: 8, More: true}}},
		{name: "802.1Q v4", l3: 18, l3Len: 20, p: testutil.Packet{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: layers.IPProtocolUDP, VLANs: []uint16{100}}},
		{name: "QinQ v6", l3: 22, l3Len: 40, p: testutil.Packet{Src: netip.MustParseAddr("2001:db8:1::7"), Dst: netip.MustParseAddr("2001:db8::1"), Proto: layers.IPProtocolUDP, VLANs: []uint16{100, 200}}},
	} {
		full := testutil.BuildPacket(tb, f.p)
		end := f.l3 + f.l3Len
		for n := 14; n < end; n++ {
			out = append(out, tableFrame{name: fmt.Sprintf("truncated %s/%d of %d", f.name, n, end), frame: full[:n:n], class: classShort})
		}
		src := f.p.Src
		var rule netip.Prefix
		for _, r := range tableRules {
			if r.Contains(src) && r.Bits() > rule.Bits() {
				rule = r
			}
		}
		out = append(out, tableFrame{name: fmt.Sprintf("truncated %s/%d: whole header", f.name, end), frame: full[:end:end],
			class: classIP, src: src, rule: rule})
	}

	// IPv4 headers that contradict themselves.
	v4 := testutil.BuildPacket(tb, testutil.Packet{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: layers.IPProtocolUDP})
	v6 := testutil.BuildPacket(tb, testutil.Packet{Src: netip.MustParseAddr("2001:db8:1::7"), Dst: netip.MustParseAddr("2001:db8::1"), Proto: layers.IPProtocolUDP})
	long4 := testutil.BuildPacket(tb, testutil.Packet{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: layers.IPProtocolUDP, Payload: make([]byte, 100)})
	for _, m := range []struct {
		name string
		base []byte
		edit func(b []byte)
	}{
		{"v4 IHL 4", v4, func(b []byte) { b[14] = 0x44 }},
		{"v4 IHL 0", v4, func(b []byte) { b[14] = 0x40 }},
		{"v4 total length 19", v4, func(b []byte) { b[16], b[17] = 0, 19 }},
		{"v4 total length 0", v4, func(b []byte) { b[16], b[17] = 0, 0 }},
		{"v4 IHL 15 past the frame", long4[:14+56], func(b []byte) { b[14] = 0x4f; b[16], b[17] = 0, 60 }},
		{"v4 version 6", v4, func(b []byte) { b[14] = 0x65 }},
		{"v6 version 4", v6, func(b []byte) { b[14] = 0x40 | b[14]&0x0f }},
	} {
		b := append([]byte(nil), m.base...)
		m.edit(b)
		out = append(out, tableFrame{name: "malformed " + m.name, frame: b, class: classShort})
	}
	return out
}

func TestVerdictTable(t *testing.T) {
	frames := tableFrames(t)
	for _, mode := range []Mode{Deny, AllowOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			h := newHarness(t, Config{Mode: mode})
			if err := addAll(h.Filter, tableRules); err != nil {
				t.Fatal(err)
			}
			for _, f := range frames {
				want := wantVerdict(mode, f.class, f.rule.IsValid())
				if got := h.verdict(t, f.frame); got != want {
					t.Errorf("%s (%d bytes): verdict %d, want %d", f.name, len(f.frame), got, want)
				}
			}
		})
	}
}

// addAll adds rules, one family per call.
func addAll(f *Filter, rules []netip.Prefix) error {
	var v4, v6 []netip.Prefix
	for _, p := range rules {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	if err := f.Add(v4...); err != nil {
		return err
	}
	return f.Add(v6...)
}

// TestCounters runs the verdict table through the filter and checks that
// the totals and per-rule hits are exactly what the table implies.
func TestCounters(t *testing.T) {
	frames := tableFrames(t)
	for _, mode := range []Mode{Deny, AllowOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			h := newHarness(t, Config{Mode: mode})
			if err := addAll(h.Filter, tableRules); err != nil {
				t.Fatal(err)
			}
			var want Stats
			wantHits := map[netip.Prefix]uint64{}
			for _, r := range tableRules {
				wantHits[r] = 0
			}
			for _, f := range frames {
				v := h.verdict(t, f.frame)
				if v != wantVerdict(mode, f.class, f.rule.IsValid()) {
					t.Errorf("%s: verdict %d", f.name, v)
				}
				if v == xdpPass {
					want.Passed++
				} else {
					want.Dropped++
				}
				switch f.class {
				case classNonIP:
					want.PassedNonIP++
				case classShort:
					want.Short++
				case classIP:
					if f.rule.IsValid() {
						want.Matched++
						wantHits[f.rule]++
					}
				}
			}
			got, err := h.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got, netipEqual); diff != "" {
				t.Errorf("Stats (-want +got):\n%s", diff)
			}
			hits, err := h.Hits()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wantHits, hits, netipEqual); diff != "" {
				t.Errorf("Hits (-want +got):\n%s", diff)
			}
			// The host inside a prefix takes its hits, not the prefix.
			if hits[netip.MustParsePrefix("203.0.113.9/32")] == 0 {
				t.Errorf("the /32 inside a /24 got no hits")
			}
		})
	}
}

func TestCountersSequence(t *testing.T) {
	h := newHarness(t, Config{})
	r24, r32 := netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("203.0.113.9/32")
	if err := h.Add(r24, r32); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		h.verdict(t, udpFrom(t, "203.0.113.9")) // the /32
	}
	for range 2 {
		h.verdict(t, udpFrom(t, "203.0.113.10")) // the /24
	}
	h.verdict(t, udpFrom(t, "192.0.2.50"))                                                                               // passed, no match
	h.verdict(t, testutil.BuildPacket(t, testutil.Packet{EtherType: layers.EthernetTypeARP, Payload: make([]byte, 28)})) // non-IP
	h.verdict(t, udpFrom(t, "203.0.113.9")[:20])                                                                         // short, passed
	got, err := h.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Passed: 3, Dropped: 5, PassedNonIP: 1, Short: 1, Matched: 5}
	if diff := cmp.Diff(want, got, netipEqual); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
	hits, err := h.Hits()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[netip.Prefix]uint64{r24: 2, r32: 3}, hits, netipEqual); diff != "" {
		t.Errorf("Hits (-want +got):\n%s", diff)
	}
}

func TestReplaceKeepsHits(t *testing.T) {
	h := newHarness(t, Config{})
	a, b, c := netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.9/32"), netip.MustParsePrefix("2001:db8::/32")
	wantRev := uint64(0)
	check := func(what string, want map[netip.Prefix]uint64) {
		t.Helper()
		got, err := h.Hits()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got, netipEqual); diff != "" {
			t.Errorf("%s: Hits (-want +got):\n%s", what, diff)
		}
		if r := h.Revision(); r != wantRev {
			t.Errorf("%s: Revision %d, want %d", what, r, wantRev)
		}
	}
	if err := h.Add(a); err != nil {
		t.Fatal(err)
	}
	wantRev++
	if err := h.Add(b); err != nil {
		t.Fatal(err)
	}
	wantRev++
	if err := h.Add(b); err != nil { // already there: no change
		t.Fatal(err)
	}
	for range 3 {
		h.verdict(t, udpFrom(t, "198.51.100.1"))
	}
	for range 2 {
		h.verdict(t, udpFrom(t, "203.0.113.9"))
	}
	check("after Add", map[netip.Prefix]uint64{a: 3, b: 2})

	if err := h.Replace([]netip.Prefix{a, c}); err != nil {
		t.Fatal(err)
	}
	wantRev++
	check("after Replace {a, c}", map[netip.Prefix]uint64{a: 3, c: 0})
	h.verdict(t, udpFrom(t, "198.51.100.1"))
	h.verdict(t, udpFrom(t, "2001:db8::1"))
	if v := h.verdict(t, udpFrom(t, "203.0.113.9")); v != xdpPass {
		t.Errorf("b after Replace without it: verdict %d", v)
	}
	check("after Replace and traffic", map[netip.Prefix]uint64{a: 4, c: 1})

	// b comes back: a new rule, counted from 0. a stays through a second Replace.
	if err := h.Replace([]netip.Prefix{a, b, c}); err != nil {
		t.Fatal(err)
	}
	wantRev++
	check("after Replace {a, b, c}", map[netip.Prefix]uint64{a: 4, b: 0, c: 1})
	if err := h.Replace([]netip.Prefix{a, b}); err != nil {
		t.Fatal(err)
	}
	wantRev++
	check("after Replace {a, b}", map[netip.Prefix]uint64{a: 4, b: 0})

	if err := h.Remove(b); err != nil {
		t.Fatal(err)
	}
	wantRev++
	if err := h.Add(b); err != nil {
		t.Fatal(err)
	}
	wantRev++
	h.verdict(t, udpFrom(t, "203.0.113.9"))
	check("after Remove and Add of b", map[netip.Prefix]uint64{a: 4, b: 1})
	if diff := cmp.Diff([]netip.Prefix{a, b}, h.List(), netipEqual); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

// lockToCPU keeps the calling goroutine on one thread on one CPU, so that
// BPF_PROG_RUN always uses the same per-CPU counters.
func lockToCPU(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	cpu := -1
	for i := range 1024 {
		if old.IsSet(i) {
			cpu = i
			break
		}
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	})
}

// collectEvents reads events until n arrive or a deadline passes, then reads
// for a little longer to catch extra ones.
func collectEvents(t *testing.T, h *harness, n int, send func()) []DropEvent {
	t.Helper()
	ev, err := h.Events()
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan DropEvent)
	done := make(chan error, 1)
	go func() {
		for {
			e, err := ev.Read()
			if err != nil {
				done <- err
				return
			}
			ch <- e
		}
	}()
	send()
	var got []DropEvent
	timeout := time.After(5 * time.Second)
loop:
	for {
		if len(got) == n {
			timeout = time.After(100 * time.Millisecond)
		}
		select {
		case e := <-ch:
			got = append(got, e)
		case <-timeout:
			break loop
		}
	}
	ev.Close()
	// Drain, so the reader goroutine can see Close.
	for {
		select {
		case <-ch:
		case err := <-done:
			if !errors.Is(err, os.ErrClosed) {
				t.Errorf("Read after Close: %v, want os.ErrClosed", err)
			}
			return got
		}
	}
}

func TestDropEvents(t *testing.T) {
	rule4, rule6 := netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:1::7/128")

	t.Run("deny", func(t *testing.T) {
		h := newHarness(t, Config{SampleRate: 1})
		if err := h.Add(rule4); err != nil {
			t.Fatal(err)
		}
		if err := h.Add(rule6); err != nil {
			t.Fatal(err)
		}
		var want []DropEvent
		srcs := []string{"198.51.100.1", "198.51.100.2", "2001:db8:1::7", "198.51.100.3", "2001:db8:1::7"}
		for _, s := range srcs {
			a := netip.MustParseAddr(s)
			r := rule4
			if a.Is6() {
				r = rule6
			}
			want = append(want, DropEvent{Source: a, Rule: r, Count: 1, Reason: DropMatch})
		}
		got := collectEvents(t, h, len(want), func() {
			h.verdict(t, udpFrom(t, "192.0.2.1")) // passed: no event
			for _, s := range srcs {
				if v := h.verdict(t, udpFrom(t, s)); v != xdpDrop {
					t.Errorf("%s: verdict %d", s, v)
				}
			}
		})
		if diff := cmp.Diff(want, got, netipEqual); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	})

	t.Run("allow-only", func(t *testing.T) {
		h := newHarness(t, Config{Mode: AllowOnly, SampleRate: 1})
		if err := h.Add(rule4); err != nil {
			t.Fatal(err)
		}
		want := []DropEvent{
			{Source: netip.MustParseAddr("192.0.2.9"), Count: 1, Reason: DropNoMatch},
			{Source: netip.MustParseAddr("2001:db8::9"), Count: 1, Reason: DropNoMatch},
			{Count: 1, Reason: DropShort},
		}
		got := collectEvents(t, h, len(want), func() {
			h.verdict(t, udpFrom(t, "198.51.100.1")) // allowed: no event
			h.verdict(t, udpFrom(t, "192.0.2.9"))
			h.verdict(t, udpFrom(t, "2001:db8::9"))
			h.verdict(t, udpFrom(t, "198.51.100.1")[:30])
		})
		if diff := cmp.Diff(want, got, netipEqual); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	})

	t.Run("sampled", func(t *testing.T) {
		lockToCPU(t) // the sample counter is per CPU
		h := newHarness(t, Config{SampleRate: 10})
		if err := h.Add(rule4); err != nil {
			t.Fatal(err)
		}
		frame := udpFrom(t, "198.51.100.77")
		got := collectEvents(t, h, 10, func() {
			for range 100 {
				h.verdict(t, frame)
			}
		})
		if len(got) != 10 {
			t.Errorf("%d events, want 10: %+v", len(got), got)
		}
		for _, e := range got {
			want := DropEvent{Source: netip.MustParseAddr("198.51.100.77"), Rule: rule4, Count: 10, Reason: DropMatch}
			if e != want {
				t.Errorf("event %+v, want %+v", e, want)
			}
		}
		s, err := h.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.Dropped != 100 || s.EventsLost != 0 {
			t.Errorf("Stats %+v, want 100 dropped, none lost", s)
		}
	})
}
