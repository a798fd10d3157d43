package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/netlinksafe"
	"github.com/netblocks/netblocks/internal/testutil"
)

// kernelState is what Sync manages in a namespace, as sorted strings:
// routes of the main table with the overlay's protocol, and neighbour and
// FDB entries on its device.
type kernelState struct {
	Routes, Neighbors, FDB []string
}

// dumpState reads the kernel state ov manages in ns.
func dumpState(t testing.TB, ns *testutil.NetNS, ov *Overlay) kernelState {
	t.Helper()
	h := ns.Netlink()
	var s kernelState
	routes, err := ownRoutes(h, ov.proto)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		s.Routes = append(s.Routes, fmt.Sprintf("%s via %s dev %d flags %#x", r.Dst, r.Gw, r.LinkIndex, r.Flags))
	}
	if ov.LinkIndex() != 0 {
		for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			ns, err := neighList(h, ov.LinkIndex(), family)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range ns {
				if n.State&netlink.NUD_NOARP == 0 {
					s.Neighbors = append(s.Neighbors, fmt.Sprintf("%s %s state %#x", n.IP, n.HardwareAddr, n.State))
				}
			}
		}
		fdb, err := neighList(h, ov.LinkIndex(), unix.AF_BRIDGE)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range fdb {
			s.FDB = append(s.FDB, fmt.Sprintf("%s dst %s state %#x", n.HardwareAddr, n.IP, n.State))
		}
	}
	slices.Sort(s.Routes)
	slices.Sort(s.Neighbors)
	slices.Sort(s.FDB)
	return s
}

// watcher records the route, neighbour, link and address notifications of a
// namespace that concern an overlay: routes with its protocol or through its
// device, and anything else on its device.
type watcher struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	seen []string
}

// watch starts recording the notifications in ns that concern ov.
func watch(t testing.TB, ns *testutil.NetNS, ov *Overlay) *watcher {
	t.Helper()
	w := &watcher{done: make(chan struct{})}
	h := ns.Handle()
	link := ov.LinkIndex()
	fail := func(err error) {
		select {
		case <-w.done: // closing the subscription's socket fails its receive
		default:
			w.add("error: " + err.Error())
		}
	}

	routes := make(chan netlink.RouteUpdate, 1024)
	neighs := make(chan netlink.NeighUpdate, 1024)
	links := make(chan netlink.LinkUpdate, 1024)
	addrs := make(chan netlink.AddrUpdate, 1024)
	err := errors.Join(
		netlink.RouteSubscribeWithOptions(routes, w.done, netlink.RouteSubscribeOptions{Namespace: &h, ErrorCallback: fail}),
		netlink.NeighSubscribeWithOptions(neighs, w.done, netlink.NeighSubscribeOptions{Namespace: &h, ErrorCallback: fail}),
		netlink.LinkSubscribeWithOptions(links, w.done, netlink.LinkSubscribeOptions{Namespace: &h, ErrorCallback: fail}),
		netlink.AddrSubscribeWithOptions(addrs, w.done, netlink.AddrSubscribeOptions{Namespace: &h, ErrorCallback: fail}),
	)
	if err != nil {
		close(w.done)
		t.Fatalf("subscribe to netlink notifications in %s: %v", ns.Name(), err)
	}
	w.wg.Add(4)
	go func() {
		defer w.wg.Done()
		for u := range routes {
			if u.Protocol == ov.proto || (link != 0 && u.LinkIndex == link) {
				w.add(fmt.Sprintf("route type %d %s", u.Type, u.Route))
			}
		}
	}()
	go func() {
		defer w.wg.Done()
		for u := range neighs {
			if link != 0 && u.LinkIndex == link {
				w.add(fmt.Sprintf("neigh type %d %s family %d", u.Type, u.Neigh.String(), u.Family))
			}
		}
	}()
	go func() {
		defer w.wg.Done()
		for u := range links {
			if link != 0 && int(u.Index) == link {
				w.add(fmt.Sprintf("link type %d %s", u.Header.Type, u.Attrs().Name))
			}
		}
	}()
	go func() {
		defer w.wg.Done()
		for u := range addrs {
			if link != 0 && u.LinkIndex == link {
				w.add(fmt.Sprintf("addr new=%t %s", u.NewAddr, u.LinkAddress.String()))
			}
		}
	}()
	t.Cleanup(func() { w.stop() })
	return w
}

