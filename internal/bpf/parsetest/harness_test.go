package parsetest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/netblocks/netblocks/internal/testutil"
)

// Values of struct nb_pkt's layers and err fields (nb_parse.h).
const (
	layerL2 = 1 << 0
	layerL3 = 1 << 1
	layerL4 = 1 << 2

	errOK          = 0
	errTruncated   = 1
	errMalformed   = 2
	errUnsupported = 3

	fragFragment = 1 << 0
	fragMore     = 1 << 1
	fragDont     = 1 << 2
)

// be16 is a 16-bit field kept in network order.
type be16 [2]byte

func (b be16) host() uint16 { return binary.BigEndian.Uint16(b[:]) }

// nbPkt mirrors struct nb_pkt by hand; TestLayout checks it against the BTF of
// the compiled object, so a change on either side fails there first.
type nbPkt struct {
	Saddr     [16]byte
	Daddr     [16]byte
	FragID    uint32 `btf:"frag_id"`
	EthProto  uint16
	L3Proto   uint16
	VLANTCI   [2]uint16 `btf:"vlan_tci"`
	L3Off     uint16
	L4Off     uint16
	IPLen     uint16 `btf:"ip_len"`
	FragOff   uint16
	Sport     be16
	Dport     be16
	ICMPID    be16  `btf:"icmp_id"`
	VLANDepth uint8 `btf:"vlan_depth"`
	L4Proto   uint8
	L4HdrLen  uint8
	TTL       uint8 `btf:"ttl"`
	TOS       uint8 `btf:"tos"`
	Frag      uint8
	TCPFlags  uint8 `btf:"tcp_flags"`
	ICMPType  uint8 `btf:"icmp_type"`
	ICMPCode  uint8 `btf:"icmp_code"`
	IPv6Ext   uint8 `btf:"ipv6_ext"`
	Layers    uint8
	Err       uint8
	_         [2]byte
}

// natCfg mirrors struct nat_cfg in parsetest.c.
type natCfg struct {
	Saddr [16]byte
	Daddr [16]byte
	Sport be16
	Dport be16
	Flags uint32
}

const (
	natSaddr = 1 << 0
	natDaddr = 1 << 1
	natSport = 1 << 2
	natDport = 1 << 3
)

// parsed is nb_pkt in Go terms, for comparing with what a test expects.
type parsed struct {
	Layers, Err        uint8
	EthProto, L3Proto  uint16
	VLANDepth          uint8
	VLANTCI            [2]uint16
	L3Off, L4Off       int
	Src, Dst           netip.Addr
	IPLen              int
	TTL, TOS           uint8
	L4Proto            uint8
	Frag               uint8
	FragID             uint32
	FragOff            int
	IPv6Ext            int
	SrcPort, DstPort   uint16
	L4HdrLen           int
	TCPFlags           uint8
	ICMPType, ICMPCode uint8
	ICMPID             uint16
}

// addr turns a recorded address into a netip.Addr: invalid when all zero.
func addr(b [16]byte, l3proto uint16) netip.Addr {
	if b == ([16]byte{}) {
		return netip.Addr{}
	}
	if l3proto == 0x0800 && [12]byte(b[4:]) == ([12]byte{}) {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func (p nbPkt) parsed() parsed {
	return parsed{
		Layers: p.Layers, Err: p.Err,
		EthProto: p.EthProto, L3Proto: p.L3Proto, VLANDepth: p.VLANDepth, VLANTCI: p.VLANTCI,
		L3Off: int(p.L3Off), L4Off: int(p.L4Off),
		Src: addr(p.Saddr, p.L3Proto), Dst: addr(p.Daddr, p.L3Proto),
		IPLen: int(p.IPLen), TTL: p.TTL, TOS: p.TOS, L4Proto: p.L4Proto,
		Frag: p.Frag, FragID: p.FragID, FragOff: int(p.FragOff), IPv6Ext: int(p.IPv6Ext),
		SrcPort: p.Sport.host(), DstPort: p.Dport.host(), L4HdrLen: int(p.L4HdrLen), TCPFlags: p.TCPFlags,
		ICMPType: p.ICMPType, ICMPCode: p.ICMPCode, ICMPID: p.ICMPID.host(),
	}
}

// objects loads parsetest once for a test.
func objects(tb testing.TB) *parsetestObjects {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	var objs parsetestObjects
	if err := loadParsetestObjects(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("load parsetest: %+v", ve)
		}
		tb.Fatalf("load parsetest: %v", err)
	}
	tb.Cleanup(func() { objs.Close() })
	return &objs
}

// minRun is the shortest input BPF_PROG_RUN takes for XDP and tc: an Ethernet
// header (XDP metadata does not count). Real XDP and tc on an Ethernet device
// never see a shorter frame either.
const minRun = 14

// Verdicts the test programs return when they ran to the end.
const (
	xdpPass = 2 // XDP_PASS
	tcOK    = 0 // TC_ACT_OK
)

// runXDP runs an XDP program on frame and returns the frame after the run.
func runXDP(prog *ebpf.Program, frame []byte) ([]byte, error) { return run(prog, frame, xdpPass) }

// runTC runs a tc program on frame and returns the frame after the run.
func runTC(prog *ebpf.Program, frame []byte) ([]byte, error) { return run(prog, frame, tcOK) }

// run runs prog on frame with BPF_PROG_RUN, checks its verdict and returns
// the frame after the run.
func run(prog *ebpf.Program, frame []byte, verdict uint32) ([]byte, error) {
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)}
	ret, err := prog.Run(opts)
	if err != nil {
		return nil, fmt.Errorf("run %v on %d bytes: %w", prog, len(frame), err)
	}
	if ret != verdict {
		return nil, fmt.Errorf("run %v on %d bytes: verdict %d, want %d", prog, len(frame), ret, verdict)
	}
	return opts.DataOut, nil
}

// lastResult reads what the program recorded, and clears it so that a run
// that records nothing cannot pass on a stale result.
func lastResult(m *ebpf.Map) (nbPkt, error) {
	var p nbPkt
	if err := m.Lookup(uint32(0), &p); err != nil {
		return p, fmt.Errorf("look up result: %w", err)
	}
	if err := m.Put(uint32(0), nbPkt{Err: 0xff}); err != nil {
		return p, fmt.Errorf("clear result: %w", err)
	}
	return p, nil
}
