package parsetest

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

var (
	src4 = netip.MustParseAddr("192.0.2.1")
	dst4 = netip.MustParseAddr("198.51.100.7")
	src6 = netip.MustParseAddr("2001:db8::1")
	dst6 = netip.MustParseAddr("2001:db8:1::2")
)

// equateAddr compares netip.Addr values with ==.
var equateAddr = cmpopts.EquateComparable(netip.Addr{})

// frames is every kind of frame the parser must understand.
func frames(tb testing.TB) map[string]testutil.Packet {
	tb.Helper()
	quoted, err := testutil.Packet{Src: dst4, Dst: src4, Proto: layers.IPProtocolUDP, SrcPort: 5000, DstPort: 53}.BuildIP()
	if err != nil {
		tb.Fatal(err)
	}
	payload40 := make([]byte, 40)
	for i := range payload40 {
		payload40[i] = byte(i)
	}
	tcpOpts := []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
		{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
	}
	return map[string]testutil.Packet{
		"ipv4/tcp syn with options": {Src: src4, Dst: dst4, Proto: layers.IPProtocolTCP, SrcPort: 40000, DstPort: 80, TCPOptions: tcpOpts},
		"ipv4/tcp fin ack tos ttl df": {Src: src4, Dst: dst4, Proto: layers.IPProtocolTCP, SrcPort: 1, DstPort: 65535,
			TCPFlags: 0x11, TOS: 0xb8, TTL: 3, DF: true, IPID: 4242, Payload: []byte("bye")},
		"ipv4/udp":          {Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 5353, DstPort: 53, Payload: []byte("hello")},
		"ipv4/icmp echo":    {Src: src4, Dst: dst4, Proto: layers.IPProtocolICMPv4, ICMPID: 0x1234, ICMPSeq: 7},
		"ipv4/icmp reply":   {Src: dst4, Dst: src4, Proto: layers.IPProtocolICMPv4, ICMPReply: true, ICMPID: 0xbeef, ICMPSeq: 1},
		"ipv4/icmp unreach": {Src: dst4, Dst: src4, Proto: layers.IPProtocolICMPv4, ICMPType: 3, ICMPCode: 3, Payload: quoted},
		"ipv4 options/udp": {Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 1000, DstPort: 2000,
			IPv4Options: []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}},
				{OptionType: 1, OptionLength: 1}, {OptionType: 1, OptionLength: 1}, {OptionType: 1, OptionLength: 1}, {OptionType: 0, OptionLength: 1}}},
		"ipv4 first fragment/udp": {Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 7, DstPort: 9,
			Payload: payload40, Fragment: &testutil.Fragment{ID: 77, Offset: 0, Len: 24, More: true}},
		"ipv4 later fragment/udp": {Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 7, DstPort: 9,
			Payload: payload40, Fragment: &testutil.Fragment{ID: 77, Offset: 24}},
		"ipv4/sctp":  {Src: src4, Dst: dst4, Proto: layers.IPProtocolSCTP, Payload: payload40[:12]},
		"ipv6/tcp":   {Src: src6, Dst: dst6, Proto: layers.IPProtocolTCP, SrcPort: 443, DstPort: 50000, TCPFlags: 0x12, TOS: 0x2e, TTL: 255, TCPOptions: tcpOpts},
		"ipv6/udp":   {Src: src6, Dst: dst6, Proto: layers.IPProtocolUDP, SrcPort: 546, DstPort: 547, Payload: []byte("dhcp")},
		"ipv6/echo":  {Src: src6, Dst: dst6, Proto: layers.IPProtocolICMPv6, ICMPID: 0x4321, ICMPSeq: 2},
		"ipv6/reply": {Src: dst6, Dst: src6, Proto: layers.IPProtocolICMPv6, ICMPReply: true, ICMPID: 0x4321, ICMPSeq: 2},
		"ipv6/neighbor solicitation": {Src: src6, Dst: dst6, Proto: layers.IPProtocolICMPv6, ICMPType: 135, TTL: 255,
			Payload: dst6.AsSlice()},
		"ipv6 extension chain/udp": {Src: src6, Dst: dst6, Proto: layers.IPProtocolUDP, SrcPort: 1, DstPort: 2,
			IPv6Ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing,
				layers.IPProtocolIPv6Destination, layers.IPProtocolAH}},
		"ipv6 first fragment/tcp": {Src: src6, Dst: dst6, Proto: layers.IPProtocolTCP, SrcPort: 3, DstPort: 4, Payload: payload40,
			IPv6Ext:  []layers.IPProtocol{layers.IPProtocolIPv6HopByHop},
			Fragment: &testutil.Fragment{ID: 0xabcdef01, Len: 24, More: true}},
		"ipv6 later fragment/tcp": {Src: src6, Dst: dst6, Proto: layers.IPProtocolTCP, SrcPort: 3, DstPort: 4, Payload: payload40,
			Fragment: &testutil.Fragment{ID: 0xabcdef01, Offset: 24}},
		"ipv6/esp":          {Src: src6, Dst: dst6, Proto: layers.IPProtocolESP, Payload: payload40[:16]},
		"802.1q/ipv4/tcp":   {VLANs: []uint16{100}, Src: src4, Dst: dst4, Proto: layers.IPProtocolTCP, SrcPort: 2222, DstPort: 22},
		"qinq/ipv6/udp":     {VLANs: []uint16{200, 4095}, Src: src6, Dst: dst6, Proto: layers.IPProtocolUDP, SrcPort: 4789, DstPort: 4789},
		"qinq/ipv4/icmp":    {VLANs: []uint16{1, 2}, Src: src4, Dst: dst4, Proto: layers.IPProtocolICMPv4, ICMPID: 9},
		"arp":               {EtherType: layers.EthernetTypeARP, Payload: payload40[:28]},
		"802.1q/lldp":       {VLANs: []uint16{7}, EtherType: layers.EthernetTypeLinkLayerDiscovery, Payload: payload40[:20]},
		"ipv4/udp no ports": {Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP},
	}
}

