package l2announce_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/testutil"
	"github.com/netblocks/netblocks/l2announce"
	"github.com/netblocks/netblocks/l2announce/internal/l2test"
)

// VIPs of the namespace tests, inside the topology's prefixes so that the
// client's kernel resolves them on its link.
var (
	nsVIP4 = netip.MustParseAddr("192.0.2.200")
	nsVIP6 = netip.MustParseAddr("2001:db8::200")
)

// setSysctl writes value to the sysctl at path (under /proc/sys/net) of ns.
func setSysctl(tb testing.TB, ns *testutil.NetNS, path, value string) {
	tb.Helper()
	err := ns.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys/net", path), []byte(value), 0o644)
	})
	if err != nil {
		tb.Fatalf("set %s in %s: %v", path, ns.Name(), err)
	}
}

// neighbour returns the hardware address the kernel of node has for addr on
// its link, if it has a usable one.
func neighbour(tb testing.TB, node *testutil.Node, addr netip.Addr) net.HardwareAddr {
	tb.Helper()
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	neighs, err := node.NS.Netlink().NeighList(node.Index, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		tb.Fatalf("list neighbours: %v", err)
	}
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == addr &&
			n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0 {
			return n.HardwareAddr
		}
	}
	return nil
}

// waitNeighbour waits until the kernel of node maps addr to mac.
func waitNeighbour(tb testing.TB, node *testutil.Node, addr netip.Addr, mac net.HardwareAddr, what string) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := neighbour(tb, node, addr)
		if bytes.Equal(got, mac) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: the client maps %s to %v, want %s", what, addr, got, mac)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNamespaceLocalElector runs a Responder with the local elector in a node
// namespace on a bridge and resolves its VIPs from a client namespace: with
// the client's kernel (after announcements, and by asking), with
// mdlayher/arp, and with neighbour solicitations.
func TestNamespaceLocalElector(t *testing.T) {
	testutil.RequirePrivileged(t)
	top := testutil.NewTopology(t, testutil.TopologyConfig{Nodes: 2, Bridge: true})
	node, client := top.Nodes[0], top.Nodes[1]
	// The client takes announcements of neighbours it does not know yet:
	// Linux creates an entry from an unsolicited advertisement only on a
	// router (RFC 9131), so the client forwards IPv6.
	setSysctl(t, client.NS, "ipv4/conf/eth0/arp_accept", "1")
	setSysctl(t, client.NS, "ipv6/conf/eth0/forwarding", "1")
	setSysctl(t, client.NS, "ipv6/conf/eth0/accept_untracked_na", "1")

	r, err := l2announce.New(l2announce.Config{
		Interfaces:   []string{"^eth0$"},
		NetNS:        filepath.Join("/var/run/netns", node.NS.Name()),
		MaxReplyRate: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetVIPs([]netip.Addr{nsVIP4, nsVIP6}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	// Announcements alone teach the client's kernel where the VIPs are.
	waitNeighbour(t, client, nsVIP4, node.HWAddr, "after gratuitous ARP")
	waitNeighbour(t, client, nsVIP6, node.HWAddr, "after unsolicited neighbour advertisements")

	// The client's kernel resolves them when asked, too.
	for _, vip := range []netip.Addr{nsVIP4, nsVIP6} {
		if err := client.NS.Netlink().NeighDel(&netlink.Neigh{LinkIndex: client.Index, IP: vip.AsSlice()}); err != nil {
			t.Fatalf("delete neighbour %s: %v", vip, err)
		}
		err := client.NS.Do(func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(vip, 9).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("resolve me"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		waitNeighbour(t, client, vip, node.HWAddr, "after the kernel asked")
	}

	// mdlayher/arp's client.
	var ac *arp.Client
	err = client.NS.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		ac, err = arp.Dial(ifi)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	ac.SetDeadline(time.Now().Add(5 * time.Second))
	mac, err := ac.Resolve(nsVIP4)
	if err != nil || !bytes.Equal(mac, node.HWAddr) {
		t.Fatalf("arp.Client.Resolve(%s) = %v, %v; want %s", nsVIP4, mac, err, node.HWAddr)
	}

	// Raw requests, and nothing for other addresses.
	cl := l2test.NewClient(t, client.NS, "eth0", client.Addr.Addr(), client.Addr6.Addr())
	for _, vip := range []netip.Addr{nsVIP4, nsVIP6} {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		rep, err := cl.Resolve(rctx, vip, nil)
		rcancel()
		if err != nil || !bytes.Equal(rep.MAC, node.HWAddr) {
			t.Fatalf("resolve %s: %v from %s, want %s", vip, err, rep.MAC, node.HWAddr)
		}
	}
	for _, other := range []netip.Addr{netip.MustParseAddr("192.0.2.201"), netip.MustParseAddr("2001:db8::201")} {
		rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		rep, err := cl.Resolve(rctx, other, nil)
		rcancel()
		if err == nil {
			t.Errorf("%s answered for %s, which it does not announce", rep.MAC, other)
		}
	}

	// Link down: the node gives its VIPs up and stops answering.
	h := node.NS.Netlink()
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(r.Status()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("status %+v after the link went down", r.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	rep, err := cl.Resolve(rctx, nsVIP4, nil)
	rcancel()
	if err != nil || !bytes.Equal(rep.MAC, node.HWAddr) {
		t.Fatalf("resolve %s after the link came up: %v from %s", nsVIP4, err, rep.MAC)
	}

	// Canceled: silent at once.
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v", err)
	}
	done <- nil // For the cleanup.
	rctx, rcancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	rep, err = cl.Resolve(rctx, nsVIP4, nil)
	rcancel()
	if err == nil {
		t.Errorf("%s answered after Run returned", rep.MAC)
	}
	if s := r.Stats(); s.Replies == 0 || s.Announcements == 0 {
		t.Errorf("stats %+v", s)
	}
}
