package wireguard

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/testutil"
)

// measureDuration is how long each throughput measurement sends.
const measureDuration = 2500 * time.Millisecond

// BenchmarkThroughput measures TCP throughput from one pod to the other,
// through the embedded backend's tunnel and then over plain routes between
// the same nodes (the same veths, unencrypted), in one run, and reports both
// in Gbit/s and their ratio. Each iteration takes about 5 s: run it with
// -benchtime 1x (or Nx).
func BenchmarkThroughput(b *testing.B) {
	testutil.RequirePrivileged(b)
	l := newLab(b)
	l.start(b, Config{Backend: Embedded, Logger: testLogger(b)})
	a, c := l.nodes[0], l.nodes[1]
	dst := c.podAddr(false)

	var tunnel, plain []float64
	for range b.N {
		l.connect(b)
		if err := tcpTransfer(a.pod, c.pod, dst, 1<<20); err != nil { // warm up: handshake, ARP
			b.Fatal(err)
		}
		gbps, err := throughput(a.pod, c.pod, dst, measureDuration)
		if err != nil {
			b.Fatalf("through the tunnel: %v", err)
		}
		tunnel = append(tunnel, gbps)

		undo := l.routePlain(b)
		if err := tcpTransfer(a.pod, c.pod, dst, 1<<20); err != nil {
			b.Fatal(err)
		}
		gbps, err = throughput(a.pod, c.pod, dst, measureDuration)
		if err != nil {
			b.Fatalf("over plain routes: %v", err)
		}
		plain = append(plain, gbps)
		undo()
	}
	wg, veth := mean(tunnel), mean(plain)
	b.ReportMetric(wg, "Gbit/s-wireguard")
	b.ReportMetric(veth, "Gbit/s-veth")
	b.ReportMetric(wg/veth, "wireguard/veth")
	b.Logf("TCP pod to pod: %.2f Gbit/s through wireguard-go, %.2f Gbit/s over plain veth routes (ratio %.2f; runs %v and %v)",
		wg, veth, wg/veth, tunnel, plain)
}

// routePlain removes the nodes' peers and routes each node's pod CIDRs via
// its underlay address instead, unencrypted. The function it returns puts the
// tunnel back.
func (l *lab) routePlain(tb testing.TB) func() {
	tb.Helper()
	var added []func()
	for i, n := range l.nodes {
		if err := n.dev.SetPeers(nil); err != nil {
			tb.Fatal(err)
		}
		other := l.nodes[1-i]
		for _, cidr := range other.cidrs[:1] {
			r := &netlink.Route{LinkIndex: n.Index, Dst: ipNet(cidr), Gw: other.Addr.Addr().AsSlice()}
			if err := n.NS.Netlink().RouteAdd(r); err != nil {
				tb.Fatalf("add plain route %s: %v", r, err)
			}
			h := n.NS.Netlink()
			added = append(added, func() {
				if err := h.RouteDel(r); err != nil {
					tb.Errorf("delete plain route %s: %v", r, err)
				}
			})
		}
	}
	return func() {
		for _, del := range added {
			del()
		}
		l.connect(tb)
	}
}

// throughput sends over TCP from a socket in src to a listener on dst in
// dstNS for d, and returns the receiver's goodput in Gbit/s.
func throughput(src, dstNS *testutil.NetNS, dst netip.Addr, d time.Duration) (float64, error) {
	ln, err := listenIn(dstNS, dst)
	if err != nil {
		return 0, err
	}
	defer ln.Close()

	type result struct {
		n       int64
		elapsed time.Duration
		err     error
	}
	got := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer conn.Close()
		start := time.Now()
		n, err := io.CopyBuffer(io.Discard, conn, make([]byte, 256<<10))
		got <- result{n: n, elapsed: time.Since(start), err: err}
	}()

	conn, err := dialIn(src, "tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		return 0, fmt.Errorf("connect to %s: %w", ln.Addr(), err)
	}
	buf := make([]byte, 256<<10)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if _, err := conn.Write(buf); err != nil {
			conn.Close()
			return 0, fmt.Errorf("send to %s: %w", ln.Addr(), err)
		}
	}
	conn.Close()
	r := <-got
	if r.err != nil {
		return 0, fmt.Errorf("receive on %s: %w", ln.Addr(), r.err)
	}
	return float64(r.n) * 8 / r.elapsed.Seconds() / 1e9, nil
}

// BenchmarkRotationGap measures the traffic gap of a key rotation: the time
// from Rotate on one node until a UDP datagram its pod sends (one every
// millisecond from Rotate on) comes back from the other node's pod. The other
// node is told the new key at once, or a second later, as a cluster store
// might take. It reports the mean and the largest gap in milliseconds.
func BenchmarkRotationGap(b *testing.B) {
	testutil.RequirePrivileged(b)
	l := newLab(b)
	l.start(b, Config{Backend: Embedded, Logger: testLogger(b)})
	a, c := l.nodes[0], l.nodes[1]
	echo := startUDPEcho(b, c.pod, c.podAddr(false))
	if err := tcpTransfer(a.pod, c.pod, c.podAddr(false), 1<<20); err != nil {
		b.Fatal(err)
	}

	for _, delay := range []time.Duration{0, time.Second} {
		b.Run(fmt.Sprintf("published-after-%v", delay), func(b *testing.B) {
			var gaps []float64
			for range b.N {
				gap, err := rotationGap(a, c, echo, delay)
				if err != nil {
					b.Fatal(err)
				}
				gaps = append(gaps, float64(gap.Microseconds())/1000)
			}
			b.Logf("gaps (ms): %v", gaps)
			b.ReportMetric(mean(gaps), "ms-gap-mean")
			b.ReportMetric(slices.Max(gaps), "ms-gap-max")
		})
	}
}

// rotationGap rotates the key of a, tells c the new key after delay, and
// returns how long after Rotate a datagram from a's pod first came back from
// the echo server in c's pod.
func rotationGap(a, c *labNode, echo *udpEcho, delay time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := a.dev.Rotate(); err != nil {
		return 0, err
	}
	published := make(chan error, 1)
	time.AfterFunc(delay, func() { published <- c.dev.SetPeers([]Peer{a.peer()}) })
	at, err := waitExchange(ctx, a.pod, echo.conn.LocalAddr(), time.Millisecond)
	if perr := <-published; perr != nil {
		return 0, perr
	}
	if err != nil {
		return 0, err
	}
	return at.Sub(start), nil
}

func mean(xs []float64) float64 {
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}