// expect decodes frame with gopacket, independently of the parser under test,
// into what nb_parse must report for it.
func expect(tb testing.TB, frame []byte) parsed {
	tb.Helper()
	pk := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var e parsed
	eth, ok := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !ok {
		tb.Fatalf("gopacket decodes no Ethernet header: %v", pk.ErrorLayer())
	}
	e.EthProto = uint16(eth.EthernetType)
	off, next := len(eth.Contents), eth.EthernetType
	for _, l := range pk.Layers() {
		if d, ok := l.(*layers.Dot1Q); ok {
			tci := uint16(d.Priority)<<13 | d.VLANIdentifier
			if d.DropEligible {
				tci |= 1 << 12
			}
			e.VLANTCI[e.VLANDepth] = tci
			e.VLANDepth++
			off += len(d.Contents)
			next = d.Type
		}
	}
	e.L3Proto, e.L3Off, e.Layers = uint16(next), off, layerL2

	if ip, ok := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		e.Layers |= layerL3
		e.Src, _ = netip.AddrFromSlice(ip.SrcIP)
		e.Dst, _ = netip.AddrFromSlice(ip.DstIP)
		e.IPLen, e.TTL, e.TOS, e.L4Proto = int(ip.Length), ip.TTL, ip.TOS, uint8(ip.Protocol)
		e.FragID, e.FragOff = uint32(ip.Id), int(ip.FragOffset)*8
		if ip.Flags&layers.IPv4MoreFragments != 0 {
			e.Frag |= fragMore
		}
		if ip.Flags&layers.IPv4DontFragment != 0 {
			e.Frag |= fragDont
		}
		if e.Frag&fragMore != 0 || e.FragOff != 0 {
			e.Frag |= fragFragment
		}
		e.L4Off = off + int(ip.IHL)*4
	}
	if ip, ok := pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		e.Layers |= layerL3
		e.Src, _ = netip.AddrFromSlice(ip.SrcIP)
		e.Dst, _ = netip.AddrFromSlice(ip.DstIP)
		e.IPLen, e.TTL, e.TOS = 40+int(ip.Length), ip.HopLimit, ip.TrafficClass
		e.L4Off = off + 40
		next := ip.NextHeader
		for _, l := range pk.Layers() {
			switch x := l.(type) {
			case *layers.IPv6HopByHop:
				next = x.NextHeader
			case *layers.IPv6Routing:
				next = x.NextHeader
			case *layers.IPv6Destination:
				next = x.NextHeader
			case *layers.IPSecAH:
				next = x.NextHeader
			case *layers.IPv6Fragment:
				next = x.NextHeader
				e.FragID, e.FragOff = x.Identification, int(x.FragmentOffset)*8
				if x.MoreFragments {
					e.Frag |= fragMore
				}
				if x.MoreFragments || e.FragOff != 0 {
					e.Frag |= fragFragment
				}
			default:
				continue
			}
			e.L4Off += len(l.LayerContents())
			e.IPv6Ext++
		}
		e.L4Proto = uint8(next)
	}
	if e.Layers&layerL3 == 0 || e.FragOff != 0 {
		return e
	}

	rest := frame[e.L4Off:]
	switch {
	case e.L4Proto == uint8(layers.IPProtocolTCP):
		tcp := gopacket.NewPacket(rest, layers.LayerTypeTCP, gopacket.Default).Layer(layers.LayerTypeTCP).(*layers.TCP)
		e.SrcPort, e.DstPort, e.L4HdrLen = uint16(tcp.SrcPort), uint16(tcp.DstPort), int(tcp.DataOffset)*4
		for i, set := range []bool{tcp.FIN, tcp.SYN, tcp.RST, tcp.PSH, tcp.ACK, tcp.URG, tcp.ECE, tcp.CWR} {
			if set {
				e.TCPFlags |= 1 << i
			}
		}
	case e.L4Proto == uint8(layers.IPProtocolUDP):
		udp := gopacket.NewPacket(rest, layers.LayerTypeUDP, gopacket.Default).Layer(layers.LayerTypeUDP).(*layers.UDP)
		e.SrcPort, e.DstPort, e.L4HdrLen = uint16(udp.SrcPort), uint16(udp.DstPort), 8
	case e.L4Proto == uint8(layers.IPProtocolICMPv4) && e.L3Proto == 0x0800:
		icmp := gopacket.NewPacket(rest, layers.LayerTypeICMPv4, gopacket.Default).Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		e.ICMPType, e.ICMPCode, e.L4HdrLen = icmp.TypeCode.Type(), icmp.TypeCode.Code(), 8
		if e.ICMPType == layers.ICMPv4TypeEchoRequest || e.ICMPType == layers.ICMPv4TypeEchoReply {
			e.ICMPID = icmp.Id
		}
	case e.L4Proto == uint8(layers.IPProtocolICMPv6) && e.L3Proto == 0x86dd:
		pk := gopacket.NewPacket(rest, layers.LayerTypeICMPv6, gopacket.Default)
		icmp := pk.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
		e.ICMPType, e.ICMPCode, e.L4HdrLen = icmp.TypeCode.Type(), icmp.TypeCode.Code(), 8
		if echo, ok := pk.Layer(layers.LayerTypeICMPv6Echo).(*layers.ICMPv6Echo); ok {
			e.ICMPID = echo.Identifier
		}
	default:
		return e
	}
	e.Layers |= layerL4
	return e
}