// settle waits until the kernel is done with ov's new device: IPv6 starts
// on a device only once the link watcher has seen it come up (up to a
// second later), and then adds its link-local address and announces its
// addresses and local routes again. Tests that count notifications must
// not count those. settle returns once the device has a usable link-local
// address (in Tunnel and CrossSubnet mode) and 300 ms passed without a
// notification about ov.
func settle(t testing.TB, ns *testutil.NetNS, ov *Overlay) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ov.LinkIndex() != 0 {
		link, err := ns.Netlink().LinkByIndex(ov.LinkIndex())
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := addrList(ns.Netlink(), link, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
			return a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %d has no usable IPv6 link-local address after 5 s: %v", ov.LinkIndex(), addrs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	w := watch(t, ns, ov)
	defer w.stop()
	for seen := -1; ; {
		time.Sleep(300 * time.Millisecond)
		w.mu.Lock()
		n := len(w.seen)
		w.mu.Unlock()
		if n == seen {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("notifications about device %d go on after 5 s", ov.LinkIndex())
		}
		seen = n
	}
}

func (w *watcher) add(s string) {
	w.mu.Lock()
	w.seen = append(w.seen, s)
	w.mu.Unlock()
}

// stop waits a little for notifications still on their way, stops
// recording and returns what was recorded.
func (w *watcher) stop() []string {
	select {
	case <-w.done:
	default:
		time.Sleep(200 * time.Millisecond)
		close(w.done)
		w.wg.Wait()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen
}

// A second Sync with the same peers (in any order) changes nothing, by its
// own count and by the kernel's notifications.
func TestSyncNoChurn(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)

	for _, tc := range []struct {
		mode  Mode
		first Changes // of node 0's first Sync
	}{
		{Tunnel, Changes{Routes: Count{Added: 2}, Neighbors: Count{Added: 2}, FDB: Count{Added: 1}}},
		{CrossSubnet, Changes{Routes: Count{Added: 2}, Neighbors: Count{Added: 1}, FDB: Count{Added: 1}}}, // IPv6 pods tunneled
		{Native, Changes{Routes: Count{Added: 1}}},                                                        // IPv4 pods only
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			t.Parallel()
			nodes := labNodes(t, testutil.NewTopology(t, testutil.TopologyConfig{}), true, tc.mode != Native)
			for _, n := range nodes {
				newOverlay(t, n, Config{Mode: tc.mode, LocalAddr: n.Addr.Addr()})
			}
			a, b := nodes[0], nodes[1]
			settle(t, a.NS, a.ov)
			peers := []Peer{b.ov.Self()}
			w := watch(t, a.NS, a.ov)
			got, err := a.ov.Sync(peers)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.first {
				t.Errorf("first Sync: %v, want %v", got, tc.first)
			}
			// The watcher sees changes: its silence below means something.
			if seen := w.stop(); len(seen) == 0 {
				t.Fatalf("first Sync caused %d netlink notifications, want some:\n%s", len(seen), strings.Join(seen, "\n"))
			}
			before := dumpState(t, a.NS, a.ov)

			// The same set, its pod CIDRs in another order.
			again := b.ov.Self()
			slices.Reverse(again.PodCIDRs)
			w = watch(t, a.NS, a.ov)
			got, err = a.ov.Sync([]Peer{again})
			if err != nil {
				t.Fatal(err)
			}
			if seen := w.stop(); len(seen) > 0 {
				t.Errorf("second Sync caused %d netlink notifications:\n%s", len(seen), strings.Join(seen, "\n"))
			}
			if !got.IsZero() {
				t.Errorf("second Sync: %v, want no change", got)
			}
			if diff := cmp.Diff(before, dumpState(t, a.NS, a.ov)); diff != "" {
				t.Errorf("second Sync changed the kernel state (-before +after):\n%s", diff)
			}
		})
	}
}

