package testutil

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Packet describes a frame to build with [Packet.Build]. Zero fields take the
// defaults their comments name, so a test writes only what it cares about:
//
//	frame := testutil.BuildPacket(t, testutil.Packet{
//		Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.2"),
//		Proto: layers.IPProtocolTCP, SrcPort: 40000, DstPort: 80,
//	})
//
// Checksums and lengths are computed; the IP family follows Src.
type Packet struct {
	SrcMAC, DstMAC net.HardwareAddr // default 02:00:00:00:00:01 and 02:00:00:00:00:02
	// VLANs are 802.1Q VLAN IDs, outer first. With two, the outer tag is
	// 802.1ad (QinQ). More than two are all 802.1Q after an 802.1ad outer.
	VLANs []uint16
	// EtherType is the EtherType after the tags of a frame without IP (Src
	// invalid); Payload follows it.
	EtherType layers.EthernetType

	Src, Dst netip.Addr        // IPv4 or IPv6, one family; an invalid Src builds no IP layer
	Proto    layers.IPProtocol // TCP, UDP, ICMPv4, ICMPv6, or any other (Payload follows the IP headers)
	TTL      uint8             // TTL or hop limit; default 64
	TOS      uint8             // TOS or traffic class
	IPID     uint16            // IPv4 identification (a Fragment's ID overrides it)
	DF       bool              // IPv4 don't-fragment bit
	// IPv4Options are serialized as given; their total length must be a multiple of 4.
	IPv4Options []layers.IPv4Option
	// IPv6Ext lists IPv6 extension headers to insert, in order, before a
	// Fragment's header: IPv6HopByHop and IPv6Destination (8 bytes, PadN),
	// IPv6Routing (8 bytes: type 0, segments left 0, no addresses) and AH (24 bytes).
	IPv6Ext []layers.IPProtocol
	// Fragment makes this packet one fragment of the datagram the other fields
	// describe.
	Fragment *Fragment

	SrcPort, DstPort uint16             // TCP/UDP ports
	TCPFlags         uint8              // TCP flags byte (FIN 0x01 .. CWR 0x80); default SYN
	TCPOptions       []layers.TCPOption // serialized as given, padded to 4 bytes
	ICMPType         uint8              // ICMP/ICMPv6 type; default echo request (8, or 128), or reply with ICMPReply
	ICMPReply        bool               // an echo reply (0, or 129) rather than a request; ICMPType must be 0
	ICMPCode         uint8
	ICMPID, ICMPSeq  uint16 // echo identifier and sequence
	Payload          []byte // after the upper-layer header (or after IP for other protocols)
}

// Fragment selects one fragment of a datagram.
type Fragment struct {
	ID     uint32 // identification (16 bits in IPv4)
	Offset int    // offset of this fragment in the datagram's payload, in bytes; a multiple of 8
	Len    int    // bytes of the datagram's payload in this fragment; 0 means to the end
	More   bool   // more fragments follow
}

// BuildPacket is [Packet.Build] that fails tb on error.
func BuildPacket(tb testing.TB, p Packet) []byte {
	tb.Helper()
	b, err := p.Build()
	if err != nil {
		tb.Fatalf("build packet: %v", err)
	}
	return b
}

// Build serializes the Ethernet frame, padded to Ethernet's 60-byte minimum
// (without FCS) as a NIC would send it.
func (p Packet) Build() ([]byte, error) {
	var l3 []byte
	etherType := p.EtherType
	if p.Src.IsValid() {
		var err error
		if l3, err = p.BuildIP(); err != nil {
			return nil, err
		}
		etherType = layers.EthernetTypeIPv4
		if p.Src.Is6() {
			etherType = layers.EthernetTypeIPv6
		}
	} else {
		l3 = p.Payload
	}

	src, dst := p.SrcMAC, p.DstMAC
	if src == nil {
		src = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	}
	if dst == nil {
		dst = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	}
	ls := []gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: etherType}}
	for i, id := range p.VLANs {
		if id > 0xfff {
			return nil, fmt.Errorf("build packet: VLAN ID %d does not fit in 12 bits", id)
		}
		tagType := layers.EthernetTypeDot1Q
		if i == 0 && len(p.VLANs) > 1 {
			tagType = layers.EthernetTypeQinQ
		}
		// The previous header names this tag; the tag names what follows.
		switch prev := ls[len(ls)-1].(type) {
		case *layers.Ethernet:
			prev.EthernetType = tagType
		case *layers.Dot1Q:
			prev.Type = tagType
		}
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: id, Type: etherType})
	}
	ls = append(ls, gopacket.Payload(l3))
	return serialize(ls...)
}

