package conntrack_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/testutil"
)

// trafficWait bounds every wait for the network in these tests.
const trafficWait = 10 * time.Second

// Header lengths of the frames the tracker counts (skb->len at tc, Ethernet
// header included).
const (
	ethHdrLen  = 14
	ipv4HdrLen = 20 // Linux sends no IPv4 options
	ipv6HdrLen = 40
	udpHdrLen  = 8
	icmpHdrLen = 8  // type, code, checksum and the echo identifier and sequence
	tcpHdrLen  = 20 // without options
)

// TCP flags as in Entry.RxFlagsSeen and TxFlagsSeen.
const (
	tcpFIN conntrack.TCPFlags = 0x01
	tcpSYN conntrack.TCPFlags = 0x02
	tcpACK conntrack.TCPFlags = 0x10
)

// trafficRig is a two-node topology whose node 0 (the client) has the tracker
// attached to eth0, tracking into a table of its own.
type trafficRig struct {
	top            *testutil.Topology
	client, server *testutil.Node
	tbl            *conntrack.Table
	v6             bool
}

// newTrafficRig builds the topology and a table with the timeouts to, and
// attaches the tracker to the client's eth0. Everything goes at cleanup.
func newTrafficRig(t *testing.T, v6 bool, to conntrack.Timeouts) *trafficRig {
	t.Helper()
	testutil.RequirePrivileged(t)
	top := testutil.NewTopology(t, testutil.TopologyConfig{})
	tbl, err := conntrack.New(conntrack.Config{MaxEntries: 1024, Timeouts: to})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tbl.Close(); err != nil {
			t.Error(err)
		}
	})
	rig := &trafficRig{top: top, client: top.Nodes[0], server: top.Nodes[1], tbl: tbl, v6: v6}
	tr, err := trafficAttach(tbl, rig.client)
	testutil.SkipOrFail(t, err)
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
	})
	return rig
}

// trafficAttach attaches a tracker into tbl to node's eth0, in node's namespace.
func trafficAttach(tbl *conntrack.Table, node *testutil.Node) (*conntrack.Tracker, error) {
	var tr *conntrack.Tracker
	err := node.NS.Do(func() error {
		var err error
		tr, err = tbl.Attach(node.Index)
		return err
	})
	return tr, err
}

// trafficEachFamily runs fn in parallel subtests for IPv4 and IPv6.
func trafficEachFamily(t *testing.T, fn func(t *testing.T, v6 bool)) {
	t.Parallel()
	for _, v6 := range []bool{false, true} {
		name := "IPv4"
		if v6 {
			name = "IPv6"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, v6)
		})
	}
}

// trafficAddr is node's address in the family v6 selects.
func trafficAddr(node *testutil.Node, v6 bool) netip.Addr {
	if v6 {
		return node.Addr6.Addr()
	}
	return node.Addr.Addr()
}

// trafficNetwork returns proto ("tcp", "udp") with the family's digit.
func trafficNetwork(proto string, v6 bool) string {
	if v6 {
		return proto + "6"
	}
	return proto + "4"
}

// trafficIPHdrLen is the IP header length of the family.
func trafficIPHdrLen(v6 bool) int {
	if v6 {
		return ipv6HdrLen
	}
	return ipv4HdrLen
}

// trafficAddrPort converts a socket address to a netip.AddrPort without the
// IPv4-mapped form the net package gives IPv4 addresses.
func trafficAddrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// trafficLookup finds f in the table, failing the test if it is not tracked.
func trafficLookup(t *testing.T, tbl *conntrack.Table, f conntrack.Flow) conntrack.Entry {
	t.Helper()
	e, err := tbl.Lookup(f)
	if err != nil {
		t.Fatalf("look up %v: %v", f, err)
	}
	return e
}

// trafficWantExpiry checks that e expires timeout after a packet seen between before and after.
func trafficWantExpiry(t *testing.T, e conntrack.Entry, timeout time.Duration, before, after time.Time) {
	t.Helper()
	const slack = 50 * time.Millisecond // jitter of the wall/monotonic conversion
	lo, hi := before.Add(timeout-slack), after.Add(timeout+slack)
	if e.Expires.Before(lo) || e.Expires.After(hi) {
		t.Errorf("%v expires at %v, want %v after its last packet (between %v and %v)", e.Flow, e.Expires, timeout, lo, hi)
	}
	if e.Created.Before(before.Add(-slack)) || e.Created.After(after.Add(slack)) {
		t.Errorf("%v created at %v, want between %v and %v", e.Flow, e.Created, before, after)
	}
}

