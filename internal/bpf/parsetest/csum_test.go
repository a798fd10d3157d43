package parsetest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/internal/testutil"
)

// TestRewrite runs the address and port rewrite helpers (XDP: direct writes
// with nb_csum.h arithmetic; tc: bpf_l3/l4_csum_replace) and checks that the
// result is byte for byte the frame gopacket builds with the new addresses and
// ports: every checksum recomputed from scratch must match the incremental one.
func TestRewrite(t *testing.T) {
	objs := objects(t)
	nsrc4, ndst4 := netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("10.96.0.10")
	nsrc6, ndst6 := netip.MustParseAddr("2001:db8:ffff::9"), netip.MustParseAddr("fd00:96::a")
	payload := []byte("some payload bytes, odd length!")

	tests := []struct {
		name  string
		pkt   testutil.Packet
		flags uint32
	}{
		{"ipv4/tcp", testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolTCP, SrcPort: 40000, DstPort: 80, TCPFlags: 0x18, Payload: payload}, natSaddr | natDaddr | natSport | natDport},
		{"ipv4/udp", testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 5353, DstPort: 53, Payload: payload}, natSaddr | natDaddr | natSport | natDport},
		{"ipv4/udp dnat only", testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 5353, DstPort: 53, Payload: payload}, natDaddr | natDport},
		{"ipv4/icmp echo", testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolICMPv4, ICMPID: 0x1234, ICMPSeq: 3, Payload: payload}, natSaddr | natDaddr | natSport},
		{"ipv4 options/tcp", testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolTCP, SrcPort: 1, DstPort: 2,
			IPv4Options: []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}}, natSaddr | natDport},
		{"802.1q/ipv4/tcp", testutil.Packet{VLANs: []uint16{10}, Src: src4, Dst: dst4, Proto: layers.IPProtocolTCP, SrcPort: 999, DstPort: 443}, natSaddr | natDaddr | natSport | natDport},
		{"ipv4 first fragment/udp", testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 7, DstPort: 9, Payload: payload,
			Fragment: &testutil.Fragment{ID: 5, Len: 16, More: true}}, natSaddr | natDaddr | natSport | natDport},
		{"ipv4 later fragment/udp", testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 7, DstPort: 9, Payload: payload,
			Fragment: &testutil.Fragment{ID: 5, Offset: 16}}, natSaddr | natDaddr},
		{"ipv6/tcp", testutil.Packet{Src: src6, Dst: dst6, Proto: layers.IPProtocolTCP, SrcPort: 40000, DstPort: 80, Payload: payload}, natSaddr | natDaddr | natSport | natDport},
		{"ipv6/udp", testutil.Packet{Src: src6, Dst: dst6, Proto: layers.IPProtocolUDP, SrcPort: 5353, DstPort: 53, Payload: payload}, natSaddr | natDaddr | natSport | natDport},
		{"ipv6/echo", testutil.Packet{Src: src6, Dst: dst6, Proto: layers.IPProtocolICMPv6, ICMPID: 0x4321, Payload: payload}, natSaddr | natDaddr | natSport},
		{"ipv6 extension chain/udp", testutil.Packet{Src: src6, Dst: dst6, Proto: layers.IPProtocolUDP, SrcPort: 1, DstPort: 2,
			IPv6Ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination}}, natSaddr | natDaddr | natSport | natDport},
		{"qinq/ipv6/tcp", testutil.Packet{VLANs: []uint16{1, 2}, Src: src6, Dst: dst6, Proto: layers.IPProtocolTCP, SrcPort: 3, DstPort: 4}, natDaddr | natDport},
	}
	for _, tt := range tests {
		nsrc, ndst := nsrc4, ndst4
		if tt.pkt.Src.Is6() {
			nsrc, ndst = nsrc6, ndst6
		}
		const nsport, ndport = 61000, 8080
		want := tt.pkt
		if tt.flags&natSaddr != 0 {
			want.Src = nsrc
		}
		if tt.flags&natDaddr != 0 {
			want.Dst = ndst
		}
		if tt.flags&natSport != 0 {
			want.SrcPort, want.ICMPID = nsport, nsport
		}
		if tt.flags&natDport != 0 {
			want.DstPort = ndport
		}
		cfg := natCfg{Flags: tt.flags, Sport: be16{nsport >> 8, nsport & 0xff}, Dport: be16{ndport >> 8, ndport & 0xff}}
		copy(cfg.Saddr[:], nsrc.AsSlice())
		copy(cfg.Daddr[:], ndst.AsSlice())

		for _, hook := range []struct {
			name string
			prog *ebpf.Program
			run  func(*ebpf.Program, []byte) ([]byte, error)
		}{{"xdp", objs.NatXdp, runXDP}, {"tc", objs.NatTc, runTC}} {
			t.Run(hook.name+"/"+tt.name, func(t *testing.T) {
				in := testutil.BuildPacket(t, tt.pkt)
				out, err := rewrite(objs, hook.prog, hook.run, cfg, in)
				if err != nil {
					t.Fatal(err)
				}
				if exp := testutil.BuildPacket(t, want); !bytes.Equal(out, exp) {
					t.Fatalf("rewritten frame differs from the one built with the new values\n got  %x\n want %x", out, exp)
				}
			})
		}
	}
}

