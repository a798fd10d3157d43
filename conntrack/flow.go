package conntrack

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Protocol is an IP protocol number.
type Protocol uint8

// The protocols the tracker follows. Others are tracked by address with ports 0.
const (
	ICMP   Protocol = 1
	TCP    Protocol = 6
	UDP    Protocol = 17
	ICMPv6 Protocol = 58
)

func (p Protocol) String() string {
	switch p {
	case ICMP:
		return "ICMP"
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case ICMPv6:
		return "ICMPv6"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Flow is a connection's tuple in its original direction: the direction of its
// first packet. Ports are in host order. IPv4-mapped IPv6 addresses stand for
// the IPv4 addresses they map. For ICMP and ICMPv6 echo, the
// identifier is the source port of a request and the destination port of a
// reply; other ICMP messages have ports 0.
type Flow struct {
	Src, Dst netip.AddrPort
	Proto    Protocol
}

// Reverse returns the flow of the reply direction.
func (f Flow) Reverse() Flow {
	return Flow{Src: f.Dst, Dst: f.Src, Proto: f.Proto}
}

func (f Flow) String() string {
	return fmt.Sprintf("%v %v -> %v", f.Proto, f.Src, f.Dst)
}

// validate checks that f can be a key.
func (f Flow) validate() error {
	src, dst := f.Src.Addr().Unmap(), f.Dst.Addr().Unmap()
	if !src.IsValid() || !dst.IsValid() {
		return fmt.Errorf("flow %v: source and destination addresses must be set", f)
	}
	if src.Is4() != dst.Is4() {
		return fmt.Errorf("flow %v: source and destination are of different families", f)
	}
	if src.Zone() != "" || dst.Zone() != "" {
		return fmt.Errorf("flow %v: addresses with a zone cannot be tracked", f)
	}
	return nil
}

// Direction is which way a flow's first packet crossed the hook.
type Direction uint8

const (
	In  Direction = 0 // ingress
	Out Direction = 1 // egress
)

func (d Direction) String() string {
	switch d {
	case In:
		return "IN"
	case Out:
		return "OUT"
	}
	return fmt.Sprintf("dir-%d", uint8(d))
}

// State is a connection's state. Non-TCP flows are New until a reply is seen,
// then Established; they are never Closing.
type State uint8

const (
	// StateNew: TCP until the reply direction and a packet without SYN have
	// been seen; others until a reply.
	StateNew State = 0
	// StateEstablished: traffic seen both ways.
	StateEstablished State = 1
	// StateClosing: TCP after FIN in both directions, or RST in either.
	StateClosing State = 2
)

func (s State) String() string {
	switch s {
	case StateNew:
		return "new"
	case StateEstablished:
		return "established"
	case StateClosing:
		return "closing"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// Flags are an entry's flags.
type Flags uint32

const (
	FlagRxClosing  Flags = 1 << 0 // FIN or RST seen in the Rx direction
	FlagTxClosing  Flags = 1 << 1 // FIN or RST seen in the Tx direction
	FlagSeenNonSyn Flags = 1 << 2 // a TCP packet without SYN was seen
	FlagSeenReply  Flags = 1 << 3 // a packet in the reply direction was seen
	FlagService    Flags = 1 << 4 // a load balancer's client -> service entry; User holds the backend
)

var flagNames = [...]string{"RxClosing", "TxClosing", "SeenNonSyn", "SeenReply", "Service"}

// String lists the flags set, as "[ RxClosing TxClosing ]".
func (f Flags) String() string {
	var b strings.Builder
	b.WriteString("[")
	for i, name := range flagNames {
		if f&(1<<i) != 0 {
			b.WriteString(" " + name)
		}
	}
	if rest := f &^ (1<<len(flagNames) - 1); rest != 0 {
		fmt.Fprintf(&b, " %#x", uint32(rest))
	}
	b.WriteString(" ]")
	return b.String()
}

// TCPFlags is the OR of the TCP flags bytes seen (FIN 0x01 .. CWR 0x80).
type TCPFlags uint8

// Entry is one tracked connection.
type Entry struct {
	Flow      Flow      // the tuple in the original direction
	Direction Direction // which way the first packet crossed the hook
	State     State
	Created   time.Time // first packet
	Expires   time.Time // the entry is stale after this, unless another packet comes

	// Rx counts packets that travel the way an In flow's first packet did, Tx
	// the other way (reversed for an Out flow): with the tracker on ingress and
	// egress of one interface, Rx came in and Tx went out.
	RxPackets, RxBytes uint64
	TxPackets, TxBytes uint64
	RxFlagsSeen        TCPFlags
	TxFlagsSeen        TCPFlags
	Flags              Flags

	RevNAT uint32 // reverse-NAT index set by the program that created the entry, 0 for none
	User   uint32 // the creating program's own field (a backend id, a mark)
}

// String formats the entry like Cilium's `cilium bpf ct list global`:
//
//	TCP IN 192.0.2.1:58044 -> 192.0.2.2:8080 expires=2026-11-22T02:15:04Z RxPackets=6 RxBytes=525 RxFlagsSeen=0x1b TxPackets=4 TxBytes=300 TxFlagsSeen=0x1b Flags=0x0007 [ RxClosing TxClosing SeenNonSyn ] RevNAT=0 User=0 State=closing
func (e Entry) String() string {
	return fmt.Sprintf("%v %v %v -> %v expires=%s RxPackets=%d RxBytes=%d RxFlagsSeen=0x%02x TxPackets=%d TxBytes=%d TxFlagsSeen=0x%02x Flags=0x%04x %v RevNAT=%d User=%d State=%v",
		e.Flow.Proto, e.Direction, e.Flow.Src, e.Flow.Dst, e.Expires.UTC().Format(time.RFC3339),
		e.RxPackets, e.RxBytes, uint8(e.RxFlagsSeen), e.TxPackets, e.TxBytes, uint8(e.TxFlagsSeen),
		uint32(e.Flags), e.Flags, e.RevNAT, e.User, e.State)
}
