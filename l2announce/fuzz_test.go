package l2announce

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// FuzzHandleFrame feeds arbitrary frames to the frame handler: it must never
// panic, and it may reply only to a request for a held VIP, from the
// interface's address, with a frame that decodes as the right answer.
func FuzzHandleFrame(f *testing.F) {
	f.Add(arpRequest(f, clientMAC, client4, vip4))
	f.Add(arpRequest(f, clientMAC, netip.IPv4Unspecified(), vip4))
	f.Add(arpFrameOf(f, layers.ARPRequest, node2MAC, vip4, make(net.HardwareAddr, 6), vip4, layers.EthernetBroadcast))
	f.Add(neighborSolicitation(f, clientMAC, client6, vip6))
	f.Add(neighborSolicitation(f, clientMAC, netip.IPv6Unspecified(), vip6))
	frames, _, _ := announcement(node2MAC, vip6)
	f.Add(frames[0])
	f.Add([]byte{})
	f.Add(make([]byte, 14))

	holds := holdsOnly(vip4, vip6)
	f.Fuzz(func(t *testing.T, frame []byte) {
		checkHandleFrame(t, frame, holds)
		// Again with a right ICMPv6 checksum, so that the fuzzer gets past
		// it into the neighbour discovery parser.
		if len(frame) >= ethHeaderLen+ipv6HeaderLen+icmpHeaderLen {
			fixed := bytes.Clone(frame)
			fixChecksum(fixed)
			checkHandleFrame(t, fixed, holds)
		}
	})
}

// checkHandleFrame checks what handleFrame does with frame.
func checkHandleFrame(t *testing.T, frame []byte, holds func(netip.Addr) bool) {
	{
		in := bytes.Clone(frame)
		res := handleFrame(frame, nodeMAC, holds)
		if !bytes.Equal(in, frame) {
			t.Fatal("handleFrame modified the frame")
		}
		if res.verdict != verdictReply {
			if res.reply != nil {
				t.Fatalf("reply with verdict %d", res.verdict)
			}
			return
		}
		// Unicast, except the answer to duplicate address detection.
		if !holds(res.vip) || !unicastMAC(res.dst) && !(res.vip.Is6() && bytes.Equal(res.dst, ethAllNodes)) {
			t.Fatalf("reply for %s to %s", res.vip, res.dst)
		}
		p := gopacket.NewPacket(res.reply, layers.LayerTypeEthernet, gopacket.Default)
		eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if eth == nil || !bytes.Equal(eth.SrcMAC, nodeMAC) {
			t.Fatalf("reply not from the interface: % x", res.reply)
		}
		if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
			if a.Operation != layers.ARPReply || !bytes.Equal(a.SourceProtAddress, res.vip.AsSlice()) ||
				!bytes.Equal(a.SourceHwAddress, nodeMAC) || !res.vip.Is4() {
				t.Fatalf("bad ARP reply %+v", a)
			}
			return
		}
		na, ok := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
		if !ok || !bytes.Equal(na.TargetAddress, res.vip.AsSlice()) || !na.Override() {
			t.Fatalf("bad neighbour advertisement: % x", res.reply)
		}
	}
}
