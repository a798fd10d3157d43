package l2test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/mdlayher/packet"

	"github.com/netblocks/netblocks/internal/testutil"
)

// probeBase is the first sender address of identified ARP probes: the
// benchmarking range 198.18.0.0/15 (RFC 2544), 2^17 identifiers. A reply
// goes back to the sender address, so it names the probe it answers.
var probeBase = netip.MustParseAddr("198.18.0.0")

// ResolveInterval is how often [Client.Resolve] asks again.
const ResolveInterval = 20 * time.Millisecond

// Reply is an ARP reply or neighbour advertisement a [Client] received, or
// an announcement (gratuitous ARP, unsolicited advertisement).
type Reply struct {
	At  time.Time
	VIP netip.Addr
	MAC net.HardwareAddr
	// ID is the identifier of the probe an ARP reply answers (see
	// [Client.Probe]); 0 for anything else.
	ID uint32
	// Announcement is set for gratuitous ARP and unsolicited
	// advertisements.
	Announcement bool
}

// Client asks for VIPs on an interface of a test namespace with ARP and
// neighbour solicitations, from packet sockets, and records every answer.
type Client struct {
	ifi      *net.Interface
	ip4, ip6 netip.Addr
	arp, ndp *packet.Conn

	mu      sync.Mutex
	replies []Reply
	changed chan struct{} // Closed and replaced on every reply.
	nextID  uint32
	wg      sync.WaitGroup
	closed  atomic.Bool
}

// NewClient opens a client on the interface link of ns, which has the
// addresses ip4 and ip6; tb.Cleanup closes it.
func NewClient(tb testing.TB, ns *testutil.NetNS, link string, ip4, ip6 netip.Addr) *Client {
	tb.Helper()
	c := &Client{ip4: ip4, ip6: ip6, changed: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		c.ifi = ifi
		if c.arp, err = packet.Listen(ifi, packet.Raw, int(layers.EthernetTypeARP), nil); err != nil {
			return err
		}
		if c.ndp, err = packet.Listen(ifi, packet.Raw, int(layers.EthernetTypeIPv6), nil); err != nil {
			c.arp.Close()
			return err
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("open client on %s in %s: %v", link, ns.Name(), err)
	}
	c.wg.Go(func() { c.read(c.arp) })
	c.wg.Go(func() { c.read(c.ndp) })
	tb.Cleanup(func() {
		c.closed.Store(true)
		c.arp.Close()
		c.ndp.Close()
		c.wg.Wait()
	})
	return c
}

// MAC returns the client's hardware address.
func (c *Client) MAC() net.HardwareAddr { return c.ifi.HardwareAddr }

// read records the answers that arrive on conn until it is closed.
func (c *Client) read(conn *packet.Conn) {
	buf := make([]byte, 1<<16)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			if c.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if r, ok := c.parse(buf[:n]); ok {
			c.mu.Lock()
			c.replies = append(c.replies, r)
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
		}
	}
}

// parse returns the answer or announcement in frame, if it holds one.
func (c *Client) parse(frame []byte) (Reply, bool) {
	now := time.Now()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.NoCopy)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if eth == nil || bytes.Equal(eth.SrcMAC, c.ifi.HardwareAddr) {
		return Reply{}, false
	}
	if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		spa, ok1 := netip.AddrFromSlice(a.SourceProtAddress)
		tpa, ok2 := netip.AddrFromSlice(a.DstProtAddress)
		if !ok1 || !ok2 {
			return Reply{}, false
		}
		r := Reply{At: now, VIP: spa, MAC: slices.Clone(net.HardwareAddr(a.SourceHwAddress))}
		switch {
		case spa == tpa:
			r.Announcement = true
		case a.Operation == layers.ARPReply:
			r.ID = probeID(tpa)
		default:
			return Reply{}, false
		}
		return r, true
	}
	if na, ok := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement); ok {
		target, _ := netip.AddrFromSlice(na.TargetAddress)
		for _, o := range na.Options {
			if o.Type == layers.ICMPv6OptTargetAddress && len(o.Data) == 6 {
				return Reply{At: now, VIP: target, MAC: slices.Clone(net.HardwareAddr(o.Data)), Announcement: !na.Solicited()}, true
			}
		}
	}
	return Reply{}, false
}