// A peer that leaves takes its routes, neighbour and FDB entries with it,
// and its pods become unreachable while the others' stay reachable.
func TestPeerLeaves(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	requirePing(t)

	for _, mode := range []Mode{Tunnel, CrossSubnet, Native} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			top := testutil.NewTopology(t, testutil.TopologyConfig{Nodes: 3, Bridge: true})
			nodes := labNodes(t, top, true, mode != Native)
			for _, n := range nodes {
				newOverlay(t, n, Config{Mode: mode, LocalAddr: n.Addr.Addr()})
				addPod(t, n, n.ov.MTU())
			}
			syncAll(t, nodes)
			a, b, c := nodes[0], nodes[1], nodes[2]
			checkPing(t, a.pod, c.podAddr(false))

			got, err := a.ov.Sync([]Peer{b.ov.Self()})
			if err != nil {
				t.Fatal(err)
			}
			var want Changes
			switch mode {
			case Tunnel:
				want = Changes{Routes: Count{Removed: 2}, Neighbors: Count{Removed: 2}, FDB: Count{Removed: 1}}
			case CrossSubnet:
				want = Changes{Routes: Count{Removed: 2}, Neighbors: Count{Removed: 1}, FDB: Count{Removed: 1}}
			case Native:
				want = Changes{Routes: Count{Removed: 1}}
			}
			if got != want {
				t.Errorf("Sync without peer C: %v, want %v", got, want)
			}

			h := a.NS.Netlink()
			all, err := netlinksafe.Dump(func() ([]netlink.Route, error) {
				return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range all {
				if dst, ok := routeDst(r); ok && slices.ContainsFunc(c.cidrs, dst.Overlaps) {
					t.Errorf("route to departed peer's pods left behind: %s", r)
				}
			}
			self := c.ov.Self()
			if a.ov.LinkIndex() != 0 {
				for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6, unix.AF_BRIDGE} {
					ns, err := neighList(h, a.ov.LinkIndex(), family)
					if err != nil {
						t.Fatal(err)
					}
					for _, n := range ns {
						ip := neighAddr(n)
						if slices.ContainsFunc(c.cidrs, func(p netip.Prefix) bool { return p.Contains(ip) }) ||
							ip == self.NodeAddr || slices.Equal(n.HardwareAddr, self.VTEPMAC) {
							t.Errorf("neighbour or FDB entry of departed peer left behind: %s family %d", n.String(), family)
						}
					}
				}
			}

			if out, err := ping(a.pod, c.podAddr(false), 1, "-W", "1"); err == nil {
				t.Errorf("pod of departed peer still reachable:\n%s", out)
			}
			checkPing(t, a.pod, b.podAddr(false))
		})
	}
}

