package conntrack

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

// tcxNext is TC_ACT_UNSPEC (TCX_NEXT) as BPF_PROG_RUN returns it: the
// tracker's verdict for every packet.
const tcxNext = 0xffffffff

// harness is a Table with the tracker programs loaded into it, run with
// BPF_PROG_RUN instead of being attached.
type harness struct {
	*Table
	progs trackerPrograms
}

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	tbl, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tbl.Close() })
	progs, err := tbl.loadPrograms()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { progs.Close() })
	return &harness{Table: tbl, progs: *progs}
}

// run sends frame through the tracker in direction dir and checks that it
// passed unchanged.
func (h *harness) run(tb testing.TB, dir Direction, frame []byte) {
	tb.Helper()
	prog := h.progs.NbCtIngress
	if dir == Out {
		prog = h.progs.NbCtEgress
	}
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)}
	ret, err := prog.Run(opts)
	if err != nil {
		tb.Fatalf("run tracker on %d bytes: %v", len(frame), err)
	}
	if ret != tcxNext {
		tb.Fatalf("tracker verdict %#x, want TCX_NEXT", ret)
	}
	if !bytes.Equal(opts.DataOut, frame) {
		tb.Fatalf("tracker changed the packet:\n in  %x\n out %x", frame, opts.DataOut)
	}
}

// entry looks f up and fails if it is not tracked.
func (h *harness) entry(tb testing.TB, f Flow) Entry {
	tb.Helper()
	e, err := h.Lookup(f)
	if err != nil {
		tb.Fatalf("look up %v: %v", f, err)
	}
	return e
}

// checkExpiry checks that e expires timeout after a packet sent between before and after.
func checkExpiry(tb testing.TB, e Entry, timeout time.Duration, before, after time.Time) {
	tb.Helper()
	const slack = 50 * time.Millisecond // wall/monotonic conversion jitter
	lo, hi := before.Add(timeout-slack), after.Add(timeout+slack)
	if e.Expires.Before(lo) || e.Expires.After(hi) {
		tb.Errorf("%v expires %v, want %v after the packet (between %v and %v)", e.Flow, e.Expires, timeout, lo, hi)
	}
}

var (
	addrA4, addrB4 = netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("198.51.100.20")
	addrA6, addrB6 = netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("2001:db8:1::20")
)

// families runs a test for IPv4 and IPv6 with a client address a and server b.
func families(t *testing.T, fn func(t *testing.T, a, b netip.Addr)) {
	for name, pair := range map[string][2]netip.Addr{"ipv4": {addrA4, addrB4}, "ipv6": {addrA6, addrB6}} {
		t.Run(name, func(t *testing.T) { fn(t, pair[0], pair[1]) })
	}
}