// probeID returns the probe identifier a reply to tpa answers, or 0.
func probeID(tpa netip.Addr) uint32 {
	if !tpa.Is4() {
		return 0
	}
	b, base := tpa.As4(), probeBase.As4()
	id := binary.BigEndian.Uint32(b[:]) - binary.BigEndian.Uint32(base[:])
	if id >= 1<<17 {
		return 0
	}
	return id
}

// Probe sends one ARP request for the IPv4 VIP vip from a sender address
// that identifies it, and returns the identifier the answer will carry.
func (c *Client) Probe(vip netip.Addr) (uint32, error) {
	c.mu.Lock()
	c.nextID = c.nextID%(1<<17-1) + 1
	id := c.nextID
	c.mu.Unlock()
	base := probeBase.As4()
	var sender [4]byte
	binary.BigEndian.PutUint32(sender[:], binary.BigEndian.Uint32(base[:])+id)
	return id, c.sendARP(netip.AddrFrom4(sender), vip)
}

// Request asks once for vip: an ARP request from the client's IPv4
// address, or a neighbour solicitation from its IPv6 address.
func (c *Client) Request(vip netip.Addr) error {
	if vip.Is4() {
		return c.sendARP(c.ip4, vip)
	}
	return c.sendNS(vip)
}

func (c *Client) sendARP(sender, vip netip.Addr) error {
	frame, err := serialize(
		&layers.Ethernet{SrcMAC: c.ifi.HardwareAddr, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{
			AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
			SourceHwAddress: c.ifi.HardwareAddr, SourceProtAddress: sender.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: vip.AsSlice(),
		})
	if err != nil {
		return err
	}
	_, err = c.arp.WriteTo(frame, &packet.Addr{HardwareAddr: layers.EthernetBroadcast})
	return err
}

func (c *Client) sendNS(vip netip.Addr) error {
	v := vip.As16()
	dst := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: v[13], 14: v[14], 15: v[15]})
	ethDst := net.HardwareAddr{0x33, 0x33, 0xff, v[13], v[14], v[15]}
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: 255, SrcIP: c.ip6.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		return err
	}
	frame, err := serialize(
		&layers.Ethernet{SrcMAC: c.ifi.HardwareAddr, DstMAC: ethDst, EthernetType: layers.EthernetTypeIPv6},
		ip, icmp,
		&layers.ICMPv6NeighborSolicitation{
			TargetAddress: vip.AsSlice(),
			Options:       layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: c.ifi.HardwareAddr}},
		})
	if err != nil {
		return err
	}
	_, err = c.ndp.WriteTo(frame, &packet.Addr{HardwareAddr: ethDst})
	return err
}

func serialize(ls ...gopacket.SerializableLayer) ([]byte, error) {
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...)
	return buf.Bytes(), err
}

// Replies returns every answer and announcement received so far.
func (c *Client) Replies() []Reply {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.replies)
}

// Wait returns the first reply received at or after since that match
// accepts, waiting for it until ctx is done.
func (c *Client) Wait(ctx context.Context, since time.Time, match func(Reply) bool) (Reply, error) {
	seen := 0
	for {
		c.mu.Lock()
		replies, changed := c.replies, c.changed
		c.mu.Unlock()
		for _, r := range replies[seen:] {
			if !r.At.Before(since) && match(r) {
				return r, nil
			}
		}
		seen = len(replies)
		select {
		case <-ctx.Done():
			return Reply{}, ctx.Err()
		case <-changed:
		}
	}
}

// Resolve asks for vip every ResolveInterval until an answer (not an
// announcement) that match accepts (nil: any) arrives, or ctx is done.
func (c *Client) Resolve(ctx context.Context, vip netip.Addr, match func(Reply) bool) (Reply, error) {
	since := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		t := time.NewTicker(ResolveInterval)
		defer t.Stop()
		for {
			if err := c.Request(vip); err != nil {
				errc <- err
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	r, err := c.Wait(ctx, since, func(r Reply) bool {
		return r.VIP == vip && !r.Announcement && (match == nil || match(r))
	})
	if err != nil {
		select {
		case serr := <-errc:
			return r, fmt.Errorf("resolve %s: %w", vip, serr)
		default:
		}
		return r, fmt.Errorf("resolve %s: %w", vip, err)
	}
	return r, nil
}

// ProbeEvery probes vip every interval until ctx is done, in the
// background; it returns a function that waits for it to stop.
func (c *Client) ProbeEvery(ctx context.Context, vip netip.Addr, interval time.Duration) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			c.Probe(vip)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { <-done }
}
