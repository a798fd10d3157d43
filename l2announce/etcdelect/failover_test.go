package etcdelect_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netblocks/netblocks/l2announce/internal/l2test"
)

// probeInterval is how often the client of the failover tests asks.
const probeInterval = 5 * time.Millisecond

// TestFailover resolves both VIPs from the client to their leader's MAC,
// ends the leader (its Responder's context canceled in this process, or its
// process killed with SIGKILL), and resolves them again to the other node.
func TestFailover(t *testing.T) {
	for _, tt := range []struct {
		name    string
		process bool
		how     string
	}{
		{"context-canceled", false, "term"},
		{"process-killed", true, "kill"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newLab(t, fast, tt.process)
			before := map[netip.Addr]*node{}
			for _, vip := range []netip.Addr{labVIP4, labVIP6} {
				before[vip] = l.leader(vip)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				r, err := l.cl.Resolve(ctx, vip, nil)
				cancel()
				if err != nil || !slices.Equal(r.MAC, before[vip].mac) {
					t.Fatalf("resolve %s: %s, %v; want the leader %s's %s", vip, r.MAC, err, before[vip].spec.Name, before[vip].mac)
				}
			}

			victim := before[labVIP4]
			start := time.Now()
			victim.stop(t, tt.how)
			for _, vip := range []netip.Addr{labVIP4, labVIP6} {
				want := before[vip]
				if want == victim {
					want = l.other(victim)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := l.cl.Resolve(ctx, vip, func(r l2test.Reply) bool { return !slices.Equal(r.MAC, victim.mac) })
				cancel()
				if err != nil || !slices.Equal(r.MAC, want.mac) {
					t.Fatalf("resolve %s after %s ended: %s, %v; want %s's %s", vip, victim.spec.Name, r.MAC, err, want.spec.Name, want.mac)
				}
				t.Logf("%s: answered by %s %v after %s ended", vip, want.spec.Name, r.At.Sub(start), victim.spec.Name)
			}
		})
	}
}

