package parsetest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/testutil"
)

// checkInvariants checks that what the parser reported for frame is consistent
// and lies inside the frame: every offset and length within it, and every value
// equal to the frame's bytes at the offset reported for it.
func checkInvariants(tb testing.TB, frame []byte, p nbPkt) {
	tb.Helper()
	n := len(frame)
	fail := func(format string, args ...any) {
		tb.Helper()
		tb.Fatalf("frame %x: "+format+"\nparsed: %+v", append([]any{frame}, append(args, p)...)...)
	}
	if p.Err > errUnsupported {
		fail("err %d is not a known value", p.Err)
	}
	if p.Layers&^(layerL2|layerL3|layerL4) != 0 {
		fail("layers %#x has unknown bits", p.Layers)
	}
	if p.Layers&layerL4 != 0 && p.Layers&layerL3 == 0 || p.Layers&layerL3 != 0 && p.Layers&layerL2 == 0 {
		fail("layers %#x: an upper layer without the one below", p.Layers)
	}
	if p.Layers == 0 {
		if p != (nbPkt{Err: p.Err}) {
			fail("fields set without any layer")
		}
		if p.Err == errOK {
			fail("no layer parsed but no error")
		}
		return
	}

	// L2
	depth := int(p.VLANDepth)
	if depth > 2 || int(p.L3Off) != 14+4*depth || int(p.L3Off) > n {
		fail("l3_off %d with %d VLAN tags in %d bytes", p.L3Off, depth, n)
	}
	if p.EthProto != binary.BigEndian.Uint16(frame[12:]) {
		fail("eth_proto %#x, frame says %#x", p.EthProto, frame[12:14])
	}
	for i := range depth {
		if p.VLANTCI[i] != binary.BigEndian.Uint16(frame[14+4*i:]) {
			fail("vlan %d tci %#x, frame says %x", i, p.VLANTCI[i], frame[14+4*i:16+4*i])
		}
	}
	if p.L3Proto != binary.BigEndian.Uint16(frame[p.L3Off-2:]) {
		fail("l3_proto %#x, frame says %x", p.L3Proto, frame[p.L3Off-2:p.L3Off])
	}

	if p.Layers&layerL3 == 0 {
		if p.L4Off != 0 || p.Saddr != ([16]byte{}) || p.Daddr != ([16]byte{}) || p.L4Proto != 0 || p.IPLen != 0 {
			fail("L3 fields set without L3")
		}
		if p.L3Proto == 0x0800 || p.L3Proto == 0x86dd {
			if p.Err == errOK {
				fail("IP frame without L3 and no error")
			}
		}
		return
	}
	// L3
	l3, l4 := int(p.L3Off), int(p.L4Off)
	if l4 > n {
		fail("l4_off %d past the %d-byte frame", l4, n)
	}
	switch p.L3Proto {
	case 0x0800:
		if frame[l3]>>4 != 4 || l4-l3 != int(frame[l3]&0xf)*4 {
			fail("IPv4 header %d bytes, frame's IHL says %d", l4-l3, frame[l3]&0xf)
		}
		if !bytes.Equal(p.Saddr[:4], frame[l3+12:l3+16]) || !bytes.Equal(p.Daddr[:4], frame[l3+16:l3+20]) ||
			[12]byte(p.Saddr[4:]) != [12]byte{} || [12]byte(p.Daddr[4:]) != [12]byte{} {
			fail("IPv4 addresses differ from the frame's")
		}
		if p.L4Proto != frame[l3+9] || p.TTL != frame[l3+8] {
			fail("IPv4 protocol/ttl differ from the frame's")
		}
	case 0x86dd:
		if frame[l3]>>4 != 6 || l4-l3 < 40 || (l4-l3-40)/8 < int(p.IPv6Ext) {
			fail("IPv6 header %d bytes with %d extension headers", l4-l3, p.IPv6Ext)
		}
		if !bytes.Equal(p.Saddr[:], frame[l3+8:l3+24]) || !bytes.Equal(p.Daddr[:], frame[l3+24:l3+40]) {
			fail("IPv6 addresses differ from the frame's")
		}
		if p.TTL != frame[l3+7] || (p.IPv6Ext == 0 && p.L4Proto != frame[l3+6]) {
			fail("IPv6 hop limit/next header differ from the frame's")
		}
	default:
		fail("L3 parsed for EtherType %#x", p.L3Proto)
	}
	if p.FragOff != 0 && p.Layers&layerL4 != 0 {
		fail("L4 parsed in a later fragment")
	}

	if p.Layers&layerL4 == 0 {
		if p.Sport != (be16{}) || p.Dport != (be16{}) || p.L4HdrLen != 0 || p.TCPFlags != 0 || p.ICMPType != 0 {
			fail("L4 fields set without L4")
		}
		return
	}
	// L4
	if p.L4HdrLen < 8 || l4+int(p.L4HdrLen) > n {
		fail("L4 header of %d bytes at %d in %d bytes", p.L4HdrLen, l4, n)
	}
	switch p.L4Proto {
	case 6, 17:
		if !bytes.Equal(p.Sport[:], frame[l4:l4+2]) || !bytes.Equal(p.Dport[:], frame[l4+2:l4+4]) {
			fail("ports differ from the frame's")
		}
		if p.L4Proto == 6 && (int(p.L4HdrLen) != int(frame[l4+12]>>4)*4 || p.TCPFlags != frame[l4+13]) {
			fail("TCP header length/flags differ from the frame's")
		}
	case 1, 58:
		if p.ICMPType != frame[l4] || p.ICMPCode != frame[l4+1] {
			fail("ICMP type/code differ from the frame's")
		}
		if p.ICMPID != (be16{}) && !bytes.Equal(p.ICMPID[:], frame[l4+4:l4+6]) {
			fail("ICMP id differs from the frame's")
		}
	default:
		fail("L4 parsed for protocol %d", p.L4Proto)
	}
}

