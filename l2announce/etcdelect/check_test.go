package etcdelect_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/netblocks/netblocks/l2announce/internal/l2test"
)

// recordingTB records the failures of a check instead of failing the test.
// checkOneAnswerer calls no other method (Fatal returns here, unlike the
// real one).
type recordingTB struct {
	testing.TB
	errors []string
}

func (r *recordingTB) Helper()             {}
func (r *recordingTB) Logf(string, ...any) {}
func (r *recordingTB) Errorf(f string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(f, args...))
}
func (r *recordingTB) Fatal(args ...any) { r.errors = append(r.errors, fmt.Sprint(args...)) }

// TestCheckOneAnswerer checks that the capture check catches two answerers.
func TestCheckOneAnswerer(t *testing.T) {
	a := net.HardwareAddr{2, 0, 0, 0, 0, 0xa}
	b := net.HardwareAddr{2, 0, 0, 0, 0, 0xb}
	vip := netip.MustParseAddr("192.0.2.200")
	at := time.Now()
	answer := func(mac net.HardwareAddr, port string, id uint32) l2test.Frame {
		at = at.Add(time.Millisecond)
		return l2test.Frame{At: at, Port: port, Op: 2, SHA: mac, SPA: vip, TPA: netip.MustParseAddr("198.18.0.1"), ID: id}
	}
	garp := func(mac net.HardwareAddr, port string) l2test.Frame {
		at = at.Add(time.Millisecond)
		return l2test.Frame{At: at, Port: port, Op: 1, SHA: mac, SPA: vip, TPA: vip}
	}
	for _, tt := range []struct {
		name    string
		frames  []l2test.Frame
		leaders []net.HardwareAddr
		want    string // In the failure; "" for none.
	}{
		{"clean failover", []l2test.Frame{answer(a, "node0", 1), answer(a, "node0", 2), garp(b, "node1"), answer(b, "node1", 5)}, []net.HardwareAddr{a, b}, ""},
		{"old leader after new", []l2test.Frame{answer(a, "node0", 1), garp(b, "node1"), answer(a, "node0", 3), answer(b, "node1", 4)}, []net.HardwareAddr{a, b}, "answering MACs"},
		{"one probe, two answers", []l2test.Frame{answer(a, "node0", 1), answer(b, "node1", 1)}, []net.HardwareAddr{a, b}, "probes answered twice"},
		{"client frames ignored", []l2test.Frame{answer(a, "node0", 1), answer(b, "node2", 2), answer(a, "node0", 3)}, []net.HardwareAddr{a}, ""},
		{"missing failover", []l2test.Frame{answer(a, "node0", 1)}, []net.HardwareAddr{a, b}, "answering MACs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordingTB{TB: t}
			checkOneAnswerer(rec, tt.frames, vip, tt.leaders)
			got := strings.Join(rec.errors, "\n")
			if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
				t.Errorf("failures %q, want %q", got, tt.want)
			}
		})
	}
}