// truncate is what nb_parse must report for the first n bytes of a frame whose
// whole parse is e: a layer whose header does not fit is not reported at all,
// and the parse stops with NB_ERR_TRUNCATED.
func truncate(e parsed, n int) parsed {
	if e.Layers&layerL4 != 0 && n < e.L4Off+e.L4HdrLen {
		e.Layers &^= layerL4
		e.SrcPort, e.DstPort, e.L4HdrLen, e.TCPFlags, e.ICMPType, e.ICMPCode, e.ICMPID = 0, 0, 0, 0, 0, 0, 0
		e.Err = errTruncated
	}
	if e.Layers&layerL3 != 0 && n < e.L4Off {
		e.Layers &^= layerL3
		e.Src, e.Dst, e.IPLen, e.TTL, e.TOS, e.L4Proto = netip.Addr{}, netip.Addr{}, 0, 0, 0, 0
		e.Frag, e.FragID, e.FragOff, e.IPv6Ext, e.L4Off = 0, 0, 0, 0, 0
		e.Err = errTruncated
	}
	if n < e.L3Off {
		return parsed{Err: errTruncated}
	}
	return e
}

// checkParse runs frame and every prefix of it down to 14 bytes (minRun)
// through the XDP and tc parse programs and compares each result with the
// expectation. For tc, the kernel's BPF_PROG_RUN also refuses an untagged IPv4
// or IPv6 frame shorter than its IP header; XDP covers those lengths.
func checkParse(t *testing.T, objs *parsetestObjects, frame []byte, want parsed) {
	t.Helper()
	minTC := minRun
	if want.VLANDepth == 0 && want.L3Proto == 0x0800 {
		minTC = 14 + 20
	} else if want.VLANDepth == 0 && want.L3Proto == 0x86dd {
		minTC = 14 + 40
	}
	for n := len(frame); n >= minRun; n-- {
		w := truncate(want, n)
		if _, err := runXDP(objs.ParseXdp, frame[:n]); err != nil {
			t.Fatal(err)
		}
		got, err := lastResult(objs.Result)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, got.parsed(), equateAddr); diff != "" {
			t.Fatalf("xdp, first %d of %d bytes (-want +got):\n%s", n, len(frame), diff)
		}
		if n < minTC {
			continue
		}
		if _, err := runTC(objs.ParseTc, frame[:n]); err != nil {
			t.Fatal(err)
		}
		if got, err = lastResult(objs.Result); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, got.parsed(), equateAddr); diff != "" {
			t.Fatalf("tc, first %d of %d bytes (-want +got):\n%s", n, len(frame), diff)
		}
	}
}