// trafficDump reads every entry of tbl, keyed by flow.
func trafficDump(t *testing.T, tbl *conntrack.Table) map[conntrack.Flow]conntrack.Entry {
	t.Helper()
	m := map[conntrack.Flow]conntrack.Entry{}
	for e, err := range tbl.Iterate() {
		if err != nil {
			t.Fatalf("iterate: %v", err)
		}
		m[e.Flow] = e
	}
	return m
}

// trafficWaitFor waits for errc's value, at most trafficWait.
func trafficWaitFor(errc <-chan error, what string) error {
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	case <-time.After(trafficWait):
		return fmt.Errorf("%s: no result after %v", what, trafficWait)
	}
}

// trafficTCPEcho runs one TCP connection from the client to an echo server on the
// server node: the client sends payload, closes its side, reads the echo up
// to the server's FIN and closes. It returns once both sides are closed, with
// the connection's client and server addresses.
func trafficTCPEcho(rig *trafficRig, payload []byte) (client, server netip.AddrPort, err error) {
	deadline := time.Now().Add(trafficWait)
	var ln *net.TCPListener
	err = rig.server.NS.Do(func() error {
		var err error
		ln, err = net.ListenTCP(trafficNetwork("tcp", rig.v6), net.TCPAddrFromAddrPort(netip.AddrPortFrom(trafficAddr(rig.server, rig.v6), 0)))
		return err
	})
	if err != nil {
		return client, server, fmt.Errorf("listen: %w", err)
	}
	server = trafficAddrPort(ln.Addr())

	served := make(chan error, 1)
	go func() {
		served <- func() error {
			defer ln.Close()
			ln.SetDeadline(deadline)
			c, err := ln.AcceptTCP()
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(deadline)
			buf := make([]byte, 1024)
			n := 0
			for {
				r, err := c.Read(buf)
				if _, werr := c.Write(buf[:r]); werr != nil {
					return werr
				}
				n += r
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
			}
			if n != len(payload) {
				return fmt.Errorf("echoed %d bytes, want %d", n, len(payload))
			}
			return c.Close() // FIN after the echo
		}()
	}()

	var c *net.TCPConn
	err = rig.client.NS.Do(func() error {
		d := net.Dialer{Deadline: deadline}
		conn, err := d.Dial(trafficNetwork("tcp", rig.v6), server.String())
		if err != nil {
			return err
		}
		c = conn.(*net.TCPConn)
		return nil
	})
	if err != nil {
		ln.Close()
		return client, server, errors.Join(fmt.Errorf("dial: %w", err), trafficWaitFor(served, "serve"))
	}
	client = trafficAddrPort(c.LocalAddr())
	cerr := func() error {
		defer c.Close()
		c.SetDeadline(deadline)
		if _, err := c.Write(payload); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		if err := c.CloseWrite(); err != nil {
			return fmt.Errorf("close write: %w", err)
		}
		echo, err := io.ReadAll(c) // up to the server's FIN
		if err != nil {
			return fmt.Errorf("read echo: %w", err)
		}
		if !bytes.Equal(echo, payload) {
			return fmt.Errorf("echo of %d bytes differs from the %d sent", len(echo), len(payload))
		}
		return c.Close()
	}()
	return client, server, errors.Join(cerr, trafficWaitFor(served, "serve"))
}

