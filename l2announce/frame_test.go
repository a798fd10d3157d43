package l2announce

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket/layers"
)

func holdsOnly(addrs ...netip.Addr) func(netip.Addr) bool {
	return func(a netip.Addr) bool {
		for _, h := range addrs {
			if a == h {
				return true
			}
		}
		return false
	}
}

func TestHandleFrameARP(t *testing.T) {
	holds := holdsOnly(vip4, vip6)
	tests := []struct {
		name  string
		frame []byte
		want  verdict
	}{
		{"request for held VIP", arpRequest(t, clientMAC, client4, vip4), verdictReply},
		{"probe with sender 0.0.0.0", arpRequest(t, clientMAC, netip.IPv4Unspecified(), vip4), verdictReply},
		{"request for another address", arpRequest(t, clientMAC, client4, netip.MustParseAddr("192.0.2.11")), verdictIgnored},
		{"our own request", arpRequest(t, nodeMAC, client4, vip4), verdictIgnored},
		{"reply for held VIP", arpFrameOf(t, layers.ARPReply, clientMAC, client4, nodeMAC, vip4, nodeMAC), verdictIgnored},
		{"gratuitous from another node", arpFrameOf(t, layers.ARPRequest, node2MAC, vip4, make(net.HardwareAddr, 6), vip4, layers.EthernetBroadcast), verdictConflict},
		{"reply from another node claiming VIP", arpFrameOf(t, layers.ARPReply, node2MAC, vip4, clientMAC, client4, clientMAC), verdictConflict},
		{"multicast sender hardware address", func() []byte {
			f := arpRequest(t, clientMAC, client4, vip4)
			f[ethHeaderLen+8] = 0x01 // Sender hardware address: group bit.
			return f
		}(), verdictMalformed},
		{"multicast Ethernet source", func() []byte {
			f := arpRequest(t, clientMAC, client4, vip4)
			f[6] |= 1
			return f
		}(), verdictMalformed},
		{"truncated", arpRequest(t, clientMAC, client4, vip4)[:ethHeaderLen+27], verdictMalformed},
		{"short header", arpRequest(t, clientMAC, client4, vip4)[:ethHeaderLen+5], verdictMalformed},
		{"hardware length 16", func() []byte {
			f := arpRequest(t, clientMAC, client4, vip4)
			f[ethHeaderLen+4] = 16
			return f
		}(), verdictMalformed},
		{"protocol IPv6", func() []byte {
			f := arpRequest(t, clientMAC, client4, vip4)
			f[ethHeaderLen+2], f[ethHeaderLen+3] = 0x86, 0xdd
			return f
		}(), verdictIgnored},
		{"runt", []byte{1, 2, 3}, verdictMalformed},
		{"empty", nil, verdictMalformed},
		{"VLAN tagged", func() []byte {
			f := arpRequest(t, clientMAC, client4, vip4)
			f[12], f[13] = 0x81, 0x00
			return f
		}(), verdictIgnored},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handleFrame(tt.frame, nodeMAC, holds)
			if res.verdict != tt.want {
				t.Fatalf("verdict %d, want %d", res.verdict, tt.want)
			}
			if (res.reply != nil) != (tt.want == verdictReply) {
				t.Fatalf("reply %x with verdict %d", res.reply, res.verdict)
			}
		})
	}
}

