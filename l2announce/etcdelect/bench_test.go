package etcdelect_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netblocks/netblocks/l2announce/etcdelect"
)

// failoverRuns is how many failovers each failover benchmark measures.
const failoverRuns = 20

// BenchmarkFailover measures failover time: from the moment the leader of a
// VIP is ended (its process killed with SIGKILL, or sent SIGTERM, which
// cancels its Responder's context and releases its leases) to the first ARP
// frame from the new leader that the client receives, while the client
// probes every 5ms. Each run waits until the leader renews in steady state,
// ends it at a random moment between two renewals, and brings it back as a
// candidate; the leaders alternate. It reports the median and the worst
// of 20 runs (run it with -benchtime=1x), at a 1s lease and at Cilium's
// 3s / 1s / 200ms.
func BenchmarkFailover(b *testing.B) {
	for _, timing := range []struct {
		name string
		cfg  etcdelect.Config
	}{
		{"lease=1s", etcdelect.Config{LeaseDuration: time.Second, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond}},
		{"lease=3s", etcdelect.Config{LeaseDuration: 3 * time.Second, RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond}},
	} {
		for _, how := range []string{"kill", "term"} {
			b.Run(timing.name+"/"+how, func(b *testing.B) {
				benchmarkFailover(b, timing.cfg, how)
			})
		}
	}
}

func benchmarkFailover(b *testing.B, timing etcdelect.Config, how string) {
	l := newLab(b, timing, true)
	ctx, cancel := context.WithCancel(context.Background())
	waitProbes := l.cl.ProbeEvery(ctx, labVIP4, probeInterval)
	defer func() {
		cancel()
		waitProbes()
	}()

	leader := l.leader(labVIP4)
	var times []time.Duration
	b.ResetTimer()
	for range failoverRuns {
		// The leader renews in steady state, and fails at a random
		// moment between two renewals.
		time.Sleep(timing.RenewDeadline + rand.N(timing.RetryPeriod))
		next := l.other(leader)
		start := time.Now()
		leader.stop(b, how)
		r, err := l.firstFrom(labVIP4, next.mac, start, 4*timing.LeaseDuration+5*time.Second)
		if err != nil {
			b.Fatalf("no answer from %s after %s of %s: %v", next.spec.Name, how, leader.spec.Name, err)
		}
		times = append(times, r.At.Sub(start))
		leader.start(b)
		l.waitCandidate(leader, labVIP4)
		leader = next
	}
	b.StopTimer()

	var all []string
	for _, d := range times {
		all = append(all, d.Round(time.Millisecond).String())
	}
	slices.Sort(times)
	median := (times[len(times)/2-1] + times[len(times)/2]) / 2
	worst, best := times[len(times)-1], times[0]
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(median), "median-ms")
	b.ReportMetric(ms(worst), "worst-ms")
	b.ReportMetric(ms(best), "best-ms")
	b.Logf("lease %v, renew deadline %v, retry %v, %s: median %v, worst %v, best %v over %d runs: %s",
		timing.LeaseDuration, timing.RenewDeadline, timing.RetryPeriod, how,
		median.Round(time.Millisecond), worst.Round(time.Millisecond), best.Round(time.Millisecond),
		len(times), strings.Join(all, " "))
}
