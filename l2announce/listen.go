package l2announce

import (
	"fmt"
	"net"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// ndpFilter passes IPv6 frames that carry neighbour solicitations and
// advertisements right after the IPv6 header, and drops every other IPv6
// frame in the kernel.
var ndpFilterProgram = []bpf.Instruction{
	bpf.LoadAbsolute{Off: ethHeaderLen + 6, Size: 1}, // next header
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: icmpv6Proto, SkipTrue: 4},
	bpf.LoadAbsolute{Off: ethHeaderLen + ipv6HeaderLen, Size: 1}, // ICMPv6 type
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: icmpTypeNS, SkipTrue: 1},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: icmpTypeNA, SkipTrue: 1},
	bpf.RetConstant{Val: 1 << 18},
	bpf.RetConstant{Val: 0},
}

// listenPacket is the default [Config.Listen]: an AF_PACKET socket of type
// SOCK_RAW bound to ifi and etherType, from mdlayher/packet. It ignores the
// frames the host sends itself (PACKET_IGNORE_OUTGOING, Linux 4.20). For
// IPv6 a BPF filter keeps only neighbour discovery, and the interface
// receives all multicast (PACKET_MR_ALLMULTI, dropped with the socket), so
// that solicitations to the solicited-node addresses of VIPs reach it on
// NICs that filter multicast.
func listenPacket(ifi *net.Interface, etherType uint16) (net.PacketConn, error) {
	var cfg packet.Config
	if etherType == etherTypeIPv6 {
		filter, err := bpf.Assemble(ndpFilterProgram)
		if err != nil {
			return nil, fmt.Errorf("assemble NDP filter: %w", err)
		}
		cfg.Filter = filter
	}
	c, err := packet.Listen(ifi, packet.Raw, int(etherType), &cfg)
	if err != nil {
		return nil, fmt.Errorf("listen for EtherType %#04x on %s: %w", etherType, ifi.Name, err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("get socket of %s: %w", ifi.Name, err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		// Best effort: frames from the interface's own address are
		// ignored anyway.
		_ = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
		if etherType == etherTypeIPv6 {
			mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_ALLMULTI}
			serr = unix.SetsockoptPacketMreq(int(fd), unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("receive all multicast on %s: %w", ifi.Name, err)
	}
	return c, nil
}
