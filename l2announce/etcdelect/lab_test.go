package etcdelect_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/netblocks/netblocks/internal/etcdtest"
	"github.com/netblocks/netblocks/internal/testutil"
	"github.com/netblocks/netblocks/l2announce"
	"github.com/netblocks/netblocks/l2announce/etcdelect"
	"github.com/netblocks/netblocks/l2announce/internal/l2test"
)

// nodeEnv names the environment variable that makes the test binary run as
// a node process (see TestMain) with the nodeSpec it holds, in JSON.
const nodeEnv = "L2ANNOUNCE_TEST_NODE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(nodeEnv); spec != "" {
		os.Exit(runNode(spec))
	}
	os.Exit(m.Run())
}

// VIPs of the namespace tests, inside the topology's prefixes.
var (
	labVIP4 = netip.MustParseAddr("192.0.2.200")
	labVIP6 = netip.MustParseAddr("2001:db8::200")
)

// labKey returns the Key of vip in the lab: every node's interface is eth0.
func labKey(vip netip.Addr) l2announce.Key { return l2announce.Key{VIP: vip, Segment: "eth0"} }

// nodeSpec is what a node needs to run, in its process or another.
type nodeSpec struct {
	Name          string
	NetNS         string // Path.
	Endpoint      string
	VIPs          []netip.Addr
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
}

// announce runs a Responder with an etcd elector for spec until ctx is done;
// ready is called once it runs.
func announce(ctx context.Context, spec nodeSpec, ready func()) error {
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{spec.Endpoint},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("connect to etcd: %w", err)
	}
	defer client.Close()
	var logger *slog.Logger
	if os.Getenv(logEnv) == "1" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", spec.Name)
	}
	el, err := etcdelect.New(client, etcdelect.Config{
		Name:          spec.Name,
		LeaseDuration: spec.LeaseDuration,
		RenewDeadline: spec.RenewDeadline,
		RetryPeriod:   spec.RetryPeriod,
		Logger:        logger,
	})
	if err != nil {
		return err
	}
	r, err := l2announce.New(l2announce.Config{
		Interfaces:   []string{"^eth0$"},
		NetNS:        spec.NetNS,
		Elector:      el,
		MaxReplyRate: -1,
		Logger:       logger,
	})
	if err != nil {
		return err
	}
	if err := r.SetVIPs(spec.VIPs); err != nil {
		return err
	}
	ready()
	return r.Run(ctx)
}

// runNode is the main function of a node process: it announces until
// SIGTERM (a canceled context) or SIGKILL.
func runNode(specJSON string) int {
	var spec nodeSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := announce(ctx, spec, func() { fmt.Println("ready") })
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	return 0
}

// node is one announcing node of a lab, run in the test's process or in a
// process of its own.
type node struct {
	spec    nodeSpec
	mac     net.HardwareAddr
	proxy   *l2test.Proxy // Between the node and etcd.
	process bool

	// In the test's process.
	cancel context.CancelFunc
	// In a process: its PID.
	pid  int
	done chan error // Run's or the process's end.
}

// start starts the node and waits until it runs.
func (n *node) start(tb testing.TB) {
	tb.Helper()
	n.done = make(chan error, 1)
	if !n.process {
		ctx, cancel := context.WithCancel(context.Background())
		n.cancel = cancel
		ready := make(chan struct{})
		go func() { n.done <- announce(ctx, n.spec, func() { close(ready) }) }()
		select {
		case <-ready:
		case err := <-n.done:
			tb.Fatalf("start node %s: %v", n.spec.Name, err)
		}
		return
	}

	spec, err := json.Marshal(n.spec)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	// The node dies with the thread that started it, which lives until
	// the node ends: a crashed test leaves no node behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		n.done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		tb.Fatalf("start node %s: %v", n.spec.Name, err)
	}
	n.pid = cmd.Process.Pid
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		tb.Fatalf("start node %s: read %q, %v", n.spec.Name, line, err)
	}
	go io.Copy(io.Discard, stdout)
}

// stop ends the node: "term" cancels its context (SIGTERM for a process),
// "kill" kills its process with SIGKILL; both wait for the end.
func (n *node) stop(tb testing.TB, how string) {
	tb.Helper()
	if n.done == nil {
		return
	}
	switch {
	case !n.process:
		n.cancel()
	case how == "kill":
		syscall.Kill(n.pid, syscall.SIGKILL)
	default:
		syscall.Kill(n.pid, syscall.SIGTERM)
	}
	select {
	case <-n.done:
	case <-time.After(15 * time.Second):
		tb.Fatalf("node %s did not end", n.spec.Name)
	}
	n.done = nil
}

// lab is two announcing nodes and a client on a bridge, and an etcd server.
type lab struct {
	tb       testing.TB
	top      *testutil.Topology
	nodes    []*node
	client   *testutil.Node
	cl       *l2test.Client
	etcd     *clientv3.Client
	stopEtcd func()
	observer *etcdelect.Elector
	timing   etcdelect.Config
}

