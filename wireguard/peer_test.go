package wireguard

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// testKeys returns n distinct public keys.
func testKeys(t testing.TB, n int) []Key {
	t.Helper()
	keys := make([]Key, n)
	for i := range keys {
		k, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k.PublicKey()
	}
	return keys
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestCheckPeers(t *testing.T) {
	k := testKeys(t, 3)
	own := k[2]
	ep := netip.MustParseAddrPort("192.0.2.2:51871")

	got, err := checkPeers([]Peer{{
		PublicKey:           k[0],
		Endpoint:            netip.MustParseAddrPort("[::ffff:192.0.2.2]:51871"),
		AllowedIPs:          prefixes("fd00::/64", "10.244.2.0/24", "10.244.2.0/24", "10.0.0.0/8"),
		PersistentKeepalive: 25*time.Second + 300*time.Millisecond,
	}, {PublicKey: k[1]}}, own)
	if err != nil {
		t.Fatal(err)
	}
	want := []Peer{{
		PublicKey:           k[0],
		Endpoint:            ep,
		AllowedIPs:          prefixes("10.0.0.0/8", "10.244.2.0/24", "fd00::/64"),
		PersistentKeepalive: 25 * time.Second,
	}, {PublicKey: k[1], AllowedIPs: []netip.Prefix{}}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("checkPeers (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name  string
		peers []Peer
		err   string
	}{
		{"no key", []Peer{{}}, "peer 0 has no public key"},
		{"own key", []Peer{{PublicKey: own}}, "own public key"},
		{"duplicate key", []Peer{{PublicKey: k[0]}, {PublicKey: k[1]}, {PublicKey: k[0]}}, "peers 0 and 2 have the same public key " + k[0].String()},
		{"no port", []Peer{{PublicKey: k[0], Endpoint: netip.MustParseAddrPort("192.0.2.2:0")}}, "has no port"},
		{"multicast endpoint", []Peer{{PublicKey: k[0], Endpoint: netip.MustParseAddrPort("224.0.0.1:5")}}, "not a unicast address"},
		{"zone", []Peer{{PublicKey: k[0], Endpoint: netip.MustParseAddrPort("[fe80::1%eth0]:5")}}, "has a zone"},
		{"negative keepalive", []Peer{{PublicKey: k[0], PersistentKeepalive: -time.Second}}, "is negative"},
		{"sub-second keepalive", []Peer{{PublicKey: k[0], PersistentKeepalive: time.Millisecond}}, "below WireGuard's 1 s resolution"},
		{"huge keepalive", []Peer{{PublicKey: k[0], PersistentKeepalive: 20 * time.Hour}}, "above WireGuard's maximum"},
		{"host bits", []Peer{{PublicKey: k[0], AllowedIPs: prefixes("10.244.2.1/24")}}, "allowed IP 10.244.2.1/24 of peer " + k[0].String() + " has host bits set (10.244.2.0/24?)"},
		{"invalid prefix", []Peer{{PublicKey: k[0], AllowedIPs: []netip.Prefix{{}}}}, "invalid allowed IP"},
		{"mapped prefix", []Peer{{PublicKey: k[0], AllowedIPs: prefixes("::ffff:10.0.0.0/104")}}, "IPv4-mapped"},
		{"shared prefix", []Peer{
			{PublicKey: k[0], AllowedIPs: prefixes("10.244.2.0/24")},
			{PublicKey: k[1], AllowedIPs: prefixes("10.244.3.0/24", "10.244.2.0/24")},
		}, "allowed IP 10.244.2.0/24 is given to two peers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := checkPeers(tc.peers, own)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("checkPeers = %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

func TestPlanChange(t *testing.T) {
	k := testKeys(t, 4)
	ep := netip.MustParseAddrPort("192.0.2.2:51871")
	learned := netip.MustParseAddrPort("198.51.100.7:40000")
	cur := devState{peers: []peerState{
		{publicKey: k[0], endpoint: ep, allowedIPs: prefixes("10.244.2.0/24"), rxBytes: 100},
		{publicKey: k[1], endpoint: learned, allowedIPs: prefixes("fd00::/64", "10.244.3.0/24")},
		{publicKey: k[2], endpoint: ep, allowedIPs: prefixes("10.244.4.0/24")},
	}}
	want, err := checkPeers([]Peer{
		{PublicKey: k[0], Endpoint: ep, AllowedIPs: prefixes("10.244.2.0/24")}, // unchanged
		{PublicKey: k[1], AllowedIPs: prefixes("10.244.3.0/24", "fd00::/64")},  // unchanged: no endpoint given
		{PublicKey: k[3], Endpoint: ep, AllowedIPs: prefixes("10.244.4.0/24")}, // new, takes k[2]'s prefix; k[2] goes
	}, Key{})
	if err != nil {
		t.Fatal(err)
	}
	pl := planChange(cur, want)
	if pl.added != 1 || pl.updated != 0 || pl.removed != 1 {
		t.Errorf("planChange: added %d, updated %d, removed %d; want 1, 0, 1", pl.added, pl.updated, pl.removed)
	}
	// The new peer takes the place of the one removed (its allowed IP).
	wantChange := []peerChange{
		{publicKey: k[2], remove: true},
		{publicKey: k[3], endpoint: ep, allowedIPs: prefixes("10.244.4.0/24")},
	}
	opts := []cmp.Option{cmp.AllowUnexported(peerChange{}),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })}
	if diff := cmp.Diff(wantChange, pl.change.peers, opts...); diff != "" {
		t.Errorf("planChange: change (-want +got):\n%s", diff)
	}
	if !slices.Equal(pl.replacements, []Key{k[3]}) {
		t.Errorf("planChange: replacements %v, want %v", pl.replacements, k[3])
	}

	// A new peer at the endpoint of one removed replaces it too.
	pl = planChange(devState{peers: cur.peers[2:]}, []Peer{{PublicKey: k[3], Endpoint: ep}})
	if !slices.Equal(pl.replacements, []Key{k[3]}) {
		t.Errorf("planChange replacing a peer at its endpoint: %+v", pl)
	}

	// Not replacements: a peer that takes no one's place, one without an
	// endpoint (the device cannot reach it), one with a keepalive (that
	// sends handshakes by itself).
	for _, tc := range []struct {
		cur devState
		p   Peer
	}{
		{devState{}, Peer{PublicKey: k[3], Endpoint: ep, AllowedIPs: prefixes("10.244.4.0/24")}},
		{devState{peers: cur.peers[2:]}, Peer{PublicKey: k[3], AllowedIPs: prefixes("10.244.4.0/24")}},
		{devState{peers: cur.peers[2:]}, Peer{PublicKey: k[3], Endpoint: ep, AllowedIPs: prefixes("10.244.4.0/24"), PersistentKeepalive: 25 * time.Second}},
	} {
		if pl := planChange(tc.cur, []Peer{tc.p}); len(pl.replacements) != 0 {
			t.Errorf("planChange adding %+v to %+v: replacements %v", tc.p, tc.cur, pl.replacements)
		}
	}

	// Updates: a new endpoint, keepalive or allowed IPs.
	for _, p := range []Peer{
		{PublicKey: k[0], Endpoint: learned, AllowedIPs: prefixes("10.244.2.0/24")},
		{PublicKey: k[0], Endpoint: ep, AllowedIPs: prefixes("10.244.2.0/24"), PersistentKeepalive: time.Second},
		{PublicKey: k[0], Endpoint: ep, AllowedIPs: prefixes("10.244.2.0/25")},
	} {
		pl := planChange(devState{peers: cur.peers[:1]}, []Peer{p})
		if pl.updated != 1 || len(pl.change.peers) != 1 || len(pl.replacements) != 0 {
			t.Errorf("planChange to %+v: %+v; want one update", p, pl)
		}
	}

	// Restoring what was there is a change back to it.
	pl = planChange(devState{}, peersOf(cur))
	if pl.added != 3 || pl.removed != 0 || pl.change.peers[1].endpoint != learned {
		t.Errorf("restore: %+v", pl)
	}
}

func TestRoutedPrefixes(t *testing.T) {
	k := testKeys(t, 2)
	peers := []Peer{
		{PublicKey: k[0], Endpoint: netip.MustParseAddrPort("192.0.2.2:51871"),
			AllowedIPs: prefixes("10.244.2.0/24", "192.0.2.2/32", "fd00:2::/64")},
		{PublicKey: k[1], Endpoint: netip.MustParseAddrPort("[2001:db8::3]:51871"),
			AllowedIPs: prefixes("10.244.3.0/24", "2001:db8::/64", "192.0.2.0/24")},
	}
	got := routedPrefixes(peers)
	want := prefixes("10.244.2.0/24", "10.244.3.0/24", "fd00:2::/64")
	if !cmp.Equal(got, want, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })) {
		t.Errorf("routedPrefixes = %v, want %v (none containing an endpoint)", got, want)
	}
}
