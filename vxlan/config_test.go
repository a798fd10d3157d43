package vxlan

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConfigDefaults(t *testing.T) {
	got, err := Config{LocalAddr: netip.MustParseAddr("192.0.2.1")}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Mode: Tunnel, Name: "nb_vxlan", VNI: 1, Port: 8472, LocalAddr: netip.MustParseAddr("192.0.2.1"),
		PodCIDRs: []netip.Prefix{}, RouteProtocol: 78,
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

// Bad configuration is refused before anything is touched, with an error
// that names the problem.
func TestConfigErrors(t *testing.T) {
	local := netip.MustParseAddr("192.0.2.1")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"vni-too-big", Config{LocalAddr: local, VNI: 1 << 24}, "VNI 16777216 is out of range 1-16777215"},
		{"mode", Config{LocalAddr: local, Mode: 3}, "unknown Mode(3)"},
		{"name-too-long", Config{LocalAddr: local, Name: "a-very-long-name"}, "longer than 15 bytes"},
		{"name-slash", Config{LocalAddr: local, Name: "a/b"}, "contains '/'"},
		{"underlay-name", Config{Underlay: "eth 0"}, "underlay: \"eth 0\" contains"},
		{"local-multicast", Config{LocalAddr: netip.MustParseAddr("224.0.0.1")}, "224.0.0.1 is not a unicast address"},
		{"local-unspecified", Config{LocalAddr: netip.IPv6Unspecified()}, ":: is not a unicast address"},
		{"local-mapped", Config{LocalAddr: netip.MustParseAddr("::ffff:192.0.2.1")}, "IPv4-mapped"},
		{"local-zone", Config{LocalAddr: netip.MustParseAddr("fe80::1%eth0")}, "has a zone"},
		{"mac-multicast", Config{LocalAddr: local, MAC: net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}}, "01:00:5e:00:00:01 is a multicast address"},
		{"mac-zero", Config{LocalAddr: local, MAC: make(net.HardwareAddr, 6)}, "00:00:00:00:00:00 is the zero address"},
		{"mac-short", Config{LocalAddr: local, MAC: net.HardwareAddr{2, 0, 0}}, "is 3 bytes long, not 6"},
		{"mtu-negative", Config{LocalAddr: local, MTU: -1}, "MTU -1 is negative"},
		{"mtu-small", Config{LocalAddr: local, MTU: 67}, "MTU 67 is below the minimum of 68"},
		{"route-protocol", Config{LocalAddr: local, RouteProtocol: 2}, "route protocol 2 is reserved"},
		{"cidr-host-bits", Config{LocalAddr: local, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.1/24")}}, "10.244.1.1/24 has host bits set (the prefix is 10.244.1.0/24)"},
		{"cidr-invalid", Config{LocalAddr: local, PodCIDRs: []netip.Prefix{{}}}, "invalid prefix"},
		{"cidr-all", Config{LocalAddr: local, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("::/0")}}, "::/0 covers every address"},
		{"cidr-multicast", Config{LocalAddr: local, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("224.0.0.0/24")}}, "224.0.0.0/24 is not a unicast range"},
		{"cidr-loopback", Config{LocalAddr: local, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, "127.0.0.0/8 is not a unicast range"},
		{"cidr-single", Config{LocalAddr: local, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.5/32")}}, "10.244.1.5/32 is a single address"},
		{"cidr-overlap", Config{LocalAddr: local, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24")}}, "pod CIDRs 10.244.0.0/16 and 10.244.1.0/24 of this node overlap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.withDefaults()
			if err == nil {
				t.Fatalf("accepted, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want one containing %q", err, tc.want)
			}
			if _, err := New(tc.cfg); err == nil || !strings.HasPrefix(err.Error(), "create overlay: check config: ") {
				t.Errorf("New: error %v, want the same check", err)
			}
		})
	}

	// Edges that are fine.
	for _, cfg := range []Config{
		{LocalAddr: local, VNI: MaxVNI},
		{LocalAddr: local, Name: "exactly15bytes_"},
		{LocalAddr: local, MTU: 68},
		{LocalAddr: local, Mode: Native, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.5/32")}},
		{Underlay: "eth0"},
	} {
		if _, err := cfg.withDefaults(); err != nil {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}

// testLocal is a node for plan tests: 192.0.2.1 on 192.0.2.0/24, pods in
// 10.244.1.0/24 and fd00:1::/64.
func testLocal(mode Mode) *local {
	l := &local{
		mode:     mode,
		addr:     netip.MustParseAddr("192.0.2.1"),
		subnet:   netip.MustParsePrefix("192.0.2.0/24"),
		podCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:1::/64")},
		mac:      mac(DeriveMAC(netip.MustParseAddr("192.0.2.1"))),
		underlay: 2,
	}
	if mode != Native {
		l.link = 3
	}
	return l
}

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// Bad peers are refused by plan, before Sync changes anything.
func TestPeerErrors(t *testing.T) {
	ok := Peer{Name: "b", NodeAddr: addr("192.0.2.2"), PodCIDRs: pfx("10.244.2.0/24")}
	for _, tc := range []struct {
		name  string
		mode  Mode
		peers []Peer
		want  string
	}{
		{"own-address", Tunnel, []Peer{{Name: "x", NodeAddr: addr("192.0.2.1")}}, `peer "x" has this node's own address 192.0.2.1`},
		{"no-address", Tunnel, []Peer{{Name: "x"}}, `peer "x" (index 0) has no node address`},
		{"duplicate-address", Tunnel, []Peer{ok, {Name: "c", NodeAddr: addr("192.0.2.2")}}, `peer "b" and peer "c" have the same node address 192.0.2.2`},
		{"duplicate-name", Tunnel, []Peer{ok, {Name: "b", NodeAddr: addr("192.0.2.3")}}, `peers 0 and 1 are both named "b"`},
		{"wrong-family", Tunnel, []Peer{{Name: "x", NodeAddr: addr("2001:db8::2")}}, `peer "x" has node address 2001:db8::2, not of the underlay's family`},
		{"mapped", Tunnel, []Peer{{Name: "x", NodeAddr: addr("::ffff:192.0.2.9")}}, `not of the underlay's family`},
		{"multicast", Tunnel, []Peer{{Name: "x", NodeAddr: addr("239.1.1.1")}}, `239.1.1.1 is not a unicast address`},
		{"overlap-peers", Tunnel, []Peer{ok, {Name: "c", NodeAddr: addr("192.0.2.3"), PodCIDRs: pfx("10.244.0.0/16")}}, `pod CIDR 10.244.1.0/24 of this node overlaps 10.244.0.0/16 of peer "c"`},
		{"overlap-peer-peer", Tunnel, []Peer{ok, {Name: "c", NodeAddr: addr("192.0.2.3"), PodCIDRs: pfx("10.244.2.128/25")}}, `pod CIDR 10.244.2.128/25 of peer "c" overlaps 10.244.2.0/24 of peer "b"`},
		{"same-cidr", Tunnel, []Peer{ok, {Name: "c", NodeAddr: addr("192.0.2.3"), PodCIDRs: pfx("10.244.2.0/24")}}, `overlaps 10.244.2.0/24`},
		{"overlap-ours", Tunnel, []Peer{{Name: "x", NodeAddr: addr("192.0.2.3"), PodCIDRs: pfx("fd00:1::/48")}}, `pod CIDR fd00:1::/64 of this node overlaps fd00:1::/48 of peer "x"`},
		{"default-route", Tunnel, []Peer{{Name: "x", NodeAddr: addr("192.0.2.3"), PodCIDRs: pfx("0.0.0.0/0")}}, `peer "x" pod CIDRs: 0.0.0.0/0 covers every address`},
		{"host-bits", Tunnel, []Peer{{Name: "x", NodeAddr: addr("192.0.2.3"), PodCIDRs: pfx("10.9.0.1/24")}}, `peer "x" pod CIDRs: 10.9.0.1/24 has host bits set`},
		{"single-address", Tunnel, []Peer{{Name: "x", NodeAddr: addr("192.0.2.3"), PodCIDRs: pfx("10.9.0.1/32")}}, `10.9.0.1/32 is a single address`},
		{"mac-multicast", Tunnel, []Peer{{Name: "x", NodeAddr: addr("192.0.2.3"), VTEPMAC: net.HardwareAddr{3, 0, 0, 0, 0, 1}}}, `peer "x" VTEP MAC: 03:00:00:00:00:01 is a multicast address`},
		{"mac-zero", Tunnel, []Peer{{Name: "x", NodeAddr: addr("192.0.2.3"), VTEPMAC: make(net.HardwareAddr, 6)}}, `is the zero address`},
		{"mac-ours", Tunnel, []Peer{{Name: "x", NodeAddr: addr("192.0.2.3"), VTEPMAC: DeriveMAC(addr("192.0.2.1"))}}, `peer "x" has this node's own VTEP MAC`},
		{"mac-duplicate", CrossSubnet, []Peer{
			{Name: "x", NodeAddr: addr("192.0.2.3"), VTEPMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
			{Name: "y", NodeAddr: addr("192.0.2.4"), VTEPMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
		}, `peer "x" and peer "y" have the same VTEP MAC 02:00:00:00:00:01`},
		{"native-off-subnet", Native, []Peer{{Name: "x", NodeAddr: addr("198.51.100.2"), PodCIDRs: pfx("10.9.0.0/24")}}, `node address 198.51.100.2 is outside this node's underlay subnet 192.0.2.0/24`},
		{"native-other-family", Native, []Peer{{Name: "x", NodeAddr: addr("192.0.2.3"), PodCIDRs: pfx("fd00:9::/64")}}, `pod CIDR fd00:9::/64 is not of the underlay's family`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := testLocal(tc.mode).plan(tc.peers)
			if err == nil {
				t.Fatalf("accepted, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want one containing %q", err, tc.want)
			}
		})
	}
}

// plan's routes, neighbour and FDB entries, by mode.
func TestPlan(t *testing.T) {
	near := Peer{NodeAddr: addr("192.0.2.2"), PodCIDRs: pfx("fd00:2::/64", "10.244.2.0/24", "10.244.3.0/24")}
	far := Peer{NodeAddr: addr("198.51.100.2"), PodCIDRs: pfx("10.244.9.0/24"), VTEPMAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}}
	nearMAC := mac(DeriveMAC(near.NodeAddr))
	farMAC := mac{2, 0, 0, 0, 0, 9}
	tunnel := func(dst, gw string) routeSpec {
		return routeSpec{dst: netip.MustParsePrefix(dst), gw: addr(gw), link: 3, onlink: true}
	}
	direct := func(dst, gw string) routeSpec {
		return routeSpec{dst: netip.MustParsePrefix(dst), gw: addr(gw), link: 2}
	}
	routes := func(rs ...routeSpec) map[netip.Prefix]routeSpec {
		m := make(map[netip.Prefix]routeSpec)
		for _, r := range rs {
			m[r.dst] = r
		}
		return m
	}

	for _, tc := range []struct {
		mode  Mode
		peers []Peer
		want  state
	}{
		{Tunnel, []Peer{near, far}, state{
			routes: routes(
				tunnel("10.244.2.0/24", "10.244.2.0"), tunnel("10.244.3.0/24", "10.244.2.0"),
				tunnel("fd00:2::/64", "fd00:2::"), tunnel("10.244.9.0/24", "10.244.9.0")),
			neighs: map[netip.Addr]mac{addr("10.244.2.0"): nearMAC, addr("fd00:2::"): nearMAC, addr("10.244.9.0"): farMAC},
			fdb:    map[mac]netip.Addr{nearMAC: near.NodeAddr, farMAC: far.NodeAddr},
		}},
		{CrossSubnet, []Peer{near, far}, state{
			routes: routes(
				direct("10.244.2.0/24", "192.0.2.2"), direct("10.244.3.0/24", "192.0.2.2"),
				tunnel("fd00:2::/64", "fd00:2::"), tunnel("10.244.9.0/24", "10.244.9.0")),
			neighs: map[netip.Addr]mac{addr("fd00:2::"): nearMAC, addr("10.244.9.0"): farMAC},
			fdb:    map[mac]netip.Addr{nearMAC: near.NodeAddr, farMAC: far.NodeAddr},
		}},
		{Native, []Peer{{NodeAddr: near.NodeAddr, PodCIDRs: pfx("10.244.2.0/24", "10.244.3.0/24")}}, state{
			routes: routes(direct("10.244.2.0/24", "192.0.2.2"), direct("10.244.3.0/24", "192.0.2.2")),
			neighs: map[netip.Addr]mac{},
			fdb:    map[mac]netip.Addr{},
		}},
		{Tunnel, nil, state{routes: routes(), neighs: map[netip.Addr]mac{}, fdb: map[mac]netip.Addr{}}},
		{Tunnel, []Peer{{NodeAddr: near.NodeAddr}}, state{routes: routes(), neighs: map[netip.Addr]mac{}, fdb: map[mac]netip.Addr{}}},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			got, err := testLocal(tc.mode).plan(tc.peers)
			if err != nil {
				t.Fatal(err)
			}
			opts := cmp.Options{
				cmp.AllowUnexported(state{}, routeSpec{}),
				cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
			}
			if diff := cmp.Diff(tc.want, got, opts); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckOverlaps(t *testing.T) {
	for _, tc := range []struct {
		cidrs []string
		bad   bool
	}{
		{[]string{"10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/23"}, false},
		{[]string{"10.0.0.0/24", "10.0.0.0/24"}, true},
		{[]string{"10.0.0.0/8", "11.0.0.0/8", "10.255.255.0/24"}, true},
		{[]string{"10.0.0.0/23", "10.0.1.0/24"}, true},
		{[]string{"10.0.1.0/24", "10.0.0.0/23", "10.0.4.0/24"}, true},
		{[]string{"0.0.0.0/0", "::/0"}, false},
		{[]string{"0.0.0.0/0", "10.0.0.0/8"}, true},
		{[]string{"::/0", "2001:db8::/32"}, true},
		{[]string{"10.0.0.0/31", "10.0.0.2/31", "10.0.0.4/30", "10.0.0.8/29"}, false},
	} {
		var ps []ownedPrefix
		for i, c := range tc.cidrs {
			ps = append(ps, ownedPrefix{owner: string(rune('a' + i)), prefix: netip.MustParsePrefix(c)})
		}
		if err := checkOverlaps(ps); (err != nil) != tc.bad {
			t.Errorf("%v: error %v, want overlap %t", tc.cidrs, err, tc.bad)
		}
	}
}

// The derived MAC is part of the wire contract between nodes of different
// versions: it must never change. These values are fixed.
func TestDeriveMAC(t *testing.T) {
	for _, tc := range []struct{ addr, mac string }{
		{"192.0.2.1", "fa:97:b9:58:2e:96"},
		{"2001:db8::1", "86:1c:79:1b:5f:83"},
	} {
		m := DeriveMAC(addr(tc.addr))
		if m.String() != tc.mac {
			t.Errorf("DeriveMAC(%s) = %s, want %s", tc.addr, m, tc.mac)
		}
		if err := checkMAC(m); err != nil || m[0]&2 == 0 {
			t.Errorf("DeriveMAC(%s) = %s: not a locally administered unicast address (%v)", tc.addr, m, err)
		}
	}
	if DeriveMAC(netip.Addr{}) != nil {
		t.Error("DeriveMAC of the zero Addr is not nil")
	}
	seen := make(map[string]string)
	for i := range 1 << 12 {
		a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		m := DeriveMAC(a)
		if m[0]&3 != 2 {
			t.Fatalf("DeriveMAC(%s) = %s: not locally administered unicast", a, m)
		}
		if prev, dup := seen[m.String()]; dup {
			t.Fatalf("DeriveMAC(%s) = DeriveMAC(%s) = %s", a, prev, m)
		}
		seen[m.String()] = a.String()
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Tunnel.String(), "Tunnel"},
		{CrossSubnet.String(), "CrossSubnet"},
		{Native.String(), "Native"},
		{Mode(7).String(), "Mode(7)"},
		{Changes{Routes: Count{Added: 2, Removed: 1}, FDB: Count{Updated: 1}}.String(), "routes +2 ~0 -1, neighbors +0 ~0 -0, fdb +0 ~1 -0"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