func TestTrackTCP(t *testing.T) {
	families(t, func(t *testing.T, a, b netip.Addr) {
		timeouts := Timeouts{TCPEstablished: time.Hour, TCPSyn: 30 * time.Second, TCPClosing: 5 * time.Second}
		h := newHarness(t, Config{MaxEntries: 1024, Timeouts: timeouts})
		flow := Flow{Src: netip.AddrPortFrom(a, 40000), Dst: netip.AddrPortFrom(b, 80), Proto: TCP}
		out := func(flags uint8, payload string) []byte { // client -> server, leaving through egress
			return testutil.BuildPacket(t, testutil.Packet{Src: a, Dst: b, Proto: layers.IPProtocolTCP, SrcPort: 40000, DstPort: 80, TCPFlags: flags, Payload: []byte(payload)})
		}
		in := func(flags uint8, payload string) []byte { // server -> client, arriving on ingress
			return testutil.BuildPacket(t, testutil.Packet{Src: b, Dst: a, Proto: layers.IPProtocolTCP, SrcPort: 80, DstPort: 40000, TCPFlags: flags, Payload: []byte(payload)})
		}
		var want Entry
		step := func(name string, dir Direction, frame []byte, state State, flags Flags, timeout time.Duration) {
			t.Helper()
			before := time.Now()
			h.run(t, dir, frame)
			after := time.Now()
			// The client's flow left through egress: Out, and its packets are Tx.
			if dir == Out {
				want.TxPackets++
				want.TxBytes += uint64(len(frame))
				want.TxFlagsSeen |= TCPFlags(frame[len(frame)-tcpPayloadLen(frame)-7])
			} else {
				want.RxPackets++
				want.RxBytes += uint64(len(frame))
				want.RxFlagsSeen |= TCPFlags(frame[len(frame)-tcpPayloadLen(frame)-7])
			}
			want.State, want.Flags = state, flags
			e := h.entry(t, flow)
			want.Flow, want.Direction, want.Created, want.Expires = flow, Out, e.Created, e.Expires
			if e != want {
				t.Fatalf("after %s:\n got  %v\n want %v", name, e, want)
			}
			checkExpiry(t, e, timeout, before, after)
		}
		step("SYN", Out, out(0x02, ""), StateNew, 0, timeouts.TCPSyn)
		step("SYN-ACK", In, in(0x12, ""), StateNew, FlagSeenReply, timeouts.TCPSyn)
		step("ACK", Out, out(0x10, ""), StateEstablished, FlagSeenReply|FlagSeenNonSyn, timeouts.TCPEstablished)
		step("request", Out, out(0x18, "GET / HTTP/1.0\r\n\r\n"), StateEstablished, FlagSeenReply|FlagSeenNonSyn, timeouts.TCPEstablished)
		step("response", In, in(0x18, "HTTP/1.0 200 OK\r\n\r\nhello"), StateEstablished, FlagSeenReply|FlagSeenNonSyn, timeouts.TCPEstablished)
		step("server FIN", In, in(0x11, ""), StateEstablished, FlagSeenReply|FlagSeenNonSyn|FlagRxClosing, timeouts.TCPEstablished)
		step("client FIN", Out, out(0x11, ""), StateClosing, FlagSeenReply|FlagSeenNonSyn|FlagRxClosing|FlagTxClosing, timeouts.TCPClosing)
		step("last ACK", Out, out(0x10, ""), StateClosing, FlagSeenReply|FlagSeenNonSyn|FlagRxClosing|FlagTxClosing, timeouts.TCPClosing)

		// A new SYN on the closed tuple starts a new connection in its place.
		created := want.Created
		want = Entry{}
		step("new SYN", Out, out(0x02, ""), StateNew, 0, timeouts.TCPSyn)
		if e := h.entry(t, flow); !e.Created.After(created) {
			t.Errorf("reopened entry created %v, not after the first (%v)", e.Created, created)
		}
		// RST from the server closes both directions at once.
		step("SYN-ACK", In, in(0x12, ""), StateNew, FlagSeenReply, timeouts.TCPSyn)
		step("RST", In, in(0x14, ""), StateClosing, FlagSeenReply|FlagSeenNonSyn|FlagRxClosing|FlagTxClosing, timeouts.TCPClosing)

		st, err := h.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if wantSt := (Stats{New: 2, Established: 4, Reply: 5}); st != wantSt {
			t.Errorf("stats %+v, want %+v", st, wantSt)
		}
	})
}

// tcpPayloadLen is the length of the TCP payload of a frame built by testutil
// without options: the flags byte sits 7 bytes before the checksum... that is,
// 13 bytes into the 20-byte TCP header, which ends where the payload starts.
func tcpPayloadLen(frame []byte) int {
	l3 := 14
	var l4 int
	if frame[12] == 0x86 {
		l4 = l3 + 40
	} else {
		l4 = l3 + int(frame[l3]&0xf)*4
	}
	return len(frame) - (l4 + 20)
}

