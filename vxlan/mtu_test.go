package vxlan

import (
	"fmt"
	"strings"
	"testing"

	"github.com/netblocks/netblocks/internal/testutil"
)

// The MTU is right end to end: a pod packet of exactly the overlay's MTU,
// with DF set, crosses to the other node's pod and back, and fills the
// underlay's MTU exactly once encapsulated; one byte more does not leave
// the pod.
func TestMTU(t *testing.T) {
	t.Parallel()
	testutil.RequirePrivileged(t)
	requirePing(t)

	for _, tc := range []struct {
		name        string
		mode        Mode
		underlayV6  bool
		underlayMTU int
		wantMTU     int
	}{
		{"tunnel/ipv4-underlay", Tunnel, false, 1500, 1450},
		{"tunnel/ipv6-underlay", Tunnel, true, 1500, 1430},
		{"tunnel/jumbo", Tunnel, false, 9000, 8950},
		{"native", Native, false, 1500, 1500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			top := testutil.NewTopology(t, testutil.TopologyConfig{MTU: tc.underlayMTU})
			nodes := labNodes(t, top, true, tc.mode != Native)
			for _, n := range nodes {
				newOverlay(t, n, Config{Mode: tc.mode, LocalAddr: n.underlayAddr(tc.underlayV6)})
				addPod(t, n, n.ov.MTU())
			}
			syncAll(t, nodes)
			a, b := nodes[0], nodes[1]
			if got := a.ov.MTU(); got != tc.wantMTU {
				t.Fatalf("MTU() = %d, want %d", got, tc.wantMTU)
			}

			for _, v6 := range []bool{false, true} {
				if v6 && tc.mode == Native {
					continue
				}
				headers := 28 // IPv4 + ICMP
				if v6 {
					headers = 48
				}
				t.Run(fmt.Sprintf("ipv6=%t", v6), func(t *testing.T) {
					full := tc.wantMTU - headers
					cap := startCapture(t, a.NS, a.Index)
					checkPing(t, a.pod, b.podAddr(v6), "-M", "do", "-s", fmt.Sprint(full))
					obs := decode(cap.frames(), DefaultPort, a.podAddr(v6), b.podAddr(v6))
					if len(obs) < 6 {
						t.Fatalf("capture saw %d packets between the pods, want >= 6:%s", len(obs), summary(obs))
					}
					for _, o := range obs {
						if o.outerLen != tc.underlayMTU {
							t.Fatalf("packet of %d bytes on the underlay, want %d (its MTU):%s", o.outerLen, tc.underlayMTU, summary([]observed{o}))
						}
					}

					out, err := ping(a.pod, b.podAddr(v6), 1, "-M", "do", "-s", fmt.Sprint(full+1))
					if err == nil {
						t.Fatalf("a packet one byte over the MTU crossed:\n%s", out)
					}
					if !strings.Contains(out, "message too long") {
						t.Errorf("ping one byte over the MTU failed without 'message too long':\n%s", out)
					}
				})
			}
		})
	}
}
