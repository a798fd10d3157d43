package l2announce

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket/layers"
)

// quiet is how long a test waits to be sure that nothing is sent.
const quiet = 100 * time.Millisecond

// run starts r.Run with a context that the test's cleanup cancels, and
// returns a function that cancels it and waits for Run to return.
func run(t *testing.T, r *Responder) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(waitTimeout):
				t.Fatal("Run did not return after its context was canceled")
			}
		}
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// newTestResponder returns a Responder on a fake system.
func newTestResponder(t *testing.T, cfg Config) (*Responder, *fakeSystem) {
	t.Helper()
	sys := newFakeSystem()
	r, err := newResponder(cfg, sys)
	if err != nil {
		t.Fatal(err)
	}
	return r, sys
}

// expectAnnouncements reads n announcement rounds of vip from c.
func expectAnnouncements(t *testing.T, c *fakeConn, vip netip.Addr, n int) {
	t.Helper()
	perRound := 1
	if vip.Is4() {
		perRound = 2
	}
	for range n * perRound {
		f := c.next(t)
		if vip.Is4() {
			_, a := decodedARP(t, f.frame)
			if !bytes.Equal(a.SourceProtAddress, vip.AsSlice()) || !bytes.Equal(a.DstProtAddress, vip.AsSlice()) {
				t.Fatalf("not a gratuitous ARP for %s: %+v", vip, a)
			}
		} else {
			_, _, na := decodedNA(t, f.frame)
			if na.Solicited() || !bytes.Equal(na.TargetAddress, vip.AsSlice()) {
				t.Fatalf("not an unsolicited advertisement for %s", vip)
			}
		}
	}
}

// expectARPReply feeds an ARP request for vip to c and checks the answer.
func expectARPReply(t *testing.T, c *fakeConn, vip netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	c.feed(t, arpRequest(t, clientMAC, client4, vip))
	f := c.next(t)
	_, a := decodedARP(t, f.frame)
	for bytes.Equal(a.SourceProtAddress, a.DstProtAddress) {
		// An announcement still on its way: a burst may overlap another
		// (harmless) when an interface opens as the node takes a Key.
		f = c.next(t)
		_, a = decodedARP(t, f.frame)
	}
	if a.Operation != layers.ARPReply || !bytes.Equal(a.SourceProtAddress, vip.AsSlice()) || !bytes.Equal(a.SourceHwAddress, mac) {
		t.Fatalf("not a reply for %s from %s: %+v", vip, mac, a)
	}
	if !bytes.Equal(f.dst, clientMAC) {
		t.Fatalf("reply sent to %s, want %s", f.dst, clientMAC)
	}
}

func TestRespondsForHeldVIPs(t *testing.T) {
	r, sys := newTestResponder(t, Config{})
	if err := r.SetVIPs([]netip.Addr{vip4, vip6}); err != nil {
		t.Fatal(err)
	}
	run(t, r)
	sys.setLinks(t, eth0())
	arpConn := sys.conn(t, 2, etherTypeARP)
	ndpConn := sys.conn(t, 2, etherTypeIPv6)

	// A LocalElector holds at once: three announcements of each.
	expectAnnouncements(t, arpConn, vip4, DefaultGratuitousCount)
	expectAnnouncements(t, ndpConn, vip6, DefaultGratuitousCount)
	arpConn.none(t, quiet)

	expectARPReply(t, arpConn, vip4, nodeMAC)

	ndpConn.feed(t, neighborSolicitation(t, clientMAC, client6, vip6))
	f := ndpConn.next(t)
	eth, _, na := decodedNA(t, f.frame)
	if !bytes.Equal(na.TargetAddress, vip6.AsSlice()) || !na.Solicited() || !bytes.Equal(eth.DstMAC, clientMAC) {
		t.Fatalf("bad advertisement %+v to %s", na, eth.DstMAC)
	}

	// Other addresses get nothing.
	arpConn.feed(t, arpRequest(t, clientMAC, client4, netip.MustParseAddr("192.0.2.11")))
	ndpConn.feed(t, neighborSolicitation(t, clientMAC, client6, netip.MustParseAddr("2001:db8::11")))
	arpConn.none(t, quiet)
	ndpConn.none(t, 0)

	got := r.Stats()
	want := Stats{Replies: 2, Announcements: 3*2 + 3, Ignored: 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}

	status := r.Status()
	if len(status) != 2 || !status[0].Held || !status[1].Held || status[0].Interfaces[0] != "eth0" {
		t.Errorf("status %+v, want both VIPs held on eth0", status)
	}
}

