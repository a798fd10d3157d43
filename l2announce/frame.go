package l2announce

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// EtherTypes of the frames a Responder reads and writes.
const (
	etherTypeARP  = uint16(ethernet.EtherTypeARP)
	etherTypeIPv6 = uint16(ethernet.EtherTypeIPv6)
)

// Sizes and constants of the headers the responder parses itself.
const (
	ethHeaderLen  = 14
	arpPacketLen  = 28 // Ethernet/IPv4 ARP: 8 fixed bytes, 2*6 MAC, 2*4 IPv4.
	ipv6HeaderLen = 40
	icmpv6Proto   = 58
	ndpHopLimit   = 255 // RFC 4861: NDP messages with another hop limit are dropped.
	icmpHeaderLen = 4

	arpHardwareEthernet = 1
	arpProtocolIPv4     = 0x0800

	icmpTypeNS = 135
	icmpTypeNA = 136
)

// Ethernet destinations of announcements.
var (
	ethBroadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	ethAllNodes  = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1} // ff02::1
	ipAllNodes   = netip.MustParseAddr("ff02::1")
)

// verdict classifies a received frame.
type verdict int

const (
	// verdictIgnored: well formed but not a question this node answers
	// (another address, another operation, its own frame).
	verdictIgnored verdict = iota
	// verdictMalformed: too short, inconsistent lengths or fields, bad
	// checksum, or fields no valid request carries.
	verdictMalformed
	// verdictConflict: another station claims a VIP this node holds.
	verdictConflict
	// verdictReply: a request for a held VIP; reply is the answer.
	verdictReply
)

// frameResult is what [handleFrame] decided about one received frame.
type frameResult struct {
	verdict verdict
	// vip is the address the frame asked about or claimed, if it got that
	// far.
	vip netip.Addr
	// requester is the Ethernet source of a request, for rate limiting.
	requester net.HardwareAddr
	// reply is the frame to send with verdictReply, addressed to dst.
	reply []byte
	dst   net.HardwareAddr
}

// handleFrame decides what to do with frame, received on an interface whose
// hardware address is mac: answer it (an ARP request or a neighbour
// solicitation for a VIP that holds reports held), or not. It never fails:
// anything it cannot parse is verdictMalformed, with no reply.
func handleFrame(frame []byte, mac net.HardwareAddr, holds func(netip.Addr) bool) frameResult {
	if len(frame) < ethHeaderLen {
		return frameResult{verdict: verdictMalformed}
	}
	src := net.HardwareAddr(frame[6:12])
	if bytes.Equal(src, mac) {
		return frameResult{verdict: verdictIgnored} // Our own frame, looped back.
	}
	if !unicastMAC(src) {
		return frameResult{verdict: verdictMalformed}
	}
	payload := frame[ethHeaderLen:]
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeARP:
		return handleARP(payload, src, mac, holds)
	case etherTypeIPv6:
		return handleIPv6(payload, src, mac, holds)
	default:
		// VLAN-tagged or another protocol: the interface of the VLAN is
		// the one to select.
		return frameResult{verdict: verdictIgnored}
	}
}

// handleARP handles the ARP packet b, in a frame from the station src.
func handleARP(b []byte, src, mac net.HardwareAddr, holds func(netip.Addr) bool) frameResult {
	if len(b) < 8 {
		return frameResult{verdict: verdictMalformed}
	}
	if binary.BigEndian.Uint16(b[0:2]) != arpHardwareEthernet || binary.BigEndian.Uint16(b[2:4]) != arpProtocolIPv4 {
		return frameResult{verdict: verdictIgnored}
	}
	if b[4] != 6 || b[5] != 4 || len(b) < arpPacketLen {
		return frameResult{verdict: verdictMalformed}
	}
	var p arp.Packet
	if err := p.UnmarshalBinary(b[:arpPacketLen]); err != nil {
		return frameResult{verdict: verdictMalformed}
	}

	// Another station that uses a held VIP as its address: a gratuitous
	// ARP or a reply from a node that believes it holds the VIP, or a host
	// configured with it. Report, never answer.
	if holds(p.SenderIP) && !bytes.Equal(p.SenderHardwareAddr, mac) {
		return frameResult{verdict: verdictConflict, vip: p.SenderIP, requester: src}
	}
	if p.Operation != arp.OperationRequest || p.SenderIP == p.TargetIP || !holds(p.TargetIP) {
		return frameResult{verdict: verdictIgnored, vip: p.TargetIP}
	}
	if !unicastMAC(p.SenderHardwareAddr) {
		return frameResult{verdict: verdictMalformed, vip: p.TargetIP}
	}
	// The sender address may be 0.0.0.0: an RFC 5227 probe, which the
	// owner of the address answers like any request.
	if !p.SenderIP.Is4() || p.SenderIP.IsMulticast() {
		return frameResult{verdict: verdictMalformed, vip: p.TargetIP}
	}

	reply, err := arpFrame(arp.OperationReply, mac, p.TargetIP, p.SenderHardwareAddr, p.SenderIP, p.SenderHardwareAddr)
	if err != nil {
		return frameResult{verdict: verdictMalformed, vip: p.TargetIP}
	}
	return frameResult{verdict: verdictReply, vip: p.TargetIP, requester: src, reply: reply, dst: p.SenderHardwareAddr}
}