// Sync's counts of updates: a peer that changes address, VTEP MAC or pod
// CIDRs has its entries replaced, not duplicated.
func TestSyncUpdates(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	top := testutil.NewTopology(t, testutil.TopologyConfig{})
	n := labNodes(t, top, true, false)[0]
	ov := newOverlay(t, n, Config{LocalAddr: n.Addr.Addr()})

	peer := Peer{Name: "p", NodeAddr: netip.MustParseAddr("198.51.100.7"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}
	moved := peer
	moved.NodeAddr = netip.MustParseAddr("198.51.100.8")
	moved.VTEPMAC = DeriveMAC(peer.NodeAddr) // the same MAC at another address
	remac := moved
	remac.VTEPMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 9}
	grown := remac
	grown.PodCIDRs = append(slices.Clone(remac.PodCIDRs), netip.MustParsePrefix("10.9.1.0/24"), netip.MustParsePrefix("fd00:9::/64"))

	for _, step := range []struct {
		name  string
		peers []Peer
		want  Changes
		state kernelState
	}{
		{"add", []Peer{peer}, Changes{Routes: Count{Added: 1}, Neighbors: Count{Added: 1}, FDB: Count{Added: 1}}, kernelState{
			Routes:    []string{fmt.Sprintf("10.9.0.0/24 via 10.9.0.0 dev %d flags 0x4", ov.LinkIndex())},
			Neighbors: []string{fmt.Sprintf("10.9.0.0 %s state 0x80", DeriveMAC(peer.NodeAddr))},
			FDB:       []string{fmt.Sprintf("%s dst 198.51.100.7 state 0x80", DeriveMAC(peer.NodeAddr))},
		}},
		{"move", []Peer{moved}, Changes{FDB: Count{Updated: 1}}, kernelState{
			Routes:    []string{fmt.Sprintf("10.9.0.0/24 via 10.9.0.0 dev %d flags 0x4", ov.LinkIndex())},
			Neighbors: []string{fmt.Sprintf("10.9.0.0 %s state 0x80", DeriveMAC(peer.NodeAddr))},
			FDB:       []string{fmt.Sprintf("%s dst 198.51.100.8 state 0x80", DeriveMAC(peer.NodeAddr))},
		}},
		{"new-mac", []Peer{remac}, Changes{Neighbors: Count{Updated: 1}, FDB: Count{Added: 1, Removed: 1}}, kernelState{
			Routes:    []string{fmt.Sprintf("10.9.0.0/24 via 10.9.0.0 dev %d flags 0x4", ov.LinkIndex())},
			Neighbors: []string{"10.9.0.0 02:00:00:00:00:09 state 0x80"},
			FDB:       []string{"02:00:00:00:00:09 dst 198.51.100.8 state 0x80"},
		}},
		{"grow", []Peer{grown}, Changes{Routes: Count{Added: 2}, Neighbors: Count{Added: 1}}, kernelState{
			Routes: []string{
				fmt.Sprintf("10.9.0.0/24 via 10.9.0.0 dev %d flags 0x4", ov.LinkIndex()),
				fmt.Sprintf("10.9.1.0/24 via 10.9.0.0 dev %d flags 0x4", ov.LinkIndex()),
				fmt.Sprintf("fd00:9::/64 via fd00:9:: dev %d flags 0x4", ov.LinkIndex()),
			},
			Neighbors: []string{"10.9.0.0 02:00:00:00:00:09 state 0x80", "fd00:9:: 02:00:00:00:00:09 state 0x80"},
			FDB:       []string{"02:00:00:00:00:09 dst 198.51.100.8 state 0x80"},
		}},
		{"empty", nil, Changes{Routes: Count{Removed: 3}, Neighbors: Count{Removed: 2}, FDB: Count{Removed: 1}}, kernelState{}},
	} {
		got, err := ov.Sync(step.peers)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got != step.want {
			t.Errorf("%s: Sync reports %v, want %v", step.name, got, step.want)
		}
		if diff := cmp.Diff(step.state, dumpState(t, n.NS, ov)); diff != "" {
			t.Errorf("%s: kernel state (-want +got):\n%s", step.name, diff)
		}
	}
}