func TestTrackUDP(t *testing.T) {
	families(t, func(t *testing.T, a, b netip.Addr) {
		h := newHarness(t, Config{MaxEntries: 1024, Timeouts: Timeouts{NonTCP: 42 * time.Second}})
		// A client outside sends in through ingress: the flow is In.
		q := testutil.BuildPacket(t, testutil.Packet{Src: a, Dst: b, Proto: layers.IPProtocolUDP, SrcPort: 5353, DstPort: 53, Payload: []byte("query")})
		r := testutil.BuildPacket(t, testutil.Packet{Src: b, Dst: a, Proto: layers.IPProtocolUDP, SrcPort: 53, DstPort: 5353, Payload: []byte("a longer answer")})
		flow := Flow{Src: netip.AddrPortFrom(a, 5353), Dst: netip.AddrPortFrom(b, 53), Proto: UDP}

		before := time.Now()
		h.run(t, In, q)
		e := h.entry(t, flow.Reverse()) // found from either direction
		checkExpiry(t, e, 42*time.Second, before, time.Now())
		want := Entry{Flow: flow, Direction: In, State: StateNew, Created: e.Created, Expires: e.Expires,
			RxPackets: 1, RxBytes: uint64(len(q))}
		if e != want {
			t.Fatalf("after query:\n got  %v\n want %v", e, want)
		}
		for range 3 {
			h.run(t, Out, r)
			h.run(t, In, q)
		}
		e = h.entry(t, flow)
		want = Entry{Flow: flow, Direction: In, State: StateEstablished, Created: e.Created, Expires: e.Expires, Flags: FlagSeenReply,
			RxPackets: 4, RxBytes: 4 * uint64(len(q)), TxPackets: 3, TxBytes: 3 * uint64(len(r))}
		if e != want {
			t.Fatalf("after replies:\n got  %v\n want %v", e, want)
		}
	})
}

func TestTrackICMPEcho(t *testing.T) {
	families(t, func(t *testing.T, a, b netip.Addr) {
		h := newHarness(t, Config{MaxEntries: 1024})
		proto, p := layers.IPProtocolICMPv4, ICMP
		if a.Is6() {
			proto, p = layers.IPProtocolICMPv6, ICMPv6
		}
		req := testutil.BuildPacket(t, testutil.Packet{Src: a, Dst: b, Proto: proto, ICMPID: 0x4242, ICMPSeq: 1, Payload: []byte("ping")})
		rep := testutil.BuildPacket(t, testutil.Packet{Src: b, Dst: a, Proto: proto, ICMPReply: true, ICMPID: 0x4242, ICMPSeq: 1, Payload: []byte("ping")})
		for range 2 {
			h.run(t, Out, req)
			h.run(t, In, rep)
		}
		// The identifier is the request's source port.
		flow := Flow{Src: netip.AddrPortFrom(a, 0x4242), Dst: netip.AddrPortFrom(b, 0), Proto: p}
		e := h.entry(t, flow)
		want := Entry{Flow: flow, Direction: Out, State: StateEstablished, Created: e.Created, Expires: e.Expires, Flags: FlagSeenReply,
			TxPackets: 2, TxBytes: 2 * uint64(len(req)), RxPackets: 2, RxBytes: 2 * uint64(len(rep))}
		if e != want {
			t.Fatalf("\n got  %v\n want %v", e, want)
		}
		if n, err := h.Len(); err != nil || n != 1 {
			t.Errorf("table has %d entries (%v), want the one echo flow", n, err)
		}
	})
}