// handleIPv6 handles the IPv6 packet b, in a frame from the station src: a
// neighbour solicitation is answered, a neighbour advertisement may be a
// conflict, anything else is ignored.
func handleIPv6(b []byte, src, mac net.HardwareAddr, holds func(netip.Addr) bool) frameResult {
	if len(b) < ipv6HeaderLen || b[0]>>4 != 6 {
		return frameResult{verdict: verdictMalformed}
	}
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	if ipv6HeaderLen+plen > len(b) {
		return frameResult{verdict: verdictMalformed}
	}
	if b[6] != icmpv6Proto {
		// Extension headers before ICMPv6 are not valid in NDP either
		// (RFC 6980 forbids fragments; nothing else is needed).
		return frameResult{verdict: verdictIgnored}
	}
	msg := b[ipv6HeaderLen : ipv6HeaderLen+plen]
	if len(msg) < icmpHeaderLen {
		return frameResult{verdict: verdictMalformed}
	}
	if msg[0] != icmpTypeNS && msg[0] != icmpTypeNA {
		return frameResult{verdict: verdictIgnored}
	}
	ipSrc := netip.AddrFrom16([16]byte(b[8:24]))
	ipDst := netip.AddrFrom16([16]byte(b[24:40]))
	if b[7] != ndpHopLimit || msg[1] != 0 || icmpv6Checksum(ipSrc, ipDst, msg) != 0 {
		return frameResult{verdict: verdictMalformed}
	}
	m, err := ndp.ParseMessage(msg)
	if err != nil {
		return frameResult{verdict: verdictMalformed}
	}

	switch m := m.(type) {
	case *ndp.NeighborSolicitation:
		return handleNS(m, ipSrc, ipDst, src, mac, holds)
	case *ndp.NeighborAdvertisement:
		target := m.TargetAddress
		if !holds(target) {
			return frameResult{verdict: verdictIgnored, vip: target}
		}
		// An advertisement for a held VIP from another station.
		return frameResult{verdict: verdictConflict, vip: target, requester: src}
	}
	return frameResult{verdict: verdictIgnored}
}

// handleNS answers the neighbour solicitation m, sent from ipSrc to ipDst by
// the station src, following the validation of RFC 4861 section 7.1.1.
func handleNS(m *ndp.NeighborSolicitation, ipSrc, ipDst netip.Addr, src, mac net.HardwareAddr, holds func(netip.Addr) bool) frameResult {
	target := m.TargetAddress
	if !target.Is6() || target.Is4In6() || target.IsMulticast() || ipSrc.IsMulticast() {
		return frameResult{verdict: verdictMalformed, vip: target}
	}
	var sourceLLA net.HardwareAddr
	for _, o := range m.Options {
		if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Source {
			sourceLLA = lla.Addr
		}
	}
	dad := ipSrc.IsUnspecified()
	if dad && (ipDst != solicitedNode(target) || sourceLLA != nil) {
		return frameResult{verdict: verdictMalformed, vip: target}
	}
	if ipDst != target && ipDst != solicitedNode(target) {
		return frameResult{verdict: verdictIgnored, vip: target}
	}
	if !holds(target) {
		return frameResult{verdict: verdictIgnored, vip: target}
	}

	// Duplicate address detection by another station is answered to all
	// nodes, unsolicited (RFC 4861 section 7.2.4); anything else to the
	// soliciting station.
	naDst, ethDst, solicited := ipSrc, src, true
	switch {
	case dad:
		naDst, ethDst, solicited = ipAllNodes, ethAllNodes, false
	case sourceLLA != nil:
		if !unicastMAC(sourceLLA) {
			return frameResult{verdict: verdictMalformed, vip: target}
		}
		ethDst = sourceLLA
	}
	reply, err := naFrame(mac, target, naDst, ethDst, solicited)
	if err != nil {
		return frameResult{verdict: verdictMalformed, vip: target}
	}
	return frameResult{verdict: verdictReply, vip: target, requester: src, reply: reply, dst: ethDst}
}