// Sync touches no route that is not the overlay's, refuses to take over a
// route to a peer's pod CIDR that is someone else's, and then undoes what
// it had done.
func TestSyncForeignRoutes(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	top := testutil.NewTopology(t, testutil.TopologyConfig{})
	n := labNodes(t, top, true, false)[0]
	ov := newOverlay(t, n, Config{LocalAddr: n.Addr.Addr()})
	h := n.NS.Netlink()

	p1 := Peer{NodeAddr: netip.MustParseAddr("198.51.100.1"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}}
	p2 := Peer{NodeAddr: netip.MustParseAddr("198.51.100.2"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}}
	p3 := Peer{NodeAddr: netip.MustParseAddr("198.51.100.3"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/24")}}

	// A static route elsewhere, one to p3's pod CIDR, and a stale route
	// of the overlay's from an earlier run.
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*netlink.Route{
		{Dst: ipNet(netip.MustParsePrefix("203.0.113.0/24")), Gw: net.ParseIP("192.0.2.2"), Protocol: unix.RTPROT_STATIC},
		{Dst: ipNet(netip.MustParsePrefix("10.3.0.0/24")), Gw: net.ParseIP("192.0.2.2"), Protocol: unix.RTPROT_STATIC},
		{Dst: ipNet(netip.MustParsePrefix("10.99.0.0/16")), Gw: net.ParseIP("192.0.2.2"), Protocol: DefaultRouteProtocol},
	} {
		r.LinkIndex = eth0.Attrs().Index
		if err := h.RouteAdd(r); err != nil {
			t.Fatal(err)
		}
	}

	got, err := ov.Sync([]Peer{p1})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Changes{Routes: Count{Added: 1, Removed: 1}, Neighbors: Count{Added: 1}, FDB: Count{Added: 1}}); got != want {
		t.Errorf("Sync: %v, want %v (the stale route removed)", got, want)
	}
	before := dumpState(t, n.NS, ov)

	// p1 leaves, p2 and p3 come: p1's entries go first, then p3's route
	// fails and everything is undone.
	_, err = ov.Sync([]Peer{p2, p3})
	if err == nil || !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), "not the overlay's") {
		t.Fatalf("Sync over a foreign route to a pod CIDR: error %v, want one wrapping EEXIST that names the problem", err)
	}
	if diff := cmp.Diff(before, dumpState(t, n.NS, ov)); diff != "" {
		t.Errorf("failed Sync left changes (-before +after):\n%s", diff)
	}

	if _, err := ov.Sync(nil); err != nil {
		t.Fatal(err)
	}
	if err := ov.Delete(); err != nil {
		t.Fatal(err)
	}
	static, err := netlinksafe.Dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: unix.RTPROT_STATIC}, netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(static) != 2 {
		t.Errorf("%d static routes left after Sync(nil) and Delete, want the 2 added: %v", len(static), static)
	}
}

// Concurrent Syncs are serialised: each sees a consistent kernel state.
func TestSyncConcurrent(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	top := testutil.NewTopology(t, testutil.TopologyConfig{})
	n := labNodes(t, top, true, false)[0]
	ov := newOverlay(t, n, Config{LocalAddr: n.Addr.Addr()})

	sets := [][]Peer{peerSet(10, 1), peerSet(10, 2)}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			if _, err := ov.Sync(sets[i%2]); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := ov.Sync(sets[0])
	if err != nil {
		t.Fatal(err)
	}
	if s := dumpState(t, n.NS, ov); len(s.Routes) != 10 || len(s.Neighbors) != 10 || len(s.FDB) != 10 {
		t.Errorf("after the last Sync (%v): %d routes, %d neighbours, %d FDB entries, want 10 of each",
			got, len(s.Routes), len(s.Neighbors), len(s.FDB))
	}
}

// peerSet returns n IPv4 peers with node addresses in 198.18.0.0/15 and
// pod CIDRs in 10.0.0.0/8, numbered from first.
func peerSet(n, first int) []Peer {
	peers := make([]Peer, n)
	for i := range peers {
		k := first + i
		peers[i] = Peer{
			Name:     fmt.Sprintf("node-%d", k),
			NodeAddr: netip.AddrFrom4([4]byte{198, 18 + byte(k>>16&1), byte(k >> 8), byte(k)}),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(k >> 8), byte(k), 0}), 24)},
		}
	}
	return peers
}