func TestParse(t *testing.T) {
	objs := objects(t)
	for name, p := range frames(t) {
		t.Run(name, func(t *testing.T) {
			frame := testutil.BuildPacket(t, p)
			want := expect(t, frame)
			if want.Err != errOK {
				t.Fatalf("expectation for a whole frame has error %d", want.Err)
			}
			checkParse(t, objs, frame, want)
		})
	}
}

// TestParseIP runs the IP packets through nb_parse_ip, behind 14 bytes of
// filler (see parse_ip_xdp), truncated at every byte from 0.
func TestParseIP(t *testing.T) {
	objs := objects(t)
	for name, p := range frames(t) {
		if !p.Src.IsValid() || len(p.VLANs) > 0 {
			continue
		}
		t.Run(name, func(t *testing.T) {
			frame := testutil.BuildPacket(t, p)
			// Same offsets as the Ethernet frame, with no L2 fields.
			want := expect(t, frame)
			want.Layers &^= layerL2
			want.EthProto = 0
			filler := make([]byte, 14)
			for n := len(frame); n >= 14; n-- {
				w := truncate(want, n)
				if w.Layers&layerL3 == 0 {
					w = parsed{Err: errTruncated}
				}
				if _, err := runXDP(objs.ParseIpXdp, append(filler, frame[14:n]...)); err != nil {
					t.Fatal(err)
				}
				got, err := lastResult(objs.Result)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(w, got.parsed(), equateAddr); diff != "" {
					t.Fatalf("first %d of %d IP bytes (-want +got):\n%s", n-14, len(frame)-14, diff)
				}
			}
		})
	}
}