func TestARPReply(t *testing.T) {
	res := handleFrame(arpRequest(t, clientMAC, client4, vip4), nodeMAC, holdsOnly(vip4))
	if res.verdict != verdictReply {
		t.Fatalf("verdict %d", res.verdict)
	}
	eth, a := decodedARP(t, res.reply)
	got := struct {
		EthSrc, EthDst, Dst, SHA, THA string
		Op                            uint16
		SPA, TPA                      string
	}{
		eth.SrcMAC.String(), eth.DstMAC.String(), res.dst.String(),
		net.HardwareAddr(a.SourceHwAddress).String(), net.HardwareAddr(a.DstHwAddress).String(),
		a.Operation, netip.AddrFrom4([4]byte(a.SourceProtAddress)).String(), netip.AddrFrom4([4]byte(a.DstProtAddress)).String(),
	}
	want := got
	want.EthSrc, want.EthDst, want.Dst = nodeMAC.String(), clientMAC.String(), clientMAC.String()
	want.SHA, want.THA, want.Op = nodeMAC.String(), clientMAC.String(), layers.ARPReply
	want.SPA, want.TPA = vip4.String(), client4.String()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("reply (-want +got):\n%s", diff)
	}
	if len(res.reply) < 60 {
		t.Errorf("reply of %d bytes is shorter than an Ethernet frame's minimum", len(res.reply))
	}
}

func TestHandleFrameNDP(t *testing.T) {
	holds := holdsOnly(vip4, vip6)
	ns := neighborSolicitation(t, clientMAC, client6, vip6)
	mutate := func(f func([]byte)) []byte {
		b := bytes.Clone(ns)
		f(b)
		return b
	}
	const ip, icmp = ethHeaderLen, ethHeaderLen + ipv6HeaderLen
	tests := []struct {
		name  string
		frame []byte
		want  verdict
	}{
		{"solicitation for held VIP", ns, verdictReply},
		{"DAD for held VIP", neighborSolicitation(t, clientMAC, netip.IPv6Unspecified(), vip6), verdictReply},
		{"solicitation for another address", neighborSolicitation(t, clientMAC, client6, netip.MustParseAddr("2001:db8::11")), verdictIgnored},
		{"our own solicitation", neighborSolicitation(t, nodeMAC, client6, vip6), verdictIgnored},
		{"bad checksum", mutate(func(b []byte) { b[icmp+2] ^= 0xff }), verdictMalformed},
		{"hop limit 64", mutate(func(b []byte) { b[ip+7] = 64 }), verdictMalformed},
		{"code 1", mutate(func(b []byte) { b[icmp+1] = 1 }), verdictMalformed},
		{"payload length beyond frame", mutate(func(b []byte) { b[ip+4] = 0xff }), verdictMalformed},
		{"version 4", mutate(func(b []byte) { b[ip] = 0x45 }), verdictMalformed},
		{"truncated IPv6 header", ns[:ip+39], verdictMalformed},
		{"UDP", mutate(func(b []byte) { b[ip+6] = 17 }), verdictIgnored},
		{"echo request", mutate(func(b []byte) { b[icmp] = 128 }), verdictIgnored},
		{"to another unicast address", mutate(func(b []byte) {
			b[ip+24] = 0x20 // Destination 2001:db8::... no longer the solicited-node address.
			b[ip+25] = 0x01
			fixChecksum(b)
		}), verdictIgnored},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handleFrame(tt.frame, nodeMAC, holds)
			if res.verdict != tt.want {
				t.Fatalf("verdict %d, want %d", res.verdict, tt.want)
			}
			if (res.reply != nil) != (tt.want == verdictReply) {
				t.Fatalf("reply %x with verdict %d", res.reply, res.verdict)
			}
		})
	}
}

// fixChecksum recomputes the ICMPv6 checksum of the neighbour solicitation
// frame b, over the IPv6 payload length if it fits in b.
func fixChecksum(b []byte) {
	ip := b[ethHeaderLen:]
	msg := ip[ipv6HeaderLen:]
	if n := int(ip[4])<<8 | int(ip[5]); n >= icmpHeaderLen && n <= len(msg) {
		msg = msg[:n]
	}
	msg[2], msg[3] = 0, 0
	sum := icmpv6Checksum(netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40])), msg)
	msg[2], msg[3] = byte(sum>>8), byte(sum)
}