func TestAnswersOnlyWhileHeld(t *testing.T) {
	el := newFakeElector()
	r, sys := newTestResponder(t, Config{Elector: el})
	r.SetVIPs([]netip.Addr{vip4})
	run(t, r)
	sys.setLinks(t, eth0())
	c := sys.conn(t, 2, etherTypeARP)
	key := Key{VIP: vip4, Segment: "eth0"}
	el.waitStarted(t, key)

	// Not held: no answer, no announcement.
	c.feed(t, arpRequest(t, clientMAC, client4, vip4))
	c.none(t, quiet)

	// Held: announced, answered.
	el.grant(t, key, time.Now().Add(time.Hour))
	expectAnnouncements(t, c, vip4, DefaultGratuitousCount)
	expectARPReply(t, c, vip4, nodeMAC)

	// Lost: silent at once.
	el.grant(t, key, time.Time{})
	c.feed(t, arpRequest(t, clientMAC, client4, vip4))
	c.none(t, quiet)

	// A lease whose time runs out stops the answers by itself, although
	// the elector never says so: a stalled elector cannot make two
	// answerers.
	until := time.Now().Add(time.Second)
	el.grant(t, key, until)
	expectAnnouncements(t, c, vip4, 1)
	expectARPReply(t, c, vip4, nodeMAC)
	time.Sleep(time.Until(until) + 50*time.Millisecond)
	c.drain()
	c.feed(t, arpRequest(t, clientMAC, client4, vip4))
	c.none(t, quiet)
	if s := r.Status(); len(s) != 1 || s[0].Held {
		t.Errorf("status %+v, want the key not held", s)
	}
}

func TestGratuitousConfig(t *testing.T) {
	el := newFakeElector()
	r, sys := newTestResponder(t, Config{Elector: el, GratuitousCount: 5, GratuitousInterval: 20 * time.Millisecond, RefreshInterval: 200 * time.Millisecond})
	r.SetVIPs([]netip.Addr{vip6})
	run(t, r)
	sys.setLinks(t, eth0())
	c := sys.conn(t, 2, etherTypeIPv6)
	key := Key{VIP: vip6, Segment: "eth0"}
	el.waitStarted(t, key)
	start := time.Now()
	el.grant(t, key, time.Now().Add(time.Hour))
	expectAnnouncements(t, c, vip6, 5)
	if d := time.Since(start); d < 4*20*time.Millisecond {
		t.Errorf("5 announcements 20ms apart took %v", d)
	}
	// Then one per refresh interval.
	expectAnnouncements(t, c, vip6, 2)

	// None when the count is negative.
	el2 := newFakeElector()
	r2, sys2 := newTestResponder(t, Config{Elector: el2, GratuitousCount: -1})
	r2.SetVIPs([]netip.Addr{vip4})
	run(t, r2)
	sys2.setLinks(t, eth0())
	c2 := sys2.conn(t, 2, etherTypeARP)
	el2.waitStarted(t, Key{VIP: vip4, Segment: "eth0"})
	el2.grant(t, Key{VIP: vip4, Segment: "eth0"}, time.Now().Add(time.Hour))
	c2.none(t, quiet)
}

func TestInterfaceSelection(t *testing.T) {
	el := newFakeElector()
	r, sys := newTestResponder(t, Config{Elector: el, Interfaces: []string{"^ens[0-9]+", "^bond0$"}})
	r.SetVIPs([]netip.Addr{vip4})
	run(t, r)
	links := []linkInfo{
		{Index: 1, Name: "lo", MTU: 65536, Up: true},
		{Index: 2, Name: "ens3", MAC: nodeMAC, Up: true, Ethernet: true},
		{Index: 3, Name: "ens192", MAC: node2MAC, Up: true, Ethernet: true},
		{Index: 4, Name: "eth0", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 4}, Up: true, Ethernet: true},
		{Index: 5, Name: "bond0", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 5}, Up: false, Ethernet: true},
		{Index: 6, Name: "bond0x", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 6}, Up: true, Ethernet: true},
		{Index: 7, Name: "ens4tun", Up: true}, // Not Ethernet.
	}
	sys.setLinks(t, links...)
	el.waitStarted(t, Key{VIP: vip4, Segment: "ens3"})
	el.waitStarted(t, Key{VIP: vip4, Segment: "ens192"})
	time.Sleep(quiet)
	sys.mu.Lock()
	var opened []int
	for k := range sys.conns {
		if k.etherType == etherTypeARP {
			opened = append(opened, k.index)
		}
	}
	sys.mu.Unlock()
	if len(opened) != 2 {
		t.Errorf("opened interfaces %v, want 2 and 3", opened)
	}

	// bond0 comes up: selected now.
	links[4].Up = true
	sys.setLinks(t, links...)
	el.waitStarted(t, Key{VIP: vip4, Segment: "bond0"})

	// A bad pattern is refused.
	if _, err := New(Config{Interfaces: []string{"("}}); err == nil {
		t.Error("New accepted the pattern \"(\"")
	}
}