// TestRewriteUDPZeroChecksum checks the UDP checksum rules: an IPv4 datagram
// without a checksum (0) keeps none after a rewrite.
func TestRewriteUDPZeroChecksum(t *testing.T) {
	objs := objects(t)
	p := testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 5353, DstPort: 53, Payload: []byte("x")}
	in := testutil.BuildPacket(t, p)
	binary.BigEndian.PutUint16(in[14+20+6:], 0)
	cfg := natCfg{Flags: natDaddr | natDport, Dport: be16{0x1f, 0x90}}
	copy(cfg.Daddr[:], netip.MustParseAddr("10.96.0.10").AsSlice())
	for name, run := range map[string]func() ([]byte, error){
		"xdp": func() ([]byte, error) { return rewrite(objs, objs.NatXdp, runXDP, cfg, in) },
		"tc":  func() ([]byte, error) { return rewrite(objs, objs.NatTc, runTC, cfg, in) },
	} {
		out, err := run()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c := binary.BigEndian.Uint16(out[14+20+6:]); c != 0 {
			t.Errorf("%s: UDP checksum %#04x after rewrite, want 0 (none)", name, c)
		}
		if got := netip.AddrFrom4([4]byte(out[14+16 : 14+20])); got != netip.MustParseAddr("10.96.0.10") {
			t.Errorf("%s: destination %v after rewrite", name, got)
		}
	}
}

// TestRewriteRefusesMissingL4 checks that a port rewrite of a later fragment,
// which has no L4 header, fails instead of writing into the payload.
func TestRewriteRefusesMissingL4(t *testing.T) {
	objs := objects(t)
	p := testutil.Packet{Src: src4, Dst: dst4, Proto: layers.IPProtocolUDP, SrcPort: 7, DstPort: 9, Payload: make([]byte, 32),
		Fragment: &testutil.Fragment{ID: 5, Offset: 16}}
	in := testutil.BuildPacket(t, p)
	cfg := natCfg{Flags: natSport, Sport: be16{1, 2}}
	for name, prog := range map[string]*ebpf.Program{"xdp": objs.NatXdp, "tc": objs.NatTc} {
		run := runXDP
		if name == "tc" {
			run = runTC
		}
		out, err := rewrite(objs, prog, run, cfg, in)
		if err == nil || !bytes.Equal(out, in) {
			t.Errorf("%s: port rewrite of a later fragment: err %v, frame changed %v", name, err, !bytes.Equal(out, in))
		}
	}
}

// rewrite configures and runs a nat program, returning the frame it produced
// and an error if a rewrite step failed.
func rewrite(objs *parsetestObjects, prog *ebpf.Program, run func(*ebpf.Program, []byte) ([]byte, error), cfg natCfg, in []byte) ([]byte, error) {
	if err := objs.Nat.Put(uint32(0), cfg); err != nil {
		return nil, fmt.Errorf("configure nat: %w", err)
	}
	if err := objs.NatStatus.Put(uint32(0), int32(-1)); err != nil {
		return nil, fmt.Errorf("clear status: %w", err)
	}
	out, err := run(prog, append([]byte(nil), in...))
	if err != nil {
		return nil, err
	}
	var status int32
	if err := objs.NatStatus.Lookup(uint32(0), &status); err != nil {
		return nil, fmt.Errorf("read status: %w", err)
	}
	if status != 0 {
		return out, fmt.Errorf("rewrite failed: status %d (step %d, error %d)", status, status/1000, -(status % 1000))
	}
	return out, nil
}