func TestTrafficTCP(t *testing.T) {
	trafficEachFamily(t, func(t *testing.T, v6 bool) {
		const closing = 7 * time.Second
		rig := newTrafficRig(t, v6, conntrack.Timeouts{TCPClosing: closing})
		payload := bytes.Repeat([]byte("netblocks conntrack "), 250) // 5000 bytes: several segments

		before := time.Now()
		client, server, err := trafficTCPEcho(rig, payload)
		if err != nil {
			t.Fatal(err)
		}
		flow := conntrack.Flow{Src: client, Dst: server, Proto: conntrack.TCP}
		if client.Addr() != trafficAddr(rig.client, v6) || server.Addr() != trafficAddr(rig.server, v6) {
			t.Fatalf("connection %v, want between the nodes", flow)
		}
		// Both FINs have crossed the hook (ours on the way out, the server's
		// before our read saw EOF); only our last ACK may still be on its way.
		e := trafficLookup(t, rig.tbl, flow)
		after := time.Now()
		t.Logf("%v", e)

		if e.Flow != flow {
			t.Errorf("entry flow %v, want %v", e.Flow, flow)
		}
		// The reverse direction finds the same entry.
		if r := trafficLookup(t, rig.tbl, flow.Reverse()); r.Flow != flow {
			t.Errorf("lookup of the reply direction found %v, want %v", r.Flow, flow)
		}
		if e.Direction != conntrack.Out {
			t.Errorf("direction %v, want %v (the SYN left through egress)", e.Direction, conntrack.Out)
		}
		if e.State != conntrack.StateClosing {
			t.Errorf("state %v, want %v", e.State, conntrack.StateClosing)
		}
		if e.TxPackets == 0 || e.RxPackets == 0 {
			t.Errorf("TxPackets %d, RxPackets %d: want packets both ways", e.TxPackets, e.RxPackets)
		}
		for _, c := range []struct {
			name string
			seen conntrack.TCPFlags
		}{{"TxFlagsSeen", e.TxFlagsSeen}, {"RxFlagsSeen", e.RxFlagsSeen}} {
			if want := tcpSYN | tcpACK | tcpFIN; c.seen&want != want {
				t.Errorf("%s %#02x, want SYN, ACK and FIN (%#02x)", c.name, uint8(c.seen), uint8(want))
			}
		}
		wantFlags := conntrack.FlagRxClosing | conntrack.FlagTxClosing | conntrack.FlagSeenNonSyn | conntrack.FlagSeenReply
		if e.Flags != wantFlags {
			t.Errorf("flags %v, want %v", e.Flags, wantFlags)
		}
		// Every packet counted has its headers, and both ways carried the
		// payload (a GSO packet counts as one, with its headers once).
		hdr := uint64(ethHdrLen + trafficIPHdrLen(v6) + tcpHdrLen)
		if low := uint64(len(payload)) + e.TxPackets*hdr; e.TxBytes < low {
			t.Errorf("TxBytes %d for %d packets, want at least %d", e.TxBytes, e.TxPackets, low)
		}
		if low := uint64(len(payload)) + e.RxPackets*hdr; e.RxBytes < low {
			t.Errorf("RxBytes %d for %d packets, want at least %d", e.RxBytes, e.RxPackets, low)
		}
		if e.RevNAT != 0 || e.User != 0 {
			t.Errorf("RevNAT %d, User %d: the standalone tracker sets neither", e.RevNAT, e.User)
		}
		trafficWantExpiry(t, e, closing, before, after)
		trafficWantStatsMatch(t, rig.tbl)

		// Not expired yet: GC now keeps it (and everything else, which is
		// younger still or has a longer timeout).
		n, err := rig.tbl.GC(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("GC now deleted %d entries, want 0", n)
		}
		trafficLookup(t, rig.tbl, flow)

		// Once the closing timeout has passed, GC removes it; the other
		// entries (IPv6 neighbour discovery) have the 60 s non-TCP timeout.
		n, err = rig.tbl.GC(time.Now().Add(closing))
		if err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("GC after the closing timeout deleted %d entries, want 1", n)
		}
		if _, err := rig.tbl.Lookup(flow); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Errorf("look up %v after GC: %v, want ErrKeyNotExist", flow, err)
		}
	})
}