func TestSegmentAndEligible(t *testing.T) {
	el := newFakeElector()
	other := netip.MustParseAddr("192.0.2.20")
	r, sys := newTestResponder(t, Config{
		Elector:  el,
		Segment:  func(string) string { return "lan" },
		Eligible: func(k Key) bool { return k.VIP != other },
	})
	r.SetVIPs([]netip.Addr{vip4, other})
	run(t, r)
	eth1 := linkInfo{Index: 3, Name: "eth1", MAC: node2MAC, Up: true, Ethernet: true}
	sys.setLinks(t, eth0(), eth1)
	c0 := sys.conn(t, 2, etherTypeARP)
	c1 := sys.conn(t, 3, etherTypeARP)
	key := Key{VIP: vip4, Segment: "lan"}
	el.waitStarted(t, key)

	// One lease for both interfaces, announced and answered on both, each
	// with its own address.
	el.grant(t, key, time.Now().Add(time.Hour))
	expectAnnouncements(t, c0, vip4, DefaultGratuitousCount)
	expectAnnouncements(t, c1, vip4, DefaultGratuitousCount)
	expectARPReply(t, c0, vip4, nodeMAC)
	expectARPReply(t, c1, vip4, node2MAC)

	// The other interface's announcement is no conflict.
	c0.feed(t, arpFrameOf(t, layers.ARPRequest, node2MAC, vip4, make(net.HardwareAddr, 6), vip4, layers.EthernetBroadcast))
	c0.none(t, quiet)
	if n := r.Stats().Conflicts; n != 0 {
		t.Errorf("%d conflicts from the node's own interfaces", n)
	}

	// Not eligible: no campaign, no answer.
	el.mu.Lock()
	n := len(el.campaigns)
	el.mu.Unlock()
	if n != 1 {
		t.Errorf("%d campaigns, want 1", n)
	}
	c0.feed(t, arpRequest(t, clientMAC, client4, other))
	c0.none(t, quiet)

	// One interface down: the other still answers, the lease is kept.
	eth1.Up = false
	sys.setLinks(t, eth0(), eth1)
	deadline := time.Now().Add(waitTimeout)
	for !c1.isClosed() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !c1.isClosed() {
		t.Fatal("connection of the interface that went down still open")
	}
	expectARPReply(t, c0, vip4, nodeMAC)
	select {
	case k := <-el.ended:
		t.Fatalf("campaign for %s ended while an interface of its segment is up", k)
	default:
	}
}

func TestLinkDownReleases(t *testing.T) {
	el := newFakeElector()
	r, sys := newTestResponder(t, Config{Elector: el})
	r.SetVIPs([]netip.Addr{vip4})
	run(t, r)
	sys.setLinks(t, eth0())
	c := sys.conn(t, 2, etherTypeARP)
	key := Key{VIP: vip4, Segment: "eth0"}
	el.waitStarted(t, key)
	el.grant(t, key, time.Now().Add(time.Hour))
	expectAnnouncements(t, c, vip4, DefaultGratuitousCount)

	down := eth0()
	down.Up = false
	sys.setLinks(t, down)
	el.waitEnded(t, key)
	if !c.isClosed() {
		t.Error("connection still open after the link went down")
	}

	// Up again: a new campaign on a new connection.
	sys.setLinks(t, eth0())
	el.waitStarted(t, key)
	c = sys.conn(t, 2, etherTypeARP)
	el.grant(t, key, time.Now().Add(time.Hour))
	expectAnnouncements(t, c, vip4, DefaultGratuitousCount)
	expectARPReply(t, c, vip4, nodeMAC)

	// The link disappears: released too.
	sys.setLinks(t)
	el.waitEnded(t, key)

	// VIP withdrawn: released.
	sys.setLinks(t, eth0())
	el.waitStarted(t, key)
	r.SetVIPs(nil)
	el.waitEnded(t, key)
}