// TestTrackICMPErrorRelated checks that an ICMP error is matched, through the
// packet it quotes, to its flow: counted related, the entry left alone.
func TestTrackICMPErrorRelated(t *testing.T) {
	families(t, func(t *testing.T, a, b netip.Addr) {
		h := newHarness(t, Config{MaxEntries: 1024})
		router := netip.MustParseAddr("203.0.113.1")
		proto, unreach, timeExceeded := layers.IPProtocolICMPv4, uint8(3), uint8(11)
		if a.Is6() {
			router = netip.MustParseAddr("2001:db8:ffff::1")
			proto, unreach, timeExceeded = layers.IPProtocolICMPv6, 1, 3
		}
		udp := testutil.Packet{Src: a, Dst: b, Proto: layers.IPProtocolUDP, SrcPort: 33434, DstPort: 9999, Payload: []byte("probe")}
		tcp := testutil.Packet{Src: a, Dst: b, Proto: layers.IPProtocolTCP, SrcPort: 40001, DstPort: 443, Payload: []byte("hello")}
		for _, p := range []testutil.Packet{udp, tcp} {
			h.run(t, Out, testutil.BuildPacket(t, p))
		}
		before, err := h.Stats()
		if err != nil {
			t.Fatal(err)
		}
		entries := func() map[Flow]Entry {
			m := map[Flow]Entry{}
			for e, err := range h.Iterate() {
				if err != nil {
					t.Fatal(err)
				}
				m[e.Flow] = e
			}
			return m
		}
		was := entries()

		// An ICMP error quotes the IP header and the first 8 bytes of the packet.
		quote := func(p testutil.Packet) []byte {
			ip, err := p.BuildIP()
			if err != nil {
				t.Fatal(err)
			}
			hdr := 20
			if p.Src.Is6() {
				hdr = 40
			}
			return ip[:hdr+8]
		}
		related := []testutil.Packet{
			{Src: b, Dst: a, Proto: proto, ICMPType: unreach, ICMPCode: 3, Payload: quote(udp)}, // port unreachable from the server
			{Src: router, Dst: a, Proto: proto, ICMPType: timeExceeded, Payload: quote(tcp)},    // TTL exceeded on the way
		}
		for _, p := range related {
			h.run(t, In, testutil.BuildPacket(t, p))
		}
		// An error about a flow nobody tracks is untracked.
		stranger := udp
		stranger.SrcPort = 1
		h.run(t, In, testutil.BuildPacket(t, testutil.Packet{Src: b, Dst: a, Proto: proto, ICMPType: unreach, ICMPCode: 3, Payload: quote(stranger)}))

		after, err := h.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if after.Related-before.Related != 2 || after.Untracked-before.Untracked != 1 || after.New != before.New {
			t.Errorf("stats went from %+v to %+v, want 2 more related, 1 more untracked, no new", before, after)
		}
		now := entries()
		if len(now) != len(was) {
			t.Errorf("table went from %d to %d entries", len(was), len(now))
		}
		for f, e := range was {
			// Times convert from the monotonic clock afresh on each read: compare them apart.
			n := now[f]
			if d := n.Expires.Sub(e.Expires).Abs(); d > 10*time.Millisecond {
				t.Errorf("an ICMP error moved %v's expiry by %v", f, d)
			}
			e.Created, e.Expires, n.Created, n.Expires = time.Time{}, time.Time{}, time.Time{}, time.Time{}
			if n != e {
				t.Errorf("an ICMP error changed %v:\n was %v\n now %v", f, e, n)
			}
		}
	})
}

