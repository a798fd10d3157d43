package l2announce

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/mdlayher/packet"
)

// waitTimeout bounds every wait of the unit tests for something that
// happens at once.
const waitTimeout = 5 * time.Second

// sentFrame is a frame a fakeConn was asked to send.
type sentFrame struct {
	frame []byte
	dst   net.HardwareAddr
}

// fakeConn is a net.PacketConn on which the test writes the frames the
// Responder reads, and reads those it writes.
type fakeConn struct {
	in       chan []byte
	readErrs chan error
	sent     chan sentFrame
	closed   chan struct{}
	once     sync.Once
}

func newFakeConn() *fakeConn {
	return &fakeConn{
		in:       make(chan []byte),
		readErrs: make(chan error),
		sent:     make(chan sentFrame, 4096),
		closed:   make(chan struct{}),
	}
}

func (c *fakeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case f := <-c.in:
		var from net.Addr
		if len(f) >= 12 {
			from = &packet.Addr{HardwareAddr: net.HardwareAddr(f[6:12])}
		}
		return copy(b, f), from, nil
	case err := <-c.readErrs:
		return 0, nil, err
	case <-c.closed:
		return 0, nil, net.ErrClosed
	}
}

func (c *fakeConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	pa, ok := addr.(*packet.Addr)
	if !ok {
		return 0, fmt.Errorf("write to %T, not *packet.Addr", addr)
	}
	c.sent <- sentFrame{frame: append([]byte(nil), b...), dst: pa.HardwareAddr}
	return len(b), nil
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *fakeConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func (c *fakeConn) LocalAddr() net.Addr                { return &packet.Addr{} }
func (c *fakeConn) SetDeadline(time.Time) error        { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error    { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error   { return nil }
func (c *fakeConn) String() string                     { return "fakeConn" }
func (c *fakeConn) feed(tb testing.TB, frame []byte)   { c.feedErr(tb, frame, nil) }
func (c *fakeConn) readError(tb testing.TB, err error) { c.feedErr(tb, nil, err) }

func (c *fakeConn) feedErr(tb testing.TB, frame []byte, err error) {
	tb.Helper()
	var in chan []byte
	var errs chan error
	if err != nil {
		errs = c.readErrs
	} else {
		in = c.in
	}
	select {
	case in <- frame:
	case errs <- err:
	case <-time.After(waitTimeout):
		tb.Fatal("the responder does not read")
	}
}

// next returns the next frame the Responder sent, or fails.
func (c *fakeConn) next(tb testing.TB) sentFrame {
	tb.Helper()
	select {
	case f := <-c.sent:
		return f
	case <-time.After(waitTimeout):
		tb.Fatal("no frame sent")
		return sentFrame{}
	}
}

// none checks that the Responder sends nothing for d.
func (c *fakeConn) none(tb testing.TB, d time.Duration) {
	tb.Helper()
	select {
	case f := <-c.sent:
		tb.Fatalf("unexpected frame sent to %s: % x", f.dst, f.frame)
	case <-time.After(d):
	}
}

// drain discards every frame sent so far.
func (c *fakeConn) drain() {
	for {
		select {
		case <-c.sent:
		default:
			return
		}
	}
}

// connKey names one connection a fakeSystem opened.
type connKey struct {
	index     int
	etherType uint16
}

// fakeSystem is a system whose interfaces the test sets and whose
// connections are fakeConns.
type fakeSystem struct {
	links  chan map[int]linkInfo
	opened chan connKey

	mu    sync.Mutex
	conns map[connKey]*fakeConn
}

func newFakeSystem() *fakeSystem {
	return &fakeSystem{
		links:  make(chan map[int]linkInfo),
		opened: make(chan connKey, 64),
		conns:  make(map[connKey]*fakeConn),
	}
}

func (s *fakeSystem) watchLinks(ctx context.Context, out chan map[int]linkInfo) {
	for {
		select {
		case <-ctx.Done():
			return
		case l := <-s.links:
			offer(out, l)
		}
	}
}

func (s *fakeSystem) listen(ifi *net.Interface, etherType uint16) (net.PacketConn, error) {
	c := newFakeConn()
	k := connKey{ifi.Index, etherType}
	s.mu.Lock()
	s.conns[k] = c
	s.mu.Unlock()
	s.opened <- k
	return c, nil
}

func (s *fakeSystem) close() error { return nil }

// setLinks makes links the system's interfaces.
func (s *fakeSystem) setLinks(tb testing.TB, links ...linkInfo) {
	tb.Helper()
	m := make(map[int]linkInfo)
	for _, l := range links {
		m[l.Index] = l
	}
	select {
	case s.links <- m:
	case <-time.After(waitTimeout):
		tb.Fatal("the responder does not watch links")
	}
}

// conn waits until the connection for etherType on the interface index is
// open and returns it.
func (s *fakeSystem) conn(tb testing.TB, index int, etherType uint16) *fakeConn {
	tb.Helper()
	deadline := time.After(waitTimeout)
	for {
		s.mu.Lock()
		c := s.conns[connKey{index, etherType}]
		s.mu.Unlock()
		if c != nil && !c.isClosed() {
			return c
		}
		select {
		case <-s.opened:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			tb.Fatalf("no connection for EtherType %#04x on interface %d", etherType, index)
		}
	}
}

// fakeElector is an Elector whose campaigns the test grants and ends.
type fakeElector struct {
	mu        sync.Mutex
	campaigns map[Key]*fakeCampaign
	started   chan Key
	ended     chan Key

	// Used by the test goroutine only.
	pendingStarted, pendingEnded map[Key]int
}

type fakeCampaign struct {
	hold func(time.Time)
	ctx  context.Context
}

func newFakeElector() *fakeElector {
	return &fakeElector{
		campaigns: make(map[Key]*fakeCampaign),
		started:   make(chan Key, 64), ended: make(chan Key, 64),
		pendingStarted: make(map[Key]int), pendingEnded: make(map[Key]int),
	}
}

func (e *fakeElector) Campaign(ctx context.Context, key Key, hold func(time.Time)) error {
	e.mu.Lock()
	e.campaigns[key] = &fakeCampaign{hold: hold, ctx: ctx}
	e.mu.Unlock()
	e.started <- key
	<-ctx.Done()
	e.mu.Lock()
	delete(e.campaigns, key)
	e.mu.Unlock()
	hold(time.Time{})
	e.ended <- key
	return ctx.Err()
}

// grant makes this node the holder of key until until (zero: not).
func (e *fakeElector) grant(tb testing.TB, key Key, until time.Time) {
	tb.Helper()
	e.mu.Lock()
	c := e.campaigns[key]
	e.mu.Unlock()
	if c == nil {
		tb.Fatalf("no campaign for %s", key)
	}
	c.hold(until)
}

// waitStarted waits for a campaign for key to start.
func (e *fakeElector) waitStarted(tb testing.TB, key Key) {
	tb.Helper()
	e.wait(tb, e.started, e.pendingStarted, key, "started")
}

// waitEnded waits for a campaign for key to end.
func (e *fakeElector) waitEnded(tb testing.TB, key Key) {
	tb.Helper()
	e.wait(tb, e.ended, e.pendingEnded, key, "ended")
}

// wait waits for ch to deliver key, keeping the other keys it delivers
// meanwhile in pending for later waits.
func (e *fakeElector) wait(tb testing.TB, ch chan Key, pending map[Key]int, key Key, what string) {
	tb.Helper()
	if pending[key] > 0 {
		pending[key]--
		return
	}
	deadline := time.After(waitTimeout)
	for {
		select {
		case k := <-ch:
			if k == key {
				return
			}
			pending[k]++
		case <-deadline:
			tb.Fatalf("campaign for %s not %s", key, what)
		}
	}
}

// Addresses of the unit tests.
var (
	nodeMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	node2MAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xc1}
	vip4      = netip.MustParseAddr("192.0.2.10")
	vip6      = netip.MustParseAddr("2001:db8::10")
	client4   = netip.MustParseAddr("192.0.2.100")
	client6   = netip.MustParseAddr("2001:db8::100")
)

func eth0() linkInfo {
	return linkInfo{Index: 2, Name: "eth0", MAC: nodeMAC, MTU: 1500, Up: true, Ethernet: true}
}

// serialize builds a frame from ls, with lengths and checksums computed.
func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// arpRequest returns an ARP request from the station mac/ip for target.
func arpRequest(tb testing.TB, mac net.HardwareAddr, ip, target netip.Addr) []byte {
	tb.Helper()
	return arpFrameOf(tb, layers.ARPRequest, mac, ip, make(net.HardwareAddr, 6), target, layers.EthernetBroadcast)
}

func arpFrameOf(tb testing.TB, op uint16, smac net.HardwareAddr, sip netip.Addr, tmac net.HardwareAddr, tip netip.Addr, dst net.HardwareAddr) []byte {
	tb.Helper()
	return serialize(tb,
		&layers.Ethernet{SrcMAC: smac, DstMAC: dst, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{
			AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
			SourceHwAddress: smac, SourceProtAddress: sip.AsSlice(),
			DstHwAddress: tmac, DstProtAddress: tip.AsSlice(),
		})
}

// neighborSolicitation returns a neighbour solicitation from the station
// mac/src for target, to its solicited-node address, with a source
// link-layer address option unless src is unspecified.
func neighborSolicitation(tb testing.TB, mac net.HardwareAddr, src, target netip.Addr) []byte {
	tb.Helper()
	dst := solicitedNode(target)
	d := dst.As16()
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice()}
	if !src.IsUnspecified() {
		ns.Options = layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: mac}}
	}
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: 255, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		tb.Fatal(err)
	}
	return serialize(tb,
		&layers.Ethernet{SrcMAC: mac, DstMAC: net.HardwareAddr{0x33, 0x33, 0xff, d[13], d[14], d[15]}, EthernetType: layers.EthernetTypeIPv6},
		ip, icmp, ns)
}

// decodedARP decodes an ARP frame the Responder sent.
func decodedARP(tb testing.TB, frame []byte) (*layers.Ethernet, *layers.ARP) {
	tb.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	a, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if eth == nil || a == nil {
		tb.Fatalf("not an ARP frame: % x", frame)
	}
	return eth, a
}

// decodedNA decodes a neighbour advertisement the Responder sent, checking
// its ICMPv6 checksum.
func decodedNA(tb testing.TB, frame []byte) (*layers.Ethernet, *layers.IPv6, *layers.ICMPv6NeighborAdvertisement) {
	tb.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	na, _ := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
	if eth == nil || ip == nil || na == nil {
		tb.Fatalf("not a neighbour advertisement: % x", frame)
	}
	src, _ := netip.AddrFromSlice(ip.SrcIP)
	dst, _ := netip.AddrFromSlice(ip.DstIP)
	if sum := icmpv6Checksum(src, dst, ip.Payload); sum != 0 {
		tb.Errorf("neighbour advertisement has a bad checksum")
	}
	if ip.HopLimit != 255 {
		tb.Errorf("neighbour advertisement has hop limit %d, want 255", ip.HopLimit)
	}
	return eth, ip, na
}