func TestCancelStopsAnswering(t *testing.T) {
	el := newFakeElector()
	r, sys := newTestResponder(t, Config{Elector: el})
	r.SetVIPs([]netip.Addr{vip4})
	stop := run(t, r)
	sys.setLinks(t, eth0())
	c := sys.conn(t, 2, etherTypeARP)
	key := Key{VIP: vip4, Segment: "eth0"}
	el.waitStarted(t, key)
	el.grant(t, key, time.Now().Add(time.Hour))
	expectAnnouncements(t, c, vip4, DefaultGratuitousCount)

	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
	// Every campaign ended (released) before Run returned.
	select {
	case k := <-el.ended:
		if k != key {
			t.Errorf("campaign for %s ended, want %s", k, key)
		}
	default:
		t.Error("Run returned before the campaign ended")
	}
	if !c.isClosed() {
		t.Error("connection open after Run returned")
	}
	if s := r.Status(); len(s) != 0 {
		t.Errorf("status after Run: %+v", s)
	}
	if err := r.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded")
	}
}

func TestHostileFrames(t *testing.T) {
	r, sys := newTestResponder(t, Config{MaxReplyRate: 20, GratuitousCount: -1})
	r.SetVIPs([]netip.Addr{vip4, vip6})
	run(t, r)
	sys.setLinks(t, eth0())
	arpConn := sys.conn(t, 2, etherTypeARP)
	ndpConn := sys.conn(t, 2, etherTypeIPv6)
	time.Sleep(quiet) // Let the LocalElector's campaigns start.

	good := arpRequest(t, clientMAC, client4, vip4)
	junk := [][]byte{
		nil, {0}, good[:20], good[:ethHeaderLen+27], bytes.Repeat([]byte{0xff}, 1500), make([]byte, 60),
		arpRequest(t, clientMAC, client4, netip.MustParseAddr("192.0.2.99")),
		arpFrameOf(t, layers.ARPRequest, node2MAC, vip4, make(net.HardwareAddr, 6), vip4, layers.EthernetBroadcast),
	}
	for range 50 {
		for _, f := range junk {
			arpConn.feed(t, f)
		}
	}
	for _, err := range []error{syscall.ENETDOWN, errors.New("something odd")} {
		arpConn.readError(t, err)
	}
	ns := neighborSolicitation(t, clientMAC, client6, vip6)
	bad := bytes.Clone(ns)
	bad[len(bad)-1] ^= 1 // Checksum no longer right.
	for range 50 {
		ndpConn.feed(t, bad)
		ndpConn.feed(t, ns[:len(ns)-10])
	}
	arpConn.none(t, quiet)
	ndpConn.none(t, 0)

	// Still answering.
	expectARPReply(t, arpConn, vip4, nodeMAC)

	// A flood from one station is answered up to the limit; another
	// station is still answered.
	floodStart := time.Now()
	for range 200 {
		arpConn.feed(t, good)
	}
	// Fixed windows of a second: a flood that spans n windows gets up to
	// n times the limit.
	limit := 20 * (int(time.Since(floodStart)/time.Second) + 2)
	replies := 0
	for done := false; !done; {
		select {
		case <-arpConn.sent:
			replies++
		case <-time.After(quiet):
			done = true
		}
	}
	if replies > limit || replies == 0 {
		t.Errorf("%d replies to a flood of 200 requests from one station, limit 20 per second", replies)
	}
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xc2}
	arpConn.feed(t, arpRequest(t, other, client4, vip4))
	if f := arpConn.next(t); !bytes.Equal(f.dst, other) {
		t.Errorf("reply to %s, want %s", f.dst, other)
	}

	s := r.Stats()
	if s.Malformed < 50*5 || s.Conflicts != 50 || s.RateLimited == 0 || s.Ignored < 50 {
		t.Errorf("stats %+v", s)
	}
}

func TestSetVIPsRejects(t *testing.T) {
	r, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetVIPs([]netip.Addr{vip4, netip.MustParseAddr("224.0.0.1")}); err == nil {
		t.Error("SetVIPs accepted a multicast address")
	}
	for _, cfg := range []Config{{GratuitousInterval: -1}, {RefreshInterval: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func TestLocalElector(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	holds := make(chan time.Time, 2)
	done := make(chan error)
	go func() {
		done <- LocalElector{}.Campaign(ctx, Key{VIP: vip4, Segment: "eth0"}, func(t time.Time) { holds <- t })
	}()
	if until := <-holds; time.Until(until) < 24*time.Hour {
		t.Errorf("LocalElector holds until %v", until)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Campaign returned %v", err)
	}
	if until := <-holds; !until.IsZero() {
		t.Errorf("last hold %v, want zero", until)
	}
}
