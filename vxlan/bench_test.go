package vxlan

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/netblocks/netblocks/internal/testutil"
)

// tcpPath is a pair of namespaces a TCP stream is measured between.
type tcpPath struct {
	name     string
	src, dst *testutil.NetNS
	dstAddr  netip.Addr
}

// tcpThroughput sends size bytes over one TCP connection from src to a
// listener on dst in dstNS and returns how long it took, from connect to
// the receiver's last byte.
func tcpThroughput(src, dstNS *testutil.NetNS, dst netip.Addr, size int64) (time.Duration, error) {
	var ln net.Listener
	if err := dstNS.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()

	type result struct {
		n   int64
		end time.Time
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		n, err := io.Copy(io.Discard, c)
		got <- result{n: n, end: time.Now(), err: err}
	}()

	start := time.Now()
	var c net.Conn
	if err := src.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	for sent := int64(0); sent < size; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return 0, err
		}
	}
	c.Close()
	r := <-got
	if r.err != nil {
		return 0, r.err
	}
	if r.n < size {
		return 0, fmt.Errorf("received %d bytes, sent %d", r.n, size)
	}
	return r.end.Sub(start), nil
}

// twoPods builds two nodes with a pod each, joined by an overlay in mode
// made from cfg, and returns the path from pod 0 to pod 1.
func twoPods(b *testing.B, name string, cfg Config) *tcpPath {
	b.Helper()
	nodes := labNodes(b, testutil.NewTopology(b, testutil.TopologyConfig{}), true, false)
	for _, n := range nodes {
		c := cfg
		c.LocalAddr = n.Addr.Addr()
		newOverlay(b, n, c)
		addPod(b, n, n.ov.MTU())
	}
	syncAll(b, nodes)
	return &tcpPath{name: name, src: nodes[0].pod, dst: nodes[1].pod, dstAddr: nodes[1].podAddr(false)}
}

// BenchmarkPodToPodTCP measures one TCP stream from a pod on one node to a
// pod on another through the VXLAN tunnel (with checksum offload on, and
// off as DisableTxChecksum makes it), through Native routing, and between
// two namespaces joined by a plain veth pair, in one run. The paths take
// turns, 128 MiB each per round, ten rounds per iteration, so that drift in
// the machine's load touches all alike. It reports each path's median
// Gbit/s over the rounds, and the medians of the per-round ratios of tunnel
// to native and to veth.
func BenchmarkPodToPodTCP(b *testing.B) {
	testutil.RequirePrivileged(b)
	top := testutil.NewTopology(b, testutil.TopologyConfig{})
	paths := []*tcpPath{
		twoPods(b, "tunnel", Config{}),
		twoPods(b, "tunnel-nocsum", Config{DisableTxChecksum: true}),
		twoPods(b, "native", Config{Mode: Native}),
		{name: "veth", src: top.Nodes[0].NS, dst: top.Nodes[1].NS, dstAddr: top.Nodes[1].Addr.Addr()},
	}
	const size = 128 << 20

	samples := make(map[string][]float64) // Gbit/s per round, and ratios
	for b.Loop() {
		for range 10 {
			round := make(map[string]float64)
			for _, p := range paths {
				d, err := tcpThroughput(p.src, p.dst, p.dstAddr, size)
				if err != nil {
					b.Fatalf("%s: %v", p.name, err)
				}
				round[p.name] = size * 8 / d.Seconds() / 1e9
				samples[p.name] = append(samples[p.name], round[p.name])
			}
			samples["tunnel/native"] = append(samples["tunnel/native"], round["tunnel"]/round["native"])
			samples["tunnel/veth"] = append(samples["tunnel/veth"], round["tunnel"]/round["veth"])
			samples["native/veth"] = append(samples["native/veth"], round["native"]/round["veth"])
			samples["nocsum/tunnel"] = append(samples["nocsum/tunnel"], round["tunnel-nocsum"]/round["tunnel"])
		}
	}

	for _, p := range paths {
		b.ReportMetric(median(samples[p.name]), p.name+"-Gbit/s")
	}
	for _, r := range []string{"tunnel/native", "tunnel/veth", "native/veth", "nocsum/tunnel"} {
		b.ReportMetric(median(samples[r]), r)
	}
}

// median returns the median of xs, which it sorts.
func median(xs []float64) float64 {
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// BenchmarkSync measures Sync of 1,000 peers in Tunnel mode (a route, a
// neighbour and an FDB entry each) from nothing, again with nothing to do,
// and down to no peers.
func BenchmarkSync(b *testing.B) {
	testutil.RequirePrivileged(b)
	n := labNodes(b, testutil.NewTopology(b, testutil.TopologyConfig{}), true, false)[0]
	ov := newOverlay(b, n, Config{LocalAddr: n.Addr.Addr()})
	peers := peerSet(1000, 1)

	var first, resync, remove time.Duration
	for b.Loop() {
		for _, step := range []struct {
			peers []Peer
			took  *time.Duration
			want  int // objects changed
		}{{peers, &first, 3000}, {peers, &resync, 0}, {nil, &remove, 3000}} {
			start := time.Now()
			c, err := ov.Sync(step.peers)
			*step.took += time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
			if got := c.Routes.Added + c.Neighbors.Added + c.FDB.Added + c.Routes.Removed + c.Neighbors.Removed + c.FDB.Removed; got != step.want {
				b.Fatalf("Sync changed %d objects (%v), want %d", got, c, step.want)
			}
		}
	}
	b.ReportMetric(float64(first.Milliseconds())/float64(b.N), "first-ms")
	b.ReportMetric(float64(resync.Microseconds())/1000/float64(b.N), "resync-ms")
	b.ReportMetric(float64(remove.Milliseconds())/float64(b.N), "remove-ms")
}
