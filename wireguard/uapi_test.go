package wireguard

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestEncodeChange(t *testing.T) {
	priv, _ := ParseKey("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
	pub := priv.PublicKey()
	got := encodeChange(devChange{
		privateKey: &priv,
		listenPort: 51871,
		peers: []peerChange{
			{publicKey: pub, remove: true},
			{publicKey: pub, endpoint: netip.MustParseAddrPort("[2001:db8::2]:51871"), keepalive: 25 * time.Second,
				allowedIPs: prefixes("10.244.2.0/24", "fd00::/64")},
			{publicKey: pub},
			{publicKey: pub, keepaliveOnly: true},
		},
	})
	want := "private_key=c809f3e5317e9575c9b5ed78b638b7ce530dabe85ddab6142202418 01ddf0669\n"
	want = strings.ReplaceAll(want, " ", "") +
		"listen_port=51871\n" +
		"public_key=" + pub.hex() + "\nremove=true\n" +
		"public_key=" + pub.hex() + "\nendpoint=[2001:db8::2]:51871\npersistent_keepalive_interval=25\n" +
		"replace_allowed_ips=true\nallowed_ip=10.244.2.0/24\nallowed_ip=fd00::/64\n" +
		"public_key=" + pub.hex() + "\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\n" +
		"public_key=" + pub.hex() + "\nupdate_only=true\npersistent_keepalive_interval=0\n"
	if got != want {
		t.Errorf("encodeChange:\n%s\nwant:\n%s", got, want)
	}
}

// uapiSample is what wireguard-go's IpcGetOperation writes for a device with
// two peers, one that has never handshaken.
const uapiSample = `private_key=c809f3e5317e9575c9b5ed78b638b7ce530dabe85ddab614220241801ddf0669
listen_port=51871
fwmark=0
public_key=1c8828f7137324c58b2804928624ea2326f1674537c062e251e2753ca7fcca4c
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
endpoint=192.0.2.2:51871
last_handshake_time_sec=1700000000
last_handshake_time_nsec=500
tx_bytes=1234
rx_bytes=5678
persistent_keepalive_interval=25
allowed_ip=10.244.2.0/24
allowed_ip=fd00:10:244:2::/64
public_key=847c0d2c375234f365e660955187a3735a0f7613d1609d3a6a4d8c53aeaa5a22
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
errno=0

`

func TestParseState(t *testing.T) {
	got, err := parseState(strings.NewReader(uapiSample))
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := ParseKey("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
	other, _ := ParseKey("hHwNLDdSNPNl5mCVUYejc1oPdhPRYJ06ak2MU66qWiI=")
	want := devState{
		privateKey: priv,
		listenPort: 51871,
		peers: []peerState{{
			publicKey:     priv.PublicKey(),
			endpoint:      netip.MustParseAddrPort("192.0.2.2:51871"),
			keepalive:     25 * time.Second,
			allowedIPs:    prefixes("10.244.2.0/24", "fd00:10:244:2::/64"),
			rxBytes:       5678,
			txBytes:       1234,
			lastHandshake: time.Unix(1700000000, 500),
		}, {publicKey: other}},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(devState{}, peerState{}),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("parseState (-want +got):\n%s", diff)
	}

	for _, tc := range []struct{ in, err string }{
		{"listen_port=70000\n", "line 1 (listen_port)"},
		{"private_key=abc\n", "not hexadecimal"},
		{"public_key=00\n", "1 bytes long"},
		{"garbage\n", "no '='"},
		{"errno=22\n", "errno 22"},
		{"public_key=" + strings.Repeat("00", 32) + "\nendpoint=nowhere\n", "line 2 (endpoint)"},
		{"public_key=" + strings.Repeat("00", 32) + "\nallowed_ip=10.0.0.0/33\n", "line 2 (allowed_ip)"},
	} {
		if _, err := parseState(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("parseState(%q) = %v, want an error containing %q", tc.in, err, tc.err)
		}
	}
}

// FuzzParseState checks that parseState never panics, and that what it
// accepts survives a round trip through encodeChange.
func FuzzParseState(f *testing.F) {
	f.Add(uapiSample)
	f.Add("public_key=" + strings.Repeat("ab", 32) + "\nlast_handshake_time_nsec=-1\n")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := parseState(strings.NewReader(in))
		if err != nil {
			return
		}
		c := devChange{privateKey: &s.privateKey, listenPort: s.listenPort}
		for _, p := range s.peers {
			var valid []netip.Prefix
			for _, ip := range p.allowedIPs {
				if ip.IsValid() {
					valid = append(valid, ip)
				}
			}
			c.peers = append(c.peers, peerChange{publicKey: p.publicKey, endpoint: p.endpoint, keepalive: p.keepalive, allowedIPs: valid})
		}
		back, err := parseState(strings.NewReader(encodeChange(c)))
		if err != nil {
			t.Fatalf("parse of encoded %+v: %v", c, err)
		}
		if back.privateKey != s.privateKey || len(back.peers) != len(s.peers) {
			t.Fatalf("round trip changed the state: %+v, then %+v", s, back)
		}
	})
}
