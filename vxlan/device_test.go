package vxlan

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/testutil"
)

// newNode returns the first node of a fresh two-node topology, prepared.
func newNode(t *testing.T, v4, v6 bool) *labNode {
	t.Helper()
	return labNodes(t, testutil.NewTopology(t, testutil.TopologyConfig{}), v4, v6)[0]
}

// vxlanLink returns the VXLAN device called name in n's namespace.
func vxlanLink(t *testing.T, n *labNode, name string) *netlink.Vxlan {
	t.Helper()
	l, err := n.NS.Netlink().LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := l.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s is a %s device, want vxlan", name, l.Type())
	}
	return v
}

// The device New creates is what the Config says, with the documented
// defaults.
func TestNewDevice(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)

	for _, tc := range []struct {
		name     string
		v6       bool // underlay
		underlay int  // MTU
		// defaultRoute adds a default route via eth0 and leaves both
		// LocalAddr and Underlay unset.
		defaultRoute bool
		cfg          Config
		wantMTU      int
		wantVNI      int
		wantPort     int
		wantAddrs    []string
	}{
		{name: "defaults-ipv4", underlay: 1500, wantMTU: 1450, wantVNI: 1, wantPort: 8472,
			wantAddrs: []string{"10.244.1.0/32", "fd00:10:244:1::/128"}},
		{name: "defaults-ipv6", v6: true, underlay: 1500, wantMTU: 1430, wantVNI: 1, wantPort: 8472,
			wantAddrs: []string{"10.244.1.0/32", "fd00:10:244:1::/128"}},
		{name: "jumbo", underlay: 9000, wantMTU: 8950, wantVNI: 1, wantPort: 8472,
			wantAddrs: []string{"10.244.1.0/32", "fd00:10:244:1::/128"}},
		{name: "set", underlay: 1500, cfg: Config{Name: "vx.test", VNI: 4096, Port: IANAPort, MTU: 1400,
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.8.2.0/23"), netip.MustParsePrefix("10.8.0.0/24")}},
			wantMTU: 1400, wantVNI: 4096, wantPort: 4789, wantAddrs: []string{"10.8.0.0/32"}},
		{name: "underlay-by-name", underlay: 1500, cfg: Config{Underlay: "eth0"}, wantMTU: 1450, wantVNI: 1, wantPort: 8472,
			wantAddrs: []string{"10.244.1.0/32", "fd00:10:244:1::/128"}},
		{name: "default-route", underlay: 1500, defaultRoute: true, wantMTU: 1450, wantVNI: 1, wantPort: 8472,
			wantAddrs: []string{"10.244.1.0/32", "fd00:10:244:1::/128"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			top := testutil.NewTopology(t, testutil.TopologyConfig{MTU: tc.underlay})
			n := labNodes(t, top, true, true)[0]
			cfg := tc.cfg
			if tc.defaultRoute {
				err := n.NS.Netlink().RouteAdd(&netlink.Route{LinkIndex: n.Index, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: net.ParseIP("192.0.2.2")})
				if err != nil {
					t.Fatal(err)
				}
			} else if cfg.Underlay == "" {
				cfg.LocalAddr = n.underlayAddr(tc.v6)
			}
			ov := newOverlay(t, n, cfg)
			name := cmpOr(cfg.Name, DefaultName)
			v := vxlanLink(t, n, name)

			local, _ := netip.AddrFromSlice(v.SrcAddr)
			switch {
			case v.VxlanId != tc.wantVNI || v.Port != tc.wantPort || v.MTU != tc.wantMTU || ov.MTU() != tc.wantMTU:
				t.Errorf("device: VNI %d port %d MTU %d (MTU() %d), want %d %d %d", v.VxlanId, v.Port, v.MTU, ov.MTU(), tc.wantVNI, tc.wantPort, tc.wantMTU)
			case local.Unmap() != n.underlayAddr(tc.v6) || v.VtepDevIndex != n.Index:
				t.Errorf("device: local %s dev %d, want %s dev %d", v.SrcAddr, v.VtepDevIndex, n.underlayAddr(tc.v6), n.Index)
			case v.Learning:
				t.Error("learning is on")
			case v.Flags&net.FlagUp == 0:
				t.Error("device is down")
			case !slices.Equal(v.HardwareAddr, DeriveMAC(n.underlayAddr(tc.v6))) || !slices.Equal(v.HardwareAddr, ov.MAC()):
				t.Errorf("MAC %s, want DeriveMAC(%s) = %s (MAC() %s)", v.HardwareAddr, n.underlayAddr(tc.v6), DeriveMAC(n.underlayAddr(tc.v6)), ov.MAC())
			case ov.LinkIndex() != v.Index:
				t.Errorf("LinkIndex() %d, want %d", ov.LinkIndex(), v.Index)
			}

			addrs, err := addrList(n.NS.Netlink(), v, netlink.FAMILY_ALL)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range addrs {
				if !a.IP.IsLinkLocalUnicast() {
					got = append(got, a.IPNet.String())
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.wantAddrs) {
				t.Errorf("device addresses %v, want %v", got, tc.wantAddrs)
			}

			on, err := txChecksum(ov.ioctl.GetFd(), name)
			if err != nil || !on {
				t.Errorf("tx checksum offload on: %t (%v), want true", on, err)
			}
		})
	}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// A restarted agent's New adopts the device as it is, changing nothing,
// and the VTEP MAC is the same after the device is deleted and created
// again.
func TestNewAdopts(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	n := newNode(t, true, true)
	cfg := Config{LocalAddr: n.Addr.Addr(), PodCIDRs: n.cidrs, NetNS: n.NS.Handle()}

	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mac, index := first.MAC(), first.LinkIndex()
	if _, err := first.Sync([]Peer{{NodeAddr: netip.MustParseAddr("192.0.2.2"), PodCIDRs: labCIDRs(1, true, true)}}); err != nil {
		t.Fatal(err)
	}
	settle(t, n.NS, first)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Sync(nil); err == nil {
		t.Error("Sync on a closed overlay succeeded")
	}
	state := dumpState(t, n.NS, first)

	w := watch(t, n.NS, first)
	second := newOverlay(t, n, cfg)
	if seen := w.stop(); len(seen) > 0 {
		t.Errorf("New on a matching device caused %d netlink notifications:\n%s", len(seen), strings.Join(seen, "\n"))
	}
	if second.LinkIndex() != index || !slices.Equal(second.MAC(), mac) {
		t.Errorf("adopted device: index %d MAC %s, want %d %s", second.LinkIndex(), second.MAC(), index, mac)
	}
	if got := dumpState(t, n.NS, second); !slices.Equal(got.Routes, state.Routes) || !slices.Equal(got.FDB, state.FDB) {
		t.Errorf("routes and FDB after Close and New: %v, want %v", got, state)
	}

	if err := second.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.NS.Netlink().LinkByName(DefaultName); err == nil {
		t.Fatal("device still there after Delete")
	}
	if got := dumpState(t, n.NS, second); len(got.Routes) != 0 {
		t.Errorf("routes left after Delete: %v", got.Routes)
	}
	third := newOverlay(t, n, cfg)
	if third.LinkIndex() == index {
		t.Error("device has its old index after Delete and New")
	}
	if !slices.Equal(third.MAC(), mac) || !slices.Equal(vxlanLink(t, n, DefaultName).HardwareAddr, mac) {
		t.Errorf("VTEP MAC after Delete and New %s, want %s as before", third.MAC(), mac)
	}
}

// A device that differs in what the kernel cannot change is replaced; one
// that differs only in MTU, MAC, addresses, state or checksum offload is
// fixed in place.
func TestNewReconcilesDevice(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)

	for _, tc := range []struct {
		name    string
		change  func(v *netlink.Vxlan)
		after   func(t *testing.T, n *labNode, l netlink.Link) // changes to the live device
		replace bool
	}{
		{name: "vni", change: func(v *netlink.Vxlan) { v.VxlanId = 42 }, replace: true},
		{name: "port", change: func(v *netlink.Vxlan) { v.Port = IANAPort }, replace: true},
		{name: "learning", change: func(v *netlink.Vxlan) { v.Learning = true }, replace: true},
		{name: "local", change: func(v *netlink.Vxlan) { v.SrcAddr = net.ParseIP("192.0.2.99") }, replace: true},
		{name: "no-underlay", change: func(v *netlink.Vxlan) { v.VtepDevIndex = 0 }, replace: true},
		{name: "remote", change: func(v *netlink.Vxlan) { v.Group = net.ParseIP("192.0.2.2") }, replace: true},
		{name: "mtu", change: func(v *netlink.Vxlan) { v.MTU = 1300 }},
		{name: "mac-while-up", change: func(v *netlink.Vxlan) { v.HardwareAddr = net.HardwareAddr{2, 0, 0, 0, 0, 1} },
			after: func(t *testing.T, n *labNode, l netlink.Link) {
				if err := n.NS.Netlink().LinkSetUp(l); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "addresses-and-down", after: func(t *testing.T, n *labNode, l netlink.Link) {
			h := n.NS.Netlink()
			if err := errors.Join(
				h.AddrAdd(l, hostAddr(netip.MustParseAddr("10.99.0.1"))),
				h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.244.1.0/24"))}),
				h.LinkSetDown(l)); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "checksum-off", after: func(t *testing.T, n *labNode, l netlink.Link) {
			if err := setTxChecksum(mustIoctlSocket(t, n), DefaultName, false); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t, true, false)
			h := n.NS.Netlink()
			want := deviceSpec{name: DefaultName, vni: 1, port: DefaultPort, local: n.Addr.Addr(), underlay: n.Index,
				mtu: 1450, mac: DeriveMAC(n.Addr.Addr())}
			v := want.newLink()
			if tc.change != nil {
				tc.change(v)
			}
			if err := h.LinkAdd(v); err != nil {
				t.Fatal(err)
			}
			old := vxlanLink(t, n, DefaultName)
			if tc.after != nil {
				tc.after(t, n, old)
			}

			ov := newOverlay(t, n, Config{LocalAddr: n.Addr.Addr()})
			got := vxlanLink(t, n, DefaultName)
			if replaced := got.Index != old.Index; replaced != tc.replace {
				t.Errorf("device replaced: %t, want %t", replaced, tc.replace)
			}
			if reason := want.mismatch(got); reason != "" {
				t.Errorf("device after New: %s", reason)
			}
			if got.MTU != 1450 || !slices.Equal(got.HardwareAddr, want.mac) || got.Flags&net.FlagUp == 0 {
				t.Errorf("device after New: MTU %d MAC %s flags %v", got.MTU, got.HardwareAddr, got.Flags)
			}
			addrs, err := addrList(h, got, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.1.0/32" {
				t.Errorf("device addresses after New: %v, want only 10.244.1.0/32", addrs)
			}
			if on, err := txChecksum(ov.ioctl.GetFd(), DefaultName); err != nil || !on {
				t.Errorf("tx checksum offload on: %t (%v), want true", on, err)
			}
		})
	}
}

// mustIoctlSocket returns an ethtool ioctl socket in n's namespace, from a
// throwaway Native overlay (which makes no device).
func mustIoctlSocket(t *testing.T, n *labNode) int {
	t.Helper()
	ov, err := New(Config{Mode: Native, Name: "nb_unused", LocalAddr: n.Addr.Addr(), NetNS: n.NS.Handle()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ov.Close() })
	return ov.ioctl.GetFd()
}

// A device of the overlay's name that is not VXLAN is an error and stays.
func TestNewRefusesOtherDevice(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	n := newNode(t, true, false)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = DefaultName
	if err := n.NS.Netlink().LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{LocalAddr: n.Addr.Addr(), NetNS: n.NS.Handle()})
	if err == nil || !strings.Contains(err.Error(), "not vxlan") {
		t.Fatalf("New over a bridge called %s: error %v, want one saying it is not vxlan", DefaultName, err)
	}
	if l, err := n.NS.Netlink().LinkByName(DefaultName); err != nil || l.Type() != "bridge" {
		t.Errorf("the bridge is gone or changed: %v %v", l, err)
	}
}

// Native mode makes no device, and removes the one a tunnel mode left.
func TestNativeRemovesDevice(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	n := newNode(t, true, false)
	cfg := Config{LocalAddr: n.Addr.Addr(), PodCIDRs: n.cidrs, NetNS: n.NS.Handle()}
	tunnel, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tunnel.Close()

	cfg.Mode = Native
	ov := newOverlay(t, n, cfg)
	if _, err := n.NS.Netlink().LinkByName(DefaultName); err == nil {
		t.Error("Native mode left the tunnel's device")
	}
	if ov.LinkIndex() != 0 || ov.MTU() != 1500 {
		t.Errorf("Native overlay: LinkIndex %d MTU %d, want 0 and the underlay's 1500", ov.LinkIndex(), ov.MTU())
	}
}

// A New that fails part-way undoes what it did: a device it created is
// deleted, changes to an adopted one are reverted.
func TestNewRollsBack(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	n := newNode(t, true, true)
	h := n.NS.Netlink()
	// IPv6 off on new devices: adding the IPv6 VTEP address fails.
	if err := setSysctl(n.NS, "net/ipv6/conf/default/disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	cfg := Config{LocalAddr: n.Addr.Addr(), PodCIDRs: n.cidrs, NetNS: n.NS.Handle(), DisableTxChecksum: true}

	if _, err := New(cfg); err == nil {
		t.Fatal("New succeeded with IPv6 disabled on the device")
	} else if !strings.Contains(err.Error(), "add address fd00:10:244:1::") {
		t.Errorf("error %v, want one naming the address", err)
	}
	if _, err := h.LinkByName(DefaultName); err == nil {
		t.Error("New left the device it created after failing")
	}

	// An adopted device with another MTU and MAC, down.
	spec := deviceSpec{name: DefaultName, vni: 1, port: DefaultPort, local: n.Addr.Addr(), underlay: n.Index,
		mtu: 1300, mac: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
	if err := h.LinkAdd(spec.newLink()); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg); err == nil {
		t.Fatal("New succeeded with IPv6 disabled on the device")
	}
	v := vxlanLink(t, n, DefaultName)
	addrs, err := addrList(h, v, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	if v.MTU != 1300 || !slices.Equal(v.HardwareAddr, spec.mac) || v.Flags&net.FlagUp != 0 || len(addrs) != 0 {
		t.Errorf("adopted device after a failed New: MTU %d MAC %s flags %v addresses %v, want it as it was (1300, %s, down, none)",
			v.MTU, v.HardwareAddr, v.Flags, addrs, spec.mac)
	}
	if on, err := txChecksum(mustIoctlSocket(t, n), DefaultName); err != nil || !on {
		t.Errorf("tx checksum offload on after a failed New: %t (%v), want true as it was", on, err)
	}
}

// DisableTxChecksum turns transmit checksum offload off (as ethtool sees it
// too, where installed), TCP still crosses the tunnel, and a New without it
// turns offload back on.
func TestTxChecksum(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	requirePing(t)
	nodes := labNodes(t, testutil.NewTopology(t, testutil.TopologyConfig{}), true, false)
	for _, n := range nodes {
		newOverlay(t, n, Config{LocalAddr: n.Addr.Addr(), DisableTxChecksum: true})
		addPod(t, n, n.ov.MTU())
	}
	syncAll(t, nodes)
	a, b := nodes[0], nodes[1]

	if on, err := txChecksum(a.ov.ioctl.GetFd(), DefaultName); err != nil || on {
		t.Fatalf("tx checksum offload on: %t (%v), want false", on, err)
	}
	if _, err := exec.LookPath("ethtool"); err == nil {
		out, err := a.NS.Exec("ethtool", "-k", DefaultName)
		if err != nil || !strings.Contains(string(out), "tx-checksumming: off") {
			t.Errorf("ethtool -k %s: %v\n%s\nwant tx-checksumming: off", DefaultName, err, out)
		}
	}
	checkTCP(t, a, b, false)
	checkTCP(t, b, a, false)

	a.ov.Close()
	ov := newOverlay(t, a, Config{LocalAddr: a.Addr.Addr()})
	if on, err := txChecksum(ov.ioctl.GetFd(), DefaultName); err != nil || !on {
		t.Fatalf("tx checksum offload on after New without DisableTxChecksum: %t (%v), want true", on, err)
	}
	checkTCP(t, a, b, false)
}

// New's errors about the namespace it works in name the problem.
func TestNewErrors(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	n := newNode(t, true, false)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"address-not-assigned", Config{LocalAddr: netip.MustParseAddr("192.0.2.77")}, "192.0.2.77 is not assigned to any device"},
		{"address-not-on-underlay", Config{LocalAddr: netip.MustParseAddr("192.0.2.1"), Underlay: "lo"}, "192.0.2.1 is not assigned to underlay lo"},
		{"no-underlay", Config{Underlay: "eth9"}, "find underlay device eth9"},
		{"no-default-route", Config{}, "neither LocalAddr nor Underlay is set and there is no default route"},
		{"mtu-too-big", Config{LocalAddr: netip.MustParseAddr("192.0.2.1"), MTU: 1451}, "1451 exceeds underlay eth0's MTU 1500 less 50 bytes"},
		{"native-mtu-too-big", Config{Mode: Native, LocalAddr: netip.MustParseAddr("192.0.2.1"), MTU: 1501}, "1501 exceeds underlay eth0's MTU 1500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.NetNS = n.NS.Handle()
			ov, err := New(tc.cfg)
			if err == nil {
				ov.Close()
				t.Fatalf("New succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := n.NS.Netlink().LinkByName(DefaultName); err == nil {
		t.Error("a failed New left a device")
	}
}