// TestParseErrors feeds frames that are broken or beyond the parser's limits.
func TestParseErrors(t *testing.T) {
	objs := objects(t)
	tcp4 := testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolTCP, SrcPort: 1, DstPort: 2}
	udp6 := testutil.Packet{Src: src6, Dst: dst6, Proto: layers.IPProtocolUDP, SrcPort: 1, DstPort: 2}
	tests := []struct {
		name   string
		frame  func() []byte
		err    uint8
		layers uint8
	}{
		{"ipv4 ihl 4", func() []byte { f := testutil.BuildPacket(t, tcp4); f[14] = 0x44; return f }, errMalformed, layerL2},
		{"ipv4 header says version 6", func() []byte { f := testutil.BuildPacket(t, tcp4); f[14] = 0x65; return f }, errMalformed, layerL2},
		{"ipv4 total length below header", func() []byte {
			f := testutil.BuildPacket(t, tcp4)
			binary.BigEndian.PutUint16(f[16:], 19)
			return f
		}, errMalformed, layerL2},
		{"tcp data offset 4", func() []byte { f := testutil.BuildPacket(t, tcp4); f[14+20+12] = 4 << 4; return f }, errMalformed, layerL2 | layerL3},
		{"tcp data offset past the frame", func() []byte { f := testutil.BuildPacket(t, tcp4); f[14+20+12] = 15 << 4; return f }, errTruncated, layerL2 | layerL3},
		{"ipv4 ihl past the frame", func() []byte {
			f := testutil.BuildPacket(t, tcp4)[:14+20]
			f[14] = 0x4f
			binary.BigEndian.PutUint16(f[16:], 60)
			return f
		}, errTruncated, layerL2},
		{"ipv6 header says version 4", func() []byte { f := testutil.BuildPacket(t, udp6); f[14] = 0x40; return f }, errMalformed, layerL2},
		{"three vlan tags", func() []byte {
			p := tcp4
			p.VLANs = []uint16{1, 2, 3}
			return testutil.BuildPacket(t, p)
		}, errUnsupported, 0},
		{"eight ipv6 extension headers", func() []byte {
			p := udp6
			for range 8 {
				p.IPv6Ext = append(p.IPv6Ext, layers.IPProtocolIPv6Destination)
			}
			return testutil.BuildPacket(t, p)
		}, errOK, layerL2 | layerL3 | layerL4},
		{"nine ipv6 extension headers", func() []byte {
			p := udp6
			for range 9 {
				p.IPv6Ext = append(p.IPv6Ext, layers.IPProtocolIPv6Destination)
			}
			return testutil.BuildPacket(t, p)
		}, errUnsupported, layerL2},
		{"ipv6 extension header length past the frame", func() []byte {
			p := udp6
			p.IPv6Ext = []layers.IPProtocol{layers.IPProtocolIPv6HopByHop}
			f := testutil.BuildPacket(t, p)
			f[14+40+1] = 200
			return f
		}, errTruncated, layerL2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frame := tt.frame()
			for _, run := range []func() error{
				func() error { _, err := runXDP(objs.ParseXdp, frame); return err },
				func() error { _, err := runTC(objs.ParseTc, frame); return err },
			} {
				if err := run(); err != nil {
					t.Fatal(err)
				}
				got, err := lastResult(objs.Result)
				if err != nil {
					t.Fatal(err)
				}
				if got.Err != tt.err || got.Layers != tt.layers {
					t.Errorf("err %d layers %#x, want err %d layers %#x", got.Err, got.Layers, tt.err, tt.layers)
				}
				checkInvariants(t, frame, got)
			}
		})
	}
}

// TestLayout checks the hand-written Go mirror against the C struct's BTF.
func TestLayout(t *testing.T) {
	spec, err := loadParsetest()
	if err != nil {
		t.Fatal(err)
	}
	testutil.RequireLayout(t, spec.Types, "nb_pkt", nbPkt{})
	testutil.RequireLayout(t, spec.Types, "nat_cfg", natCfg{})
}

// TestParseQuoted parses packets as an ICMP error quotes them: the IP header
// and the first 8 bytes of the upper layer, which is enough for ports.
func TestParseQuoted(t *testing.T) {
	objs := objects(t)
	for _, p := range []testutil.Packet{
		{Src: src4, Dst: dst4, Proto: layers.IPProtocolTCP, SrcPort: 40000, DstPort: 80, Payload: []byte("data")},
		{Src: src6, Dst: dst6, Proto: layers.IPProtocolTCP, SrcPort: 443, DstPort: 50000},
		{Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 5353, DstPort: 53, Payload: []byte("data")},
		{Src: src6, Dst: dst6, Proto: layers.IPProtocolICMPv6, ICMPID: 77, Payload: []byte("data")},
	} {
		frame := testutil.BuildPacket(t, p)
		want := expect(t, frame)
		want.Layers &^= layerL2
		want.EthProto = 0
		want.L4HdrLen, want.TCPFlags = 8, 0
		quoted := frame[:want.L4Off+8]
		if _, err := runXDP(objs.ParseQuotedXdp, append(make([]byte, 14), quoted[14:]...)); err != nil {
			t.Fatal(err)
		}
		got, err := lastResult(objs.Result)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got.parsed(), equateAddr); diff != "" {
			t.Errorf("%v %v: quoted parse (-want +got):\n%s", p.Src, p.Proto, diff)
		}
	}
}