// arpFrame returns an Ethernet frame to ethDst, from srcMAC, holding an ARP
// packet of operation op.
func arpFrame(op arp.Operation, srcMAC net.HardwareAddr, srcIP netip.Addr, dstMAC net.HardwareAddr, dstIP netip.Addr, ethDst net.HardwareAddr) ([]byte, error) {
	p, err := arp.NewPacket(op, srcMAC, srcIP, dstMAC, dstIP)
	if err != nil {
		return nil, err
	}
	pb, err := p.MarshalBinary()
	if err != nil {
		return nil, err
	}
	f := ethernet.Frame{Destination: ethDst, Source: srcMAC, EtherType: ethernet.EtherTypeARP, Payload: pb}
	return f.MarshalBinary()
}

// naFrame returns an Ethernet frame to ethDst, from mac, holding a neighbour
// advertisement from vip to ipDst that maps vip to mac and overrides what
// its receivers have cached.
func naFrame(mac net.HardwareAddr, vip, ipDst netip.Addr, ethDst net.HardwareAddr, solicited bool) ([]byte, error) {
	na := &ndp.NeighborAdvertisement{
		Solicited:     solicited,
		Override:      true,
		TargetAddress: vip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}},
	}
	// The VIP is the source: the node needs no IPv6 address of its own.
	msg, err := ndp.MarshalMessageChecksum(na, vip, ipDst)
	if err != nil {
		return nil, err
	}
	pkt := make([]byte, ipv6HeaderLen, ipv6HeaderLen+len(msg))
	pkt[0] = 6 << 4
	binary.BigEndian.PutUint16(pkt[4:6], uint16(len(msg)))
	pkt[6] = icmpv6Proto
	pkt[7] = ndpHopLimit
	src16, dst16 := vip.As16(), ipDst.As16()
	copy(pkt[8:24], src16[:])
	copy(pkt[24:40], dst16[:])
	pkt = append(pkt, msg...)
	f := ethernet.Frame{Destination: ethDst, Source: mac, EtherType: ethernet.EtherTypeIPv6, Payload: pkt}
	return f.MarshalBinary()
}

// announcement returns the frames that tell a LAN that vip is at mac, all to
// be sent to the returned Ethernet destination: for IPv4 a gratuitous ARP
// request (the announcement of RFC 5227) and a gratuitous ARP reply (which
// some stacks prefer; Linux requires the target hardware address of a
// gratuitous reply to equal the sender's), for IPv6 an unsolicited neighbour
// advertisement with the override flag to all nodes (RFC 4861 section
// 7.2.6).
func announcement(mac net.HardwareAddr, vip netip.Addr) ([][]byte, net.HardwareAddr, error) {
	if vip.Is4() {
		req, err := arpFrame(arp.OperationRequest, mac, vip, make(net.HardwareAddr, 6), vip, ethBroadcast)
		if err != nil {
			return nil, nil, err
		}
		reply, err := arpFrame(arp.OperationReply, mac, vip, mac, vip, ethBroadcast)
		if err != nil {
			return nil, nil, err
		}
		return [][]byte{req, reply}, ethBroadcast, nil
	}
	na, err := naFrame(mac, vip, ipAllNodes, ethAllNodes, false)
	if err != nil {
		return nil, nil, err
	}
	return [][]byte{na}, ethAllNodes, nil
}

// solicitedNode returns the solicited-node multicast address of addr,
// ff02::1:ffXX:XXXX (RFC 4291 section 2.7.1).
func solicitedNode(addr netip.Addr) netip.Addr {
	a := addr.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 0x01, 12: 0xff, 13: a[13], 14: a[14], 15: a[15]})
}

// unicastMAC reports whether mac is a 6-byte unicast hardware address other
// than all zeroes.
func unicastMAC(mac net.HardwareAddr) bool {
	return len(mac) == 6 && mac[0]&1 == 0 && !bytes.Equal(mac, make(net.HardwareAddr, 6))
}

// icmpv6Checksum returns the ones' complement of the ones' complement sum of
// the IPv6 pseudo-header for src, dst and msg, and msg: 0 for a message whose
// checksum field is right, the value to store in a message whose checksum
// field is 0.
func icmpv6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for len(b) >= 2 {
			sum += uint32(b[0])<<8 | uint32(b[1])
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint32(b[0]) << 8
		}
	}
	s, d := src.As16(), dst.As16()
	add(s[:])
	add(d[:])
	n := uint32(len(msg))
	sum += n>>16 + n&0xffff + icmpv6Proto
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