// FuzzParse feeds arbitrary bytes to the parser (XDP and tc) and checks that
// nothing it reports lies beyond the frame or disagrees with it, and that both
// hooks agree. The seeds are the frames of TestParse and their truncations.
func FuzzParse(f *testing.F) {
	objs := objects(f)
	for _, p := range frames(f) {
		frame := testutil.BuildPacket(f, p)
		f.Add(frame)
		f.Add(frame[:len(frame)/2])
	}
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0x81, 0x00}, 20))
	// IPv6 with a hop-by-hop header claiming 2 KiB.
	f.Add(append(append(make([]byte, 12), 0x86, 0xdd, 0x60, 0, 0, 0, 0, 8, 0, 64), append(make([]byte, 32), 17, 255)...))

	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < minRun || len(frame) > 3000 {
			return // outside what BPF_PROG_RUN takes for XDP
		}
		if _, err := runXDP(objs.ParseXdp, frame); err != nil {
			t.Fatal(err)
		}
		xdp, err := lastResult(objs.Result)
		if err != nil {
			t.Fatal(err)
		}
		checkInvariants(t, frame, xdp)
		if _, err := runTC(objs.ParseTc, frame); err != nil {
			if errors.Is(err, unix.EINVAL) && tcRefuses(frame) {
				return
			}
			t.Fatal(err)
		}
		tc, err := lastResult(objs.Result)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(xdp, tc); diff != "" {
			t.Fatalf("xdp and tc parse %x differently (-xdp +tc):\n%s", frame, diff)
		}
	})
}

// tcRefuses reports whether BPF_PROG_RUN refuses frame for tc: an untagged
// IPv4 or IPv6 frame too short for its IP header.
func tcRefuses(frame []byte) bool {
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		return len(frame) < 14+20
	case 0x86dd:
		return len(frame) < 14+40
	}
	return false
}