// TestTrackPassesUntouched feeds truncated, malformed and untrackable frames:
// every one passes unchanged, and none creates an entry.
func TestTrackPassesUntouched(t *testing.T) {
	h := newHarness(t, Config{MaxEntries: 1024})
	frames := map[string][]byte{
		"arp":                 testutil.BuildPacket(t, testutil.Packet{EtherType: layers.EthernetTypeARP, Payload: make([]byte, 28)}),
		"ipv4 later fragment": testutil.BuildPacket(t, testutil.Packet{Src: addrA4, Dst: addrB4, Proto: layers.IPProtocolUDP, SrcPort: 1, DstPort: 2, Payload: make([]byte, 64), Fragment: &testutil.Fragment{ID: 9, Offset: 32}}),
		"ipv6 later fragment": testutil.BuildPacket(t, testutil.Packet{Src: addrA6, Dst: addrB6, Proto: layers.IPProtocolTCP, SrcPort: 1, DstPort: 2, Payload: make([]byte, 64), Fragment: &testutil.Fragment{ID: 9, Offset: 32}}),
	}
	malformed := testutil.BuildPacket(t, testutil.Packet{Src: addrA4, Dst: addrB4, Proto: layers.IPProtocolTCP, SrcPort: 1, DstPort: 2})
	malformed[14] = 0x43 // IHL 3
	frames["ipv4 ihl 3"] = malformed
	badTCP := testutil.BuildPacket(t, testutil.Packet{Src: addrA6, Dst: addrB6, Proto: layers.IPProtocolTCP, SrcPort: 1, DstPort: 2})
	badTCP[14+40+12] = 0x20 // data offset 2
	frames["tcp data offset 2"] = badTCP
	// Every truncation of trackable frames that cuts into the L4 header.
	for name, p := range map[string]testutil.Packet{
		"tcp4":  {Src: addrA4, Dst: addrB4, Proto: layers.IPProtocolTCP, SrcPort: 1, DstPort: 2},
		"udp6":  {Src: addrA6, Dst: addrB6, Proto: layers.IPProtocolUDP, SrcPort: 1, DstPort: 2},
		"icmp4": {Src: addrA4, Dst: addrB4, Proto: layers.IPProtocolICMPv4, ICMPID: 5},
	} {
		full := testutil.BuildPacket(t, p)
		l4 := 14 + 20
		if p.Src.Is6() {
			l4 = 14 + 40
		}
		hdr := 8
		if p.Proto == layers.IPProtocolTCP {
			hdr = 20
		}
		// BPF_PROG_RUN refuses tc frames shorter than the IP header; from there on, every length short of the L4 header.
		for n := l4; n < l4+hdr; n++ {
			frames[name+" cut at "+string(rune('0'+n/10))+string(rune('0'+n%10))] = full[:n]
		}
	}
	for name, frame := range frames {
		for _, dir := range []Direction{In, Out} {
			h.run(t, dir, frame)
		}
		if n, err := h.Len(); err != nil || n != 0 {
			t.Fatalf("%s: table has %d entries (%v), want none", name, n, err)
		}
	}
	st, err := h.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(2 * len(frames)); st.Untracked != want || st.New != 0 {
		t.Errorf("stats %+v, want %d untracked and nothing new", st, want)
	}
}

// TestTrackFirstFragment checks that a first fragment, which carries the L4
// header, is tracked.
func TestTrackFirstFragment(t *testing.T) {
	h := newHarness(t, Config{MaxEntries: 1024})
	frame := testutil.BuildPacket(t, testutil.Packet{Src: addrA4, Dst: addrB4, Proto: layers.IPProtocolUDP, SrcPort: 7, DstPort: 9,
		Payload: make([]byte, 64), Fragment: &testutil.Fragment{ID: 9, Len: 32, More: true}})
	h.run(t, Out, frame)
	if _, err := h.Lookup(Flow{Src: netip.AddrPortFrom(addrA4, 7), Dst: netip.AddrPortFrom(addrB4, 9), Proto: UDP}); err != nil {
		t.Fatal(err)
	}
}

// TestLRUPressure sends many more flows than the table holds: every packet
// passes, every flow gets an entry when it comes (the oldest are evicted), and
// no creation fails.
func TestLRUPressure(t *testing.T) {
	const size, flows = 1024, 8192
	h := newHarness(t, Config{MaxEntries: size})
	base := testutil.BuildPacket(t, testutil.Packet{Src: addrA4, Dst: addrB4, Proto: layers.IPProtocolUDP, SrcPort: 1, DstPort: 53})
	for i := range flows {
		frame := bytes.Clone(base)
		frame[14+20] = byte(i >> 8) // UDP source port: the tracker does not check checksums
		frame[14+20+1] = byte(i)
		h.run(t, In, frame)
		// The flow just created must be there, however full the table.
		if _, err := h.Lookup(Flow{Src: netip.AddrPortFrom(addrA4, uint16(i)), Dst: netip.AddrPortFrom(addrB4, 53), Proto: UDP}); err != nil {
			t.Fatalf("flow %d of %d: %v", i, flows, err)
		}
	}
	n, err := h.Len()
	if err != nil {
		t.Fatal(err)
	}
	if n > size || n < size/2 {
		t.Errorf("table holds %d entries, want at most %d and most of them", n, size)
	}
	st, err := h.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.New != flows || st.CreateFailed != 0 {
		t.Errorf("stats %+v, want %d new and no failed creations", st, flows)
	}
	if _, err := h.Lookup(Flow{Src: netip.AddrPortFrom(addrA4, 0), Dst: netip.AddrPortFrom(addrB4, 53), Proto: UDP}); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("the first flow is still there (%v): nothing was evicted", err)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