// trafficUDPEcho sends n datagrams of payload from the client node's port
// clientPort to an echo server on the server node, reading each echo before
// the next. It returns the client and server addresses.
func trafficUDPEcho(client, server *testutil.Node, v6 bool, clientPort uint16, n int, payload []byte) (netip.AddrPort, netip.AddrPort, error) {
	deadline := time.Now().Add(trafficWait)
	var srv, cli *net.UDPConn
	err := server.NS.Do(func() error {
		var err error
		srv, err = net.ListenUDP(trafficNetwork("udp", v6), net.UDPAddrFromAddrPort(netip.AddrPortFrom(trafficAddr(server, v6), 0)))
		return err
	})
	if err != nil {
		return netip.AddrPort{}, netip.AddrPort{}, fmt.Errorf("listen: %w", err)
	}
	defer srv.Close()
	srvAddr := trafficAddrPort(srv.LocalAddr())
	err = client.NS.Do(func() error {
		var err error
		cli, err = net.ListenUDP(trafficNetwork("udp", v6), net.UDPAddrFromAddrPort(netip.AddrPortFrom(trafficAddr(client, v6), clientPort)))
		return err
	})
	if err != nil {
		return netip.AddrPort{}, srvAddr, fmt.Errorf("bind client: %w", err)
	}
	defer cli.Close()
	cliAddr := trafficAddrPort(cli.LocalAddr())

	served := make(chan error, 1)
	go func() {
		served <- func() error {
			srv.SetDeadline(deadline)
			buf := make([]byte, 2048)
			for range n {
				r, from, err := srv.ReadFromUDPAddrPort(buf)
				if err != nil {
					return err
				}
				if _, err := srv.WriteToUDPAddrPort(buf[:r], from); err != nil {
					return err
				}
			}
			return nil
		}()
	}()

	cerr := func() error {
		cli.SetDeadline(deadline)
		buf := make([]byte, 2048)
		for i := range n {
			if _, err := cli.WriteToUDPAddrPort(payload, srvAddr); err != nil {
				return fmt.Errorf("send datagram %d: %w", i, err)
			}
			r, from, err := cli.ReadFromUDPAddrPort(buf)
			if err != nil {
				return fmt.Errorf("read echo %d: %w", i, err)
			}
			if trafficAddrPort(net.UDPAddrFromAddrPort(from)) != srvAddr || !bytes.Equal(buf[:r], payload) {
				return fmt.Errorf("echo %d: %d bytes from %v, want %d from %v", i, r, from, len(payload), srvAddr)
			}
		}
		return nil
	}()
	if cerr != nil {
		srv.Close() // unblocks the server
	}
	return cliAddr, srvAddr, errors.Join(cerr, trafficWaitFor(served, "serve"))
}

// trafficWantUDPEntry checks the entry of a UDP exchange of n datagrams and n
// echoes of payloadLen bytes, started by the client behind the tracker.
func trafficWantUDPEntry(t *testing.T, e conntrack.Entry, flow conntrack.Flow, v6 bool, n, payloadLen int) {
	t.Helper()
	frame := uint64(ethHdrLen + trafficIPHdrLen(v6) + udpHdrLen + payloadLen)
	want := conntrack.Entry{
		Flow:      flow,
		Direction: conntrack.Out,
		State:     conntrack.StateEstablished,
		TxPackets: uint64(n), TxBytes: uint64(n) * frame,
		RxPackets: uint64(n), RxBytes: uint64(n) * frame,
		Flags: conntrack.FlagSeenReply,
	}
	got := e
	got.Created, got.Expires = time.Time{}, time.Time{}
	if got != want {
		t.Errorf("entry\n got  %v\n want %v", got, want)
	}
}

func TestTrafficUDP(t *testing.T) {
	trafficEachFamily(t, func(t *testing.T, v6 bool) {
		const (
			n          = 3
			clientPort = 40000
			nonTCP     = 42 * time.Second
		)
		rig := newTrafficRig(t, v6, conntrack.Timeouts{NonTCP: nonTCP})
		payload := bytes.Repeat([]byte{0xa5}, 100)

		before := time.Now()
		client, server, err := trafficUDPEcho(rig.client, rig.server, v6, clientPort, n, payload)
		if err != nil {
			t.Fatal(err)
		}
		flow := conntrack.Flow{Src: client, Dst: server, Proto: conntrack.UDP}
		e := trafficLookup(t, rig.tbl, flow)
		after := time.Now()
		t.Logf("%v", e)
		trafficWantUDPEntry(t, e, flow, v6, n, len(payload))
		trafficWantExpiry(t, e, nonTCP, before, after)

		trafficWantStatsMatch(t, rig.tbl)
	})
}