// TestNeverTwoAnswerers fails the leader over again and again, by SIGTERM
// (a graceful release), SIGKILL and a partition from etcd (the leader keeps
// running and would answer if it did not stop by itself), while the client
// probes every 5ms and the bridge captures every ARP frame. See
// checkOneAnswerer for what "at once" means.
func TestNeverTwoAnswerers(t *testing.T) {
	l := newLab(t, fast, true)
	capture := l2test.StartCapture(t, l.top.Switch, "br0", "lo")
	ctx, cancel := context.WithCancel(context.Background())
	waitProbes := l.cl.ProbeEvery(ctx, labVIP4, probeInterval)
	defer func() {
		cancel()
		waitProbes()
	}()

	stopHolders := l.watchHolders(labVIP4)
	for i, how := range []string{"term", "kill", "partition", "term", "kill", "partition"} {
		leader := l.leader(labVIP4)
		next := l.other(leader)
		start := time.Now()
		if how == "partition" {
			leader.proxy.Partition()
		} else {
			leader.stop(t, how)
		}
		r, err := l.firstFrom(labVIP4, next.mac, start, 10*time.Second)
		if err != nil {
			t.Fatalf("round %d (%s): no answer from %s: %v", i, how, next.spec.Name, err)
		}
		t.Logf("round %d: %s of %s, %s answers after %v", i, how, leader.spec.Name, next.spec.Name, r.At.Sub(start))

		// The old leader comes back as a candidate.
		if how == "partition" {
			leader.proxy.Heal()
			time.Sleep(2 * fast.LeaseDuration) // Its session notices and starts over.
		} else {
			leader.start(t)
		}
		l.waitCandidate(leader, labVIP4)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	waitProbes()
	time.Sleep(50 * time.Millisecond)
	capture.Stop()
	holders := stopHolders()
	if len(holders) != 7 {
		t.Logf("holders in turn: %v (6 failovers by the test, the others by load)", holders)
	}

	var macs []net.HardwareAddr
	for _, name := range holders {
		macs = append(macs, l.byName(name).mac)
	}
	checkOneAnswerer(t, capture.Frames(), labVIP4, macs)
}

// checkOneAnswerer checks the ARP frames captured at the bridge about vip
// (answers to the client's probes, and gratuitous ARP) against the sequence
// of leaders (as etcd recorded them). Two nodes answered at once if:
//
//   - two MACs answered one probe (an instant is a probe: the probes are
//     5ms apart, and each is answered at most once), or
//   - in the order the frames arrived at the bridge, a MAC answered or
//     announced after the first frame from the next leader, before its own
//     next term: the MACs of the frames, collapsed into runs, must be
//     exactly the sequence of leaders.
func checkOneAnswerer(tb testing.TB, frames []l2test.Frame, vip netip.Addr, leaders []net.HardwareAddr) {
	tb.Helper()
	byID := map[uint32]net.HardwareAddr{}
	var runs []net.HardwareAddr
	var runStart []time.Time
	var gaps []string
	var last time.Time
	answers, announcements := 0, 0
	var doubles []string
	for _, f := range frames {
		if f.SPA != vip || !strings.HasPrefix(f.Port, "node") || f.Port == "node2" {
			continue // Not from a node about vip (node2 is the client).
		}
		if f.Announcement() {
			announcements++
		} else if f.Op == 2 && f.ID != 0 {
			answers++
			if prev, ok := byID[f.ID]; ok && !slices.Equal(prev, f.SHA) {
				doubles = append(doubles, fmt.Sprintf("probe %d answered by %s and %s", f.ID, prev, f.SHA))
			}
			byID[f.ID] = f.SHA
		} else {
			continue
		}
		if len(runs) == 0 || !slices.Equal(runs[len(runs)-1], f.SHA) {
			if len(runs) > 0 {
				gaps = append(gaps, f.At.Sub(last).Round(time.Millisecond).String())
			}
			runs = append(runs, f.SHA)
			runStart = append(runStart, f.At)
		}
		last = f.At
	}
	tb.Logf("%d answers and %d announcements of %s from the nodes; silences between leaders: %s",
		answers, announcements, vip, strings.Join(gaps[:min(len(gaps), 20)], " "))
	if answers == 0 {
		tb.Fatal("no answer captured")
	}
	if len(doubles) > 0 {
		tb.Errorf("%d probes answered twice: %s", len(doubles), strings.Join(doubles[:min(len(doubles), 5)], "; "))
	}
	if !slices.EqualFunc(runs, leaders, func(a, b net.HardwareAddr) bool { return slices.Equal(a, b) }) {
		var got, want []string
		for i, r := range runs[:min(len(runs), 20)] {
			got = append(got, fmt.Sprintf("%s@%s", r, runStart[i].Format(time.StampMicro)))
		}
		if len(runs) > 20 {
			got = append(got, fmt.Sprintf("... %d runs in all", len(runs)))
		}
		for _, m := range leaders {
			want = append(want, m.String())
		}
		tb.Errorf("answering MACs in order of arrival:\n  %s\nwant the leaders:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// TestEtcdStoppedSilencesLeader stops etcd: the leader must stop answering
// within RenewDeadline (it cannot renew), and no node may answer after that.
func TestEtcdStoppedSilencesLeader(t *testing.T) {
	l := newLab(t, fast, false)
	capture := l2test.StartCapture(t, l.top.Switch, "br0", "lo")
	ctx, cancel := context.WithCancel(context.Background())
	waitProbes := l.cl.ProbeEvery(ctx, labVIP4, probeInterval)
	defer func() {
		cancel()
		waitProbes()
	}()
	leader := l.leader(labVIP4)
	time.Sleep(300 * time.Millisecond)

	stoppedAt := time.Now()
	l.stopEtcd()
	time.Sleep(2 * fast.LeaseDuration)
	cancel()
	waitProbes()
	capture.Stop()

	var lastFromLeader time.Time
	for _, f := range capture.Frames() {
		if f.SPA != labVIP4 || !strings.HasPrefix(f.Port, "node") || f.Port == "node2" {
			continue
		}
		if !slices.Equal(f.SHA, leader.mac) {
			if f.At.After(stoppedAt) {
				t.Errorf("%s answered at %v after etcd stopped", f.SHA, f.At.Sub(stoppedAt))
			}
			continue
		}
		lastFromLeader = f.At
	}
	silentAfter := lastFromLeader.Sub(stoppedAt)
	t.Logf("the leader's last answer came %v after etcd stopped (RenewDeadline %v)", silentAfter, fast.RenewDeadline)
	// The leader answers only before the start of its last successful
	// renewal plus RenewDeadline; the capture sees an answer a moment
	// after it is sent. The slack is far below LeaseDuration-RenewDeadline.
	const captureSlack = 50 * time.Millisecond
	if silentAfter > fast.RenewDeadline+captureSlack {
		t.Errorf("the leader answered %v after etcd stopped, beyond RenewDeadline %v", silentAfter, fast.RenewDeadline)
	}
}