func TestNeighborAdvertisement(t *testing.T) {
	for _, tt := range []struct {
		name          string
		src           netip.Addr
		wantDst       netip.Addr
		wantEthDst    net.HardwareAddr
		wantSolicited bool
	}{
		{"solicited", client6, client6, clientMAC, true},
		{"DAD", netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1"), ethAllNodes, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := handleFrame(neighborSolicitation(t, clientMAC, tt.src, vip6), nodeMAC, holdsOnly(vip6))
			if res.verdict != verdictReply {
				t.Fatalf("verdict %d", res.verdict)
			}
			eth, ip, na := decodedNA(t, res.reply)
			var tlla net.HardwareAddr
			for _, o := range na.Options {
				if o.Type == layers.ICMPv6OptTargetAddress {
					tlla = o.Data
				}
			}
			got := []string{eth.SrcMAC.String(), eth.DstMAC.String(), ip.SrcIP.String(), ip.DstIP.String(),
				na.TargetAddress.String(), tlla.String()}
			want := []string{nodeMAC.String(), tt.wantEthDst.String(), vip6.String(), tt.wantDst.String(),
				vip6.String(), nodeMAC.String()}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("advertisement (-want +got):\n%s", diff)
			}
			if na.Solicited() != tt.wantSolicited || !na.Override() || na.Router() {
				t.Errorf("flags S=%v O=%v R=%v, want S=%v O=true R=false", na.Solicited(), na.Override(), na.Router(), tt.wantSolicited)
			}
		})
	}
}

func TestAnnouncement(t *testing.T) {
	frames, dst, err := announcement(nodeMAC, vip4)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 2 || !bytes.Equal(dst, ethBroadcast) {
		t.Fatalf("%d frames to %s, want 2 to broadcast", len(frames), dst)
	}
	for i, op := range []uint16{layers.ARPRequest, layers.ARPReply} {
		eth, a := decodedARP(t, frames[i])
		if a.Operation != op || !bytes.Equal(a.SourceProtAddress, vip4.AsSlice()) || !bytes.Equal(a.DstProtAddress, vip4.AsSlice()) ||
			!bytes.Equal(a.SourceHwAddress, nodeMAC) || !bytes.Equal(eth.DstMAC, ethBroadcast) {
			t.Errorf("frame %d is not a gratuitous ARP of operation %d: %+v", i, op, a)
		}
		// Linux takes a gratuitous reply only if its target hardware
		// address is the sender's.
		if op == layers.ARPReply && !bytes.Equal(a.DstHwAddress, nodeMAC) {
			t.Errorf("gratuitous reply has target hardware address %s", net.HardwareAddr(a.DstHwAddress))
		}
	}

	frames, dst, err = announcement(nodeMAC, vip6)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 1 || !bytes.Equal(dst, ethAllNodes) {
		t.Fatalf("%d frames to %s, want 1 to all nodes", len(frames), dst)
	}
	_, ip, na := decodedNA(t, frames[0])
	if na.Solicited() || !na.Override() || ip.DstIP.String() != "ff02::1" || na.TargetAddress.String() != vip6.String() {
		t.Errorf("not an unsolicited override advertisement of %s to all nodes: %+v", vip6, na)
	}
}

func TestSolicitedNode(t *testing.T) {
	got := solicitedNode(netip.MustParseAddr("2001:db8::1:2345:6789"))
	if want := netip.MustParseAddr("ff02::1:ff45:6789"); got != want {
		t.Errorf("solicited-node address %s, want %s", got, want)
	}
}

func TestCheckVIP(t *testing.T) {
	for _, s := range []string{"0.0.0.0", "::", "127.0.0.1", "::1", "224.0.0.1", "ff02::1", "255.255.255.255", "fe80::1%eth0"} {
		if _, err := checkVIP(netip.MustParseAddr(s)); err == nil {
			t.Errorf("checkVIP(%s) accepted it", s)
		}
	}
	if _, err := checkVIP(netip.Addr{}); err == nil {
		t.Error("checkVIP accepted the zero Addr")
	}
	got, err := checkVIP(netip.MustParseAddr("::ffff:192.0.2.1"))
	if err != nil || got != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("checkVIP(::ffff:192.0.2.1) = %s, %v; want 192.0.2.1", got, err)
	}
}