// trafficWantStatsMatch checks that the table's stats add up to its entries
// (for a table none of whose entries was deleted or replaced): a New for
// each entry, an Established for each later packet in an entry's original
// direction, a Reply for each packet the other way. The eth0 of either rig
// carries both families (IPv6 link-local traffic comes and goes at any time),
// so the stats are compared with every entry, read between two equal reads of
// the stats.
func trafficWantStatsMatch(t *testing.T, tbl *conntrack.Table) {
	t.Helper()
	for range 20 {
		s, err := tbl.Stats()
		if err != nil {
			t.Fatal(err)
		}
		entries := trafficDump(t, tbl)
		again, err := tbl.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if again != s {
			continue // a packet came meanwhile
		}
		var want conntrack.Stats
		for _, e := range entries {
			orig, reply := e.TxPackets, e.RxPackets
			if e.Direction == conntrack.In {
				orig, reply = reply, orig
			}
			want.New++
			want.Established += orig - 1
			want.Reply += reply
		}
		want.Related, want.Untracked = s.Related, s.Untracked // not in any entry
		if s != want {
			t.Errorf("stats %+v, want %+v from the %d entries", s, want, len(entries))
		}
		return
	}
	t.Errorf("stats kept changing while the table was read")
}

// trafficPingEcho sends k ICMP or ICMPv6 echo requests with identifier id and
// payload from the client node to the server node over a raw socket, each
// after the reply to the last.
func trafficPingEcho(client, server *testutil.Node, v6 bool, id uint16, k int, payload []byte) error {
	deadline := time.Now().Add(trafficWait)
	src, dst := trafficAddr(client, v6), trafficAddr(server, v6)
	netw, proto, replyType, hdr := "ip4:icmp", layers.IPProtocolICMPv4, uint8(layers.ICMPv4TypeEchoReply), ipv4HdrLen
	if v6 {
		netw, proto, replyType, hdr = "ip6:ipv6-icmp", layers.IPProtocolICMPv6, uint8(layers.ICMPv6TypeEchoReply), ipv6HdrLen
	}
	var conn net.PacketConn
	err := client.NS.Do(func() error {
		var err error
		conn, err = net.ListenPacket(netw, src.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("open raw socket: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(deadline)

	buf := make([]byte, 2048)
	for seq := range uint16(k) {
		// The IP header is the kernel's to write: send what follows it.
		pkt, err := testutil.Packet{Src: src, Dst: dst, Proto: proto, ICMPID: id, ICMPSeq: seq, Payload: payload}.BuildIP()
		if err != nil {
			return err
		}
		if _, err := conn.WriteTo(pkt[hdr:], &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return fmt.Errorf("send echo request %d: %w", seq, err)
		}
		for { // the socket sees every ICMP message: wait for our reply
			r, _, err := conn.ReadFrom(buf)
			if err != nil {
				return fmt.Errorf("read echo reply %d: %w", seq, err)
			}
			m := buf[:r]
			if r >= icmpHdrLen && m[0] == replyType && m[4] == byte(id>>8) && m[5] == byte(id) &&
				m[6] == byte(seq>>8) && m[7] == byte(seq) {
				if !bytes.Equal(m[icmpHdrLen:], payload) {
					return fmt.Errorf("echo reply %d carries %x, want %x", seq, m[icmpHdrLen:], payload)
				}
				break
			}
		}
	}
	return nil
}

func TestTrafficPing(t *testing.T) {
	trafficEachFamily(t, func(t *testing.T, v6 bool) {
		const (
			k  = 4
			id = 0x4e42
		)
		rig := newTrafficRig(t, v6, conntrack.Timeouts{})
		payload := []byte("netblocks ping payload, 32 bytes")
		if err := trafficPingEcho(rig.client, rig.server, v6, id, k, payload); err != nil {
			t.Fatal(err)
		}

		proto := conntrack.ICMP
		if v6 {
			proto = conntrack.ICMPv6
		}
		flow := conntrack.Flow{
			Src:   netip.AddrPortFrom(trafficAddr(rig.client, v6), id),
			Dst:   netip.AddrPortFrom(trafficAddr(rig.server, v6), 0),
			Proto: proto,
		}
		e := trafficLookup(t, rig.tbl, flow)
		t.Logf("%v", e)
		frame := uint64(ethHdrLen + trafficIPHdrLen(v6) + icmpHdrLen + len(payload))
		want := conntrack.Entry{
			Flow:      flow,
			Direction: conntrack.Out,
			State:     conntrack.StateEstablished,
			TxPackets: k, TxBytes: k * frame,
			RxPackets: k, RxBytes: k * frame,
			Flags: conntrack.FlagSeenReply,
		}
		got := e
		got.Created, got.Expires = time.Time{}, time.Time{}
		if got != want {
			t.Errorf("entry\n got  %v\n want %v", got, want)
		}

		// The replies found the requests' entry: no flow the other way.
		for f := range trafficDump(t, rig.tbl) {
			if f.Proto == proto && f.Src.Addr() == flow.Dst.Addr() && f.Dst.Port() == id {
				t.Errorf("echo replies created an entry of their own: %v", f)
			}
		}
		trafficWantStatsMatch(t, rig.tbl)
	})
}

// trafficStaticNeighbours makes the nodes' addresses permanent neighbours of each
// other, so that no ARP or neighbour discovery passes between them.
func trafficStaticNeighbours(top *testutil.Topology) error {
	for i, node := range top.Nodes {
		peer := top.Nodes[1-i]
		for _, n := range []*netlink.Neigh{
			{LinkIndex: node.Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: peer.Addr.Addr().AsSlice(), HardwareAddr: peer.HWAddr},
			{LinkIndex: node.Index, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT, IP: peer.Addr6.Addr().AsSlice(), HardwareAddr: peer.HWAddr},
		} {
			if err := node.NS.Netlink().NeighSet(n); err != nil {
				return fmt.Errorf("add neighbour %v in %s: %w", n.IP, node.NS.Name(), err)
			}
		}
	}
	return nil
}

func TestTrafficICMPErrorRelated(t *testing.T) {
	trafficEachFamily(t, func(t *testing.T, v6 bool) {
		const closedPort = 33434 // nothing listens in the server's fresh namespace
		rig := newTrafficRig(t, v6, conntrack.Timeouts{})
		// Without neighbour discovery, nothing but the error itself can be an
		// ICMPv6 flow between the two addresses.
		if err := trafficStaticNeighbours(rig.top); err != nil {
			t.Fatal(err)
		}
		client, server := trafficAddr(rig.client, v6), trafficAddr(rig.server, v6)
		isErrorFlow := func(f conntrack.Flow) bool {
			return (f.Proto == conntrack.ICMP || f.Proto == conntrack.ICMPv6) &&
				(f.Src.Addr() == server && f.Dst.Addr() == client || f.Src.Addr() == client && f.Dst.Addr() == server)
		}
		before, err := rig.tbl.Stats()
		if err != nil {
			t.Fatal(err)
		}
		for f := range trafficDump(t, rig.tbl) {
			if isErrorFlow(f) {
				t.Fatalf("ICMP flow %v between the nodes before the test", f)
			}
		}

		var c *net.UDPConn
		err = rig.client.NS.Do(func() error {
			var err error
			c, err = net.DialUDP(trafficNetwork("udp", v6), nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(server, closedPort)))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(trafficWait))
		payload := []byte("anyone there?")
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		// The port unreachable error reaches the connected socket as
		// ECONNREFUSED, after it crossed the ingress hook.
		if _, err := c.Read(make([]byte, 64)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("read after sending to a closed port: %v, want ECONNREFUSED", err)
		}

		after, err := rig.tbl.Stats()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("stats before %+v, after %+v", before, after)
		if got := after.Related - before.Related; got != 1 {
			t.Errorf("Related grew by %d, want 1", got)
		}
		entries := trafficDump(t, rig.tbl)
		for f, e := range entries {
			if isErrorFlow(f) {
				t.Errorf("the ICMP error made an entry of its own: %v", e)
			}
		}
		// The error changed nothing in the flow it is about.
		flow := conntrack.Flow{Src: trafficAddrPort(c.LocalAddr()), Dst: netip.AddrPortFrom(server, closedPort), Proto: conntrack.UDP}
		e, ok := entries[flow]
		if !ok {
			t.Fatalf("no entry for %v; table: %v", flow, entries)
		}
		t.Logf("%v", e)
		want := conntrack.Entry{
			Flow: flow, Direction: conntrack.Out, State: conntrack.StateNew,
			TxPackets: 1, TxBytes: uint64(ethHdrLen + trafficIPHdrLen(v6) + udpHdrLen + len(payload)),
		}
		got := e
		got.Created, got.Expires = time.Time{}, time.Time{}
		if got != want {
			t.Errorf("entry\n got  %v\n want %v", got, want)
		}
	})
}