// BuildIP serializes the packet from its IP header on: no link layer.
func (p Packet) BuildIP() ([]byte, error) {
	if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Is4() {
		return nil, fmt.Errorf("build packet: need a source and destination of one family, have %v and %v", p.Src, p.Dst)
	}
	ttl := p.TTL
	if ttl == 0 {
		ttl = 64
	}
	v4 := &layers.IPv4{Version: 4, TOS: p.TOS, TTL: ttl, Protocol: p.Proto, Id: p.IPID,
		SrcIP: p.Src.AsSlice(), DstIP: p.Dst.AsSlice(), Options: p.IPv4Options}
	v6 := &layers.IPv6{Version: 6, TrafficClass: p.TOS, HopLimit: ttl,
		SrcIP: p.Src.AsSlice(), DstIP: p.Dst.AsSlice()}
	var netLayer gopacket.NetworkLayer = v4
	if p.Src.Is6() {
		netLayer = v6
	}

	upper, err := p.upperLayer(netLayer)
	if err != nil {
		return nil, err
	}
	if f := p.Fragment; f != nil {
		if f.Offset%8 != 0 || f.Offset < 0 || f.Offset > len(upper) {
			return nil, fmt.Errorf("build packet: fragment offset %d is not a multiple of 8 within the %d-byte datagram", f.Offset, len(upper))
		}
		end := len(upper)
		if f.Len > 0 && f.Offset+f.Len < end {
			end = f.Offset + f.Len
		}
		upper = upper[f.Offset:end]
	}

	if p.ICMPReply && p.ICMPType != 0 {
		return nil, fmt.Errorf("build packet: ICMPReply with ICMPType %d", p.ICMPType)
	}
	if p.Src.Is4() {
		if len(p.IPv6Ext) > 0 {
			return nil, errors.New("build packet: IPv6 extension headers on an IPv4 packet")
		}
		if p.DF {
			v4.Flags |= layers.IPv4DontFragment
		}
		if f := p.Fragment; f != nil {
			v4.Id = uint16(f.ID)
			v4.FragOffset = uint16(f.Offset / 8)
			if f.More {
				v4.Flags |= layers.IPv4MoreFragments
			}
		}
		return serialize(v4, gopacket.Payload(upper))
	}

	if len(p.IPv4Options) > 0 {
		return nil, errors.New("build packet: IPv4 options on an IPv6 packet")
	}
	kinds := append([]layers.IPProtocol(nil), p.IPv6Ext...)
	if p.Fragment != nil {
		kinds = append(kinds, layers.IPProtocolIPv6Fragment)
	}
	var ext []byte
	for i, kind := range kinds {
		next := p.Proto
		if i+1 < len(kinds) {
			next = kinds[i+1]
		}
		h, err := p.ipv6ExtHeader(kind, next)
		if err != nil {
			return nil, err
		}
		ext = append(ext, h...)
	}
	v6.NextHeader = p.Proto
	if len(kinds) > 0 {
		v6.NextHeader = kinds[0]
	}
	return serialize(v6, gopacket.Payload(append(ext, upper...)))
}