// newLab builds the lab and starts its nodes, in processes if processes is
// set, with timing's LeaseDuration, RenewDeadline and RetryPeriod.
func newLab(tb testing.TB, timing etcdelect.Config, processes bool) *lab {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	l := &lab{tb: tb, timing: timing}
	l.etcd, l.stopEtcd = etcdtest.StartStoppable(tb)
	l.top = testutil.NewTopology(tb, testutil.TopologyConfig{Nodes: 3, Bridge: true})
	l.client = l.top.Nodes[2]
	l.cl = l2test.NewClient(tb, l.client.NS, l.client.Link, l.client.Addr.Addr(), l.client.Addr6.Addr())
	obs := timing
	obs.Name = "observer"
	var err error
	if l.observer, err = etcdelect.New(l.etcd, obs); err != nil {
		tb.Fatal(err)
	}
	endpoint := strings.TrimPrefix(l.etcd.Endpoints()[0], "http://")
	for i, tn := range l.top.Nodes[:2] {
		n := &node{
			spec: nodeSpec{
				Name:          fmt.Sprintf("node%d", i),
				NetNS:         filepath.Join("/var/run/netns", tn.NS.Name()),
				VIPs:          []netip.Addr{labVIP4, labVIP6},
				LeaseDuration: timing.LeaseDuration,
				RenewDeadline: timing.RenewDeadline,
				RetryPeriod:   timing.RetryPeriod,
			},
			mac:     tn.HWAddr,
			proxy:   l2test.NewProxy(tb, endpoint),
			process: processes,
		}
		n.spec.Endpoint = n.proxy.Addr()
		l.nodes = append(l.nodes, n)
	}
	for _, n := range l.nodes {
		n.start(tb)
		tb.Cleanup(func() { n.stop(tb, "kill") })
	}
	for _, n := range l.nodes {
		l.waitCandidate(n, labVIP4)
	}
	return l
}

// byName returns the node called name, or nil.
func (l *lab) byName(name string) *node {
	for _, n := range l.nodes {
		if n.spec.Name == name {
			return n
		}
	}
	return nil
}

// other returns the node that is not n.
func (l *lab) other(n *node) *node {
	if l.nodes[0] == n {
		return l.nodes[1]
	}
	return l.nodes[0]
}

// leader waits until some node holds vip's Key, as etcd records it, and
// answers for it on the wire, and returns it.
func (l *lab) leader(vip netip.Addr) *node {
	l.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		name, err := l.observer.Holder(ctx, labKey(vip))
		if n := l.byName(name); err == nil && n != nil {
			if _, err := l.cl.Resolve(ctx, vip, func(r l2test.Reply) bool { return slices.Equal(r.MAC, n.mac) }); err == nil {
				return n
			}
		}
		select {
		case <-ctx.Done():
			l.tb.Fatalf("no leader for %s: %v", vip, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitCandidate waits until n campaigns for vip in etcd.
func (l *lab) waitCandidate(n *node, vip netip.Addr) {
	l.tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		names, err := l.observer.Candidates(context.Background(), labKey(vip))
		if err == nil && slices.Contains(names, n.spec.Name) {
			return
		}
		if time.Now().After(deadline) {
			l.tb.Fatalf("%s not a candidate for %s: %v, %v", n.spec.Name, vip, names, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// watchHolders records, from an etcd watch, the nodes that hold vip's Key in
// turn, and returns a function that stops recording and returns them. A
// holder that loses its lease without the test's doing (under heavy load,
// say) counts as a failover too.
func (l *lab) watchHolders(vip netip.Addr) (stop func() []string) {
	l.tb.Helper()
	key := etcdelect.DefaultPrefix + url.PathEscape("eth0") + "/" + vip.String() + "/holder"
	resp, err := l.etcd.Get(context.Background(), key)
	if err != nil {
		l.tb.Fatal(err)
	}
	var holders []string
	for _, kv := range resp.Kvs {
		holders = append(holders, string(kv.Value))
	}
	ctx, cancel := context.WithCancel(context.Background())
	watch := l.etcd.Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wr := range watch {
			for _, ev := range wr.Events {
				v := string(ev.Kv.Value)
				if ev.Type == clientv3.EventTypePut && (len(holders) == 0 || holders[len(holders)-1] != v) {
					holders = append(holders, v)
				}
			}
		}
	}()
	return func() []string {
		cancel()
		<-done
		return holders
	}
}

// firstFrom waits for the first answer or announcement for vip from mac the
// client receives at or after since.
func (l *lab) firstFrom(vip netip.Addr, mac net.HardwareAddr, since time.Time, timeout time.Duration) (l2test.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return l.cl.Wait(ctx, since, func(r l2test.Reply) bool { return r.VIP == vip && slices.Equal(r.MAC, mac) })
}