// ipv6ExtHeader returns one minimal extension header of the given kind.
func (p Packet) ipv6ExtHeader(kind, next layers.IPProtocol) ([]byte, error) {
	switch kind {
	case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination:
		// Header length 0 (8 bytes): next header, length, PadN option of 4 zero bytes.
		return []byte{byte(next), 0, 1, 4, 0, 0, 0, 0}, nil
	case layers.IPProtocolIPv6Routing:
		// Routing type 0 with segments left 0 and no addresses: nothing to route.
		return []byte{byte(next), 0, 0, 0, 0, 0, 0, 0}, nil
	case layers.IPProtocolAH:
		// Payload length 4: (4+2)*4 = 24 bytes, a 12-byte ICV.
		h := make([]byte, 24)
		h[0], h[1] = byte(next), 4
		binary.BigEndian.PutUint32(h[4:], 0x100) // SPI
		binary.BigEndian.PutUint32(h[8:], 1)     // sequence
		return h, nil
	case layers.IPProtocolIPv6Fragment:
		f := p.Fragment
		h := make([]byte, 8)
		h[0] = byte(next)
		fo := uint16(f.Offset)
		if f.More {
			fo |= 1
		}
		binary.BigEndian.PutUint16(h[2:], fo)
		binary.BigEndian.PutUint32(h[4:], f.ID)
		return h, nil
	}
	return nil, fmt.Errorf("build packet: unknown IPv6 extension header %v", kind)
}

// upperLayer serializes the upper-layer header and payload, checksummed against netLayer.
func (p Packet) upperLayer(netLayer gopacket.NetworkLayer) ([]byte, error) {
	payload := gopacket.Payload(p.Payload)
	switch p.Proto {
	case layers.IPProtocolTCP:
		flags := p.TCPFlags
		if flags == 0 {
			flags = 0x02
		}
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.SrcPort), DstPort: layers.TCPPort(p.DstPort),
			Seq: 1000, Window: 65535, Options: p.TCPOptions,
			FIN: flags&0x01 != 0, SYN: flags&0x02 != 0, RST: flags&0x04 != 0, PSH: flags&0x08 != 0,
			ACK: flags&0x10 != 0, URG: flags&0x20 != 0, ECE: flags&0x40 != 0, CWR: flags&0x80 != 0}
		if tcp.ACK {
			tcp.Ack = 1
		}
		if err := tcp.SetNetworkLayerForChecksum(netLayer); err != nil {
			return nil, fmt.Errorf("build packet: %w", err)
		}
		return serialize(tcp, payload)
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.SrcPort), DstPort: layers.UDPPort(p.DstPort)}
		if err := udp.SetNetworkLayerForChecksum(netLayer); err != nil {
			return nil, fmt.Errorf("build packet: %w", err)
		}
		return serialize(udp, payload)
	case layers.IPProtocolICMPv4:
		typ := p.ICMPType
		if typ == 0 && p.ICMPCode == 0 && !p.ICMPReply {
			typ = layers.ICMPv4TypeEchoRequest
		}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, p.ICMPCode), Id: p.ICMPID, Seq: p.ICMPSeq}
		return serialize(icmp, payload)
	case layers.IPProtocolICMPv6:
		typ := p.ICMPType
		if typ == 0 && p.ICMPCode == 0 {
			typ = layers.ICMPv6TypeEchoRequest
			if p.ICMPReply {
				typ = layers.ICMPv6TypeEchoReply
			}
		}
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, p.ICMPCode)}
		if err := icmp.SetNetworkLayerForChecksum(netLayer); err != nil {
			return nil, fmt.Errorf("build packet: %w", err)
		}
		// The second 4 bytes: the echo id and sequence, or zero for other types
		// (unused, MTU or pointer).
		rest := make([]byte, 4, 4+len(p.Payload))
		binary.BigEndian.PutUint16(rest, p.ICMPID)
		binary.BigEndian.PutUint16(rest[2:], p.ICMPSeq)
		return serialize(icmp, gopacket.Payload(append(rest, p.Payload...)))
	}
	return p.Payload, nil
}

func serialize(ls ...gopacket.SerializableLayer) ([]byte, error) {
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		return nil, fmt.Errorf("build packet: %w", err)
	}
	return append([]byte(nil), buf.Bytes()...), nil
}
