package lbmap

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/kernel"
	"github.com/netblocks/netblocks/internal/testutil"
)

// sockChildEnv carries the JSON plan of a TestSocketLBChild run; the test is
// a no-op without it.
const sockChildEnv = "NETBLOCKS_SOCKLB_CHILD_PLAN"

// sockResultPrefix starts the line on which the child prints its results.
const sockResultPrefix = "socklb-results: "

// Bounds of the socket tests' waits.
const (
	sockIOTimeout    = 3 * time.Second  // one connect, send or receive in the child
	sockChildTimeout = 60 * time.Second // the whole child process
	sockServerIdle   = 5 * time.Second  // a TCP backend's connection
	sockUDPTries     = 3                // datagrams sent before an attempt gives up
)

// sockOp is an operation the child repeats Count times, each with a new socket.
type sockOp struct {
	Kind   string         // "tcp", "udp" (unconnected: sendto/recvfrom) or "udp-connected"
	Sock   int            // socket family, 4 or 6; 6 with an IPv4 target is a dual-stack socket using a v4-mapped address
	Target netip.AddrPort // where the client connects or sends to
	Count  int
	Repeat int // UDP: request/reply exchanges per socket, all with one backend; default 1
}

// sockAttempt is what one attempt of a sockOp saw.
type sockAttempt struct {
	Op    int            // index of the sockOp in the plan
	Err   string         // "" on success; an errno name such as "ECONNREFUSED", or a message
	Reply string         // the id of the server that answered
	From  netip.AddrPort // UDP: the source recvfrom reported, unmapped
	Calls int            // connect and sendto calls made to Target
}

// TestSocketLBChild is the client that TestSocketLB runs in its private
// cgroup and network namespace: it carries out the plan in sockChildEnv with
// real sockets and prints what happened. Run directly, it does nothing.
func TestSocketLBChild(t *testing.T) {
	plan := os.Getenv(sockChildEnv)
	if plan == "" {
		return
	}
	var ops []sockOp
	if err := json.Unmarshal([]byte(plan), &ops); err != nil {
		t.Fatalf("decode plan: %v", err)
	}
	var res []sockAttempt
	for i, op := range ops {
		for n := range op.Count {
			a := sockAttemptRun(op, fmt.Sprintf("ping-%d-%d", i, n))
			a.Op = i
			res = append(res, a)
		}
	}
	out, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("\n%s%s\n", sockResultPrefix, out)
}

// sockAttemptRun makes one attempt of op with a new non-blocking socket,
// polling with bounded waits (blocking calls on a socket with a timeout fail
// with EINTR on the Go runtime's signals).
func sockAttemptRun(op sockOp, payload string) (a sockAttempt) {
	fail := func(err error) sockAttempt { return a.failed(err) }
	domain, typ := unix.AF_INET, unix.SOCK_STREAM
	if op.Sock == 6 {
		domain = unix.AF_INET6
	}
	if op.Kind != "tcp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	defer unix.Close(fd)
	if op.Sock == 6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return fail(fmt.Errorf("clear IPV6_V6ONLY: %w", err))
		}
	}
	sa := sockaddrOf(op.Sock, op.Target)
	deadline := time.Now().Add(sockIOTimeout)

	if op.Kind == "tcp" || op.Kind == "udp-connected" {
		a.Calls++
		if err := sockConnect(fd, sa, deadline); err != nil {
			return fail(err)
		}
	}
	if op.Kind == "tcp" {
		if _, err := unix.Write(fd, []byte(payload)); err != nil {
			return fail(fmt.Errorf("write: %w", err))
		}
		var reply []byte
		buf := make([]byte, 256)
		for {
			if err := sockWait(fd, unix.POLLIN, deadline); err != nil {
				return fail(fmt.Errorf("wait for reply: %w", err))
			}
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			if err != nil {
				return fail(fmt.Errorf("read: %w", err))
			}
			if n == 0 {
				break
			}
			reply = append(reply, buf[:n]...)
		}
		return sockCheckReply(a, reply, payload)
	}

	for i := range max(op.Repeat, 1) {
		b := sockExchangeUDP(fd, op, sa, fmt.Sprintf("%s-%d", payload, i), &a)
		switch {
		case b.Err != "":
			return b
		case i > 0 && (b.Reply != a.Reply || b.From != a.From):
			a.Err = fmt.Sprintf("one socket's datagrams answered by %s from %v and by %s from %v", a.Reply, a.From, b.Reply, b.From)
			return a
		}
		a = b
	}
	return a
}

// sockExchangeUDP sends payload on the UDP socket fd (to sa if op is
// unconnected) until a reply comes, at most sockUDPTries times, and returns
// a completed with what it saw. It counts the sendto calls in a.Calls.
func sockExchangeUDP(fd int, op sockOp, sa unix.Sockaddr, payload string, a *sockAttempt) sockAttempt {
	fail := func(err error) sockAttempt { return a.failed(err) }
	var err error
	buf := make([]byte, 256)
	for try := 0; try < sockUDPTries; try++ {
		if op.Kind == "udp" {
			a.Calls++
			err = unix.Sendto(fd, []byte(payload), 0, sa)
		} else {
			_, err = unix.Write(fd, []byte(payload))
		}
		if err != nil {
			return fail(fmt.Errorf("send: %w", err))
		}
		deadline := time.Now().Add(sockIOTimeout / sockUDPTries)
		for {
			err := sockWait(fd, unix.POLLIN, deadline)
			if errors.Is(err, unix.ETIMEDOUT) {
				break // send again
			}
			if err != nil {
				return fail(fmt.Errorf("wait for reply: %w", err))
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			if err != nil {
				return fail(fmt.Errorf("recvfrom: %w", err))
			}
			r := *a
			r.From = addrPortOf(from)
			return sockCheckReply(r, buf[:n], payload)
		}
	}
	return fail(fmt.Errorf("no reply to %d datagrams: %w", sockUDPTries, unix.ETIMEDOUT))
}

// failed returns a with err as its outcome: the errno's name if err wraps
// one, else err's text.
func (a sockAttempt) failed(err error) sockAttempt {
	var errno unix.Errno
	if errors.As(err, &errno) {
		a.Err = unix.ErrnoName(errno)
	} else {
		a.Err = err.Error()
	}
	return a
}

// sockCheckReply fills a.Reply with the server id of a backend's reply
// "id|payload".
func sockCheckReply(a sockAttempt, reply []byte, payload string) sockAttempt {
	id, echoed, ok := strings.Cut(string(reply), "|")
	if !ok || echoed != payload {
		a.Err = fmt.Sprintf("reply %q does not echo %q", reply, payload)
		return a
	}
	a.Reply = id
	return a
}

// sockConnect connects the non-blocking socket fd to sa by deadline.
func sockConnect(fd int, sa unix.Sockaddr, deadline time.Time) error {
	err := unix.Connect(fd, sa)
	if !errors.Is(err, unix.EINPROGRESS) {
		return err
	}
	if err := sockWait(fd, unix.POLLOUT, deadline); err != nil {
		return fmt.Errorf("wait for connect: %w", err)
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fmt.Errorf("get SO_ERROR: %w", err)
	}
	if soErr != 0 {
		return unix.Errno(soErr)
	}
	return nil
}

// sockWait polls fd for events until deadline; ETIMEDOUT when it passes.
func sockWait(fd int, events int16, deadline time.Time) error {
	for {
		ms := time.Until(deadline).Milliseconds()
		if ms <= 0 {
			return unix.ETIMEDOUT
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: events}}, int(ms))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// sockaddrOf returns ap as a socket address of family (4 or 6), IPv4-mapped
// for an IPv4 address on an IPv6 socket.
func sockaddrOf(family int, ap netip.AddrPort) unix.Sockaddr {
	if family == 4 {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

// addrPortOf converts a received socket address, unmapping IPv4-mapped ones.
func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// sockServers are the backends on the server node: two TCP and two UDP echo
// servers that prefix each reply with their id.
type sockServers struct {
	tcp, udp map[string]netip.AddrPort // id -> address
}

// startSockServers starts the backends in ns on addr, stopped at cleanup.
func startSockServers(t *testing.T, ns *testutil.NetNS, addr netip.Addr) sockServers {
	t.Helper()
	srv := sockServers{tcp: map[string]netip.AddrPort{}, udp: map[string]netip.AddrPort{}}
	var (
		lns   []net.Listener
		pcs   []net.PacketConn
		wg    sync.WaitGroup
		bound = netip.AddrPortFrom(addr, 0).String()
	)
	err := ns.Do(func() error {
		for _, id := range []string{"tcp-a", "tcp-b"} {
			ln, err := net.Listen("tcp", bound)
			if err != nil {
				return err
			}
			lns = append(lns, ln)
			srv.tcp[id] = ln.Addr().(*net.TCPAddr).AddrPort()
		}
		for _, id := range []string{"udp-a", "udp-b"} {
			pc, err := net.ListenPacket("udp", bound)
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
			srv.udp[id] = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		}
		return nil
	})
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		for _, pc := range pcs {
			pc.Close()
		}
		wg.Wait()
	})
	if err != nil {
		t.Fatalf("start backends: %v", err)
	}
	for i, ln := range lns {
		id := []string{"tcp-a", "tcp-b"}[i]
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(sockServerIdle))
					buf := make([]byte, 256)
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write([]byte(id + "|" + string(buf[:n])))
				})
			}
		})
	}
	for i, pc := range pcs {
		id := []string{"udp-a", "udp-b"}[i]
		wg.Go(func() {
			buf := make([]byte, 256)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(id+"|"+string(buf[:n])), from)
			}
		})
	}
	return srv
}

// sockTestCgroup creates a uniquely named child of the cgroup v2 root for t
// and removes it at cleanup, once the processes in it have exited.
func sockTestCgroup(t *testing.T) string {
	t.Helper()
	root, err := kernel.CgroupV2Path()
	if err != nil {
		t.Fatalf("find cgroup v2: %v", err)
	}
	dir := filepath.Join(root, fmt.Sprintf("nbtest-%08x", rand.Uint32()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// An exited child may linger in the cgroup for a moment: EBUSY.
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) {
				return
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return dir
}

// runSockChild runs TestSocketLBChild with plan as a new process in cgroup
// (cloned into it) and in ns's network namespace, and returns its attempts.
func runSockChild(t *testing.T, ns *testutil.NetNS, cgroup string, plan []sockOp) []sockAttempt {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	enc, err := json.Marshal(plan)
	if err != nil {
		t.Fatal(err)
	}
	cg, err := unix.Open(cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	defer unix.Close(cg)

	ctx, cancel := context.WithTimeout(context.Background(), sockChildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestSocketLBChild$", "-test.count=1",
		"-test.timeout="+sockChildTimeout.String())
	cmd.Env = append(os.Environ(), sockChildEnv+"="+string(enc))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg}
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Forked from Do's thread, the child starts in the namespace.
	if err := ns.Do(cmd.Start); err != nil {
		t.Fatalf("start client: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	s := bufio.NewScanner(&stdout)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), sockResultPrefix); ok {
			var res []sockAttempt
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				t.Fatalf("decode client results: %v", err)
			}
			return res
		}
	}
	t.Fatalf("client printed no results\nstdout:\n%s\nstderr:\n%s", &stdout, &stderr)
	return nil
}

// sockConnectErr connects a TCP socket to ap from the calling test process
// (outside the test's cgroup) in ns, and returns the error.
func sockConnectErr(ns *testutil.NetNS, ap netip.AddrPort) error {
	return ns.Do(func() error {
		domain, family := unix.AF_INET, 4
		if ap.Addr().Is6() {
			domain, family = unix.AF_INET6, 6
		}
		fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		return sockConnect(fd, sockaddrOf(family, ap), time.Now().Add(sockIOTimeout))
	})
}

// Expected outcomes of a sockOp.
const (
	sockWantBackend   = iota // served by one of the service's backends, translated and counted
	sockWantNoBackend        // ECONNREFUSED from connect/sendto, counted as a drop
	sockWantDirect           // not a service: untouched, served by the target itself
	sockWantUnrouted         // left untranslated: the frontend is not routed (ENETUNREACH)
)

// sockCase is an operation with what it must show.
type sockCase struct {
	name     string
	op       sockOp
	want     int
	ids      []string       // sockWantBackend: the servers that may answer; sockWantDirect: the one that must
	from     netip.AddrPort // UDP: the source recvfrom must report
	spread   bool           // every id in ids must answer at least once
	affinity bool           // a single id must answer all attempts
}

// TestSocketLB attaches the socket-level load balancer to a cgroup of its own
// and proves it with a client process in that cgroup, for IPv4 and IPv6.
func TestSocketLB(t *testing.T) {
	testutil.RequireFeature(t, kernel.CgroupSockAddr)
	t.Parallel()
	for _, tc := range []struct {
		name      string
		v6        bool
		frontends string // prefix of the service addresses
	}{
		{"IPv4", false, "10.96.0."},
		{"IPv6", true, "fd00:96::"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testSocketLB(t, tc.v6, func(host int) netip.Addr {
				return netip.MustParseAddr(fmt.Sprintf("%s%d", tc.frontends, host))
			})
		})
	}
}

// testSocketLB proves socket LB with real sockets: node 0 is the host, whose
// client process runs in a private cgroup with the programs attached; node 1
// runs the backends. The service addresses are routed nowhere: connecting
// to them works only if the connect is translated.
func testSocketLB(t *testing.T, v6 bool, frontend func(host int) netip.Addr) {
	top := testutil.NewTopology(t, testutil.TopologyConfig{})
	client, server := top.Nodes[0], top.Nodes[1]
	clientAddr, serverAddr := client.Addr.Addr(), server.Addr.Addr()
	sock := 4
	if v6 {
		clientAddr, serverAddr, sock = client.Addr6.Addr(), server.Addr6.Addr(), 6
	}
	srv := startSockServers(t, server.NS, serverAddr)

	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1 << 12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ct.Close() })
	tbl, err := New(Config{MaglevTableSize: MaglevMinTableSize}, ct)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Close() })

	var (
		svcTCP      = netip.AddrPortFrom(frontend(10), 80)
		svcUDP      = netip.AddrPortFrom(frontend(10), 53)
		noneTCP     = netip.AddrPortFrom(frontend(11), 80)
		noneUDP     = netip.AddrPortFrom(frontend(11), 53)
		maglevTCP   = netip.AddrPortFrom(frontend(12), 80)
		affinityTCP = netip.AddrPortFrom(frontend(13), 80)
		rangesTCP   = netip.AddrPortFrom(frontend(14), 80)
		tcpIDs      = []string{"tcp-a", "tcp-b"}
		udpIDs      = []string{"udp-a", "udp-b"}
	)
	tcpBackends := []Backend{{Addr: srv.tcp["tcp-a"], Weight: 1}, {Addr: srv.tcp["tcp-b"], Weight: 1}}
	udpBackends := []Backend{{Addr: srv.udp["udp-a"], Weight: 1}, {Addr: srv.udp["udp-b"], Weight: 1}}
	for _, s := range []Service{
		{Frontend: svcTCP, Protocol: TCP, Backends: tcpBackends},
		{Frontend: svcUDP, Protocol: UDP, Backends: udpBackends},
		{Frontend: noneTCP, Protocol: TCP, Backends: []Backend{{Addr: srv.tcp["tcp-a"], Weight: 1, State: Quarantined}}},
		{Frontend: noneUDP, Protocol: UDP},
		{Frontend: maglevTCP, Protocol: TCP, Backends: tcpBackends, Algorithm: Maglev},
		{Frontend: affinityTCP, Protocol: TCP, Backends: tcpBackends, Affinity: time.Minute},
		{Frontend: rangesTCP, Protocol: TCP, Backends: tcpBackends,
			SourceRanges: []netip.Prefix{netip.PrefixFrom(clientAddr, clientAddr.BitLen())}},
	} {
		if err := tbl.Upsert(s); err != nil {
			t.Fatal(err)
		}
	}

	cgroup := sockTestCgroup(t)
	slb, err := tbl.AttachCgroup(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := slb.Close(); err != nil {
			t.Error(err)
		}
	})

	cases := []sockCase{
		{name: "TCP to service", op: sockOp{Kind: "tcp", Sock: sock, Target: svcTCP, Count: 20}, want: sockWantBackend, ids: tcpIDs, spread: true},
		{name: "UDP sendto service", op: sockOp{Kind: "udp", Sock: sock, Target: svcUDP, Count: 20}, want: sockWantBackend, ids: udpIDs, from: svcUDP, spread: true},
		{name: "UDP sendto service, 5 datagrams per socket", op: sockOp{Kind: "udp", Sock: sock, Target: svcUDP, Count: 6, Repeat: 5}, want: sockWantBackend, ids: udpIDs, from: svcUDP},
		{name: "connected UDP to service", op: sockOp{Kind: "udp-connected", Sock: sock, Target: svcUDP, Count: 4}, want: sockWantBackend, ids: udpIDs, from: svcUDP},
		{name: "TCP to Maglev service", op: sockOp{Kind: "tcp", Sock: sock, Target: maglevTCP, Count: 20}, want: sockWantBackend, ids: tcpIDs, spread: true},
		{name: "TCP to service with affinity", op: sockOp{Kind: "tcp", Sock: sock, Target: affinityTCP, Count: 8}, want: sockWantBackend, ids: tcpIDs, affinity: true},
		{name: "TCP to service without usable backend", op: sockOp{Kind: "tcp", Sock: sock, Target: noneTCP, Count: 3}, want: sockWantNoBackend},
		{name: "UDP sendto service without backends", op: sockOp{Kind: "udp", Sock: sock, Target: noneUDP, Count: 3}, want: sockWantNoBackend},
		{name: "TCP to service with source ranges", op: sockOp{Kind: "tcp", Sock: sock, Target: rangesTCP, Count: 2}, want: sockWantUnrouted},
		{name: "TCP to backend directly", op: sockOp{Kind: "tcp", Sock: sock, Target: srv.tcp["tcp-a"], Count: 3}, want: sockWantDirect, ids: []string{"tcp-a"}},
		{name: "UDP sendto backend directly", op: sockOp{Kind: "udp", Sock: sock, Target: srv.udp["udp-b"], Count: 3}, want: sockWantDirect, ids: []string{"udp-b"}, from: srv.udp["udp-b"]},
	}
	if !v6 {
		// Dual-stack IPv6 sockets reach IPv4 services through v4-mapped addresses.
		cases = append(cases,
			sockCase{name: "dual-stack TCP to service", op: sockOp{Kind: "tcp", Sock: 6, Target: svcTCP, Count: 6}, want: sockWantBackend, ids: tcpIDs},
			sockCase{name: "dual-stack UDP sendto service", op: sockOp{Kind: "udp", Sock: 6, Target: svcUDP, Count: 6}, want: sockWantBackend, ids: udpIDs, from: svcUDP},
			sockCase{name: "dual-stack connected UDP to service", op: sockOp{Kind: "udp-connected", Sock: 6, Target: svcUDP, Count: 2}, want: sockWantBackend, ids: udpIDs, from: svcUDP},
		)
	}
	plan := make([]sockOp, len(cases))
	for i, c := range cases {
		plan[i] = c.op
	}

	before, err := tbl.Stats()
	if err != nil {
		t.Fatal(err)
	}
	attempts := runSockChild(t, client.NS, cgroup, plan)
	after, err := tbl.Stats()
	if err != nil {
		t.Fatal(err)
	}

	var translated, dropped uint64
	byOp := make([][]sockAttempt, len(cases))
	for _, a := range attempts {
		if a.Op < 0 || a.Op >= len(cases) {
			t.Fatalf("client reported operation %d of %d", a.Op, len(cases))
		}
		byOp[a.Op] = append(byOp[a.Op], a)
	}
	for i, c := range cases {
		got := byOp[i]
		if len(got) != c.op.Count {
			t.Errorf("%s: %d attempts reported, want %d", c.name, len(got), c.op.Count)
			continue
		}
		seen := map[string]int{}
		for n, a := range got {
			switch c.want {
			case sockWantBackend, sockWantDirect:
				if a.Err != "" {
					t.Errorf("%s, attempt %d: %s", c.name, n, a.Err)
					continue
				}
				if !slices.Contains(c.ids, a.Reply) {
					t.Errorf("%s, attempt %d: answered by %q, want one of %q", c.name, n, a.Reply, c.ids)
				}
				if c.from.IsValid() && a.From != c.from {
					t.Errorf("%s, attempt %d: reply from %v, want %v", c.name, n, a.From, c.from)
				}
				seen[a.Reply]++
				if c.want == sockWantBackend {
					translated += uint64(a.Calls)
				}
			case sockWantNoBackend:
				if a.Err != "ECONNREFUSED" {
					t.Errorf("%s, attempt %d: error %q, want ECONNREFUSED", c.name, n, a.Err)
				}
				dropped += uint64(a.Calls)
			case sockWantUnrouted:
				if a.Err != "ENETUNREACH" {
					t.Errorf("%s, attempt %d: error %q, want ENETUNREACH (untranslated)", c.name, n, a.Err)
				}
			}
		}
		var seq []string
		for _, a := range got {
			seq = append(seq, a.Reply)
		}
		t.Logf("%s: %d attempts, answered by %v %v", c.name, len(got), seen, seq)
		if c.spread && len(seen) != len(c.ids) {
			t.Errorf("%s: answers by backend %v, want all of %q", c.name, seen, c.ids)
		}
		if c.affinity && len(seen) != 1 {
			t.Errorf("%s: answers by backend %v, want a single backend (affinity)", c.name, seen)
		}
	}

	if d := after.SockTranslate - before.SockTranslate; d != translated {
		t.Errorf("Stats.SockTranslate grew by %d, want %d (one per connect or sendto to a service)", d, translated)
	}
	if d := after.DropNoBackend - before.DropNoBackend; d != dropped {
		t.Errorf("Stats.DropNoBackend grew by %d, want %d", d, dropped)
	}
	if after.DNAT != before.DNAT || after.RevNAT != before.RevNAT {
		t.Errorf("per-packet counters moved without a tc datapath: before %+v, after %+v", before, after)
	}
	// The remembered translations lead back to the UDP frontend (key: socket cookie and backend).
	var (
		key   = make([]byte, slb.revnat.KeySize())
		val   lbRevNAT
		n     int
		iter  = slb.revnat.Iterate()
		front = svcUDP.Addr().AsSlice()
	)
	for iter.Next(&key, &val) {
		if val.Family == uint8(sock) && bytes.Equal(val.Addr[:len(front)], front) && val.Port == be16(svcUDP.Port()) {
			n++
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("map %s remembers no translation to %v", mapSockRevNAT, svcUDP)
	}

	// Outside the cgroup nothing is translated, and the frontend is routed nowhere.
	if err := sockConnectErr(client.NS, svcTCP); !errors.Is(err, unix.ENETUNREACH) {
		t.Errorf("connect to %v outside the cgroup: %v, want ENETUNREACH", svcTCP, err)
	}
}

func TestSocketLBAttachErrors(t *testing.T) {
	testutil.RequirePrivileged(t)
	t.Parallel()
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ct.Close() })
	tbl, err := New(Config{}, ct)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Close() })

	for _, tc := range []struct {
		name, path string
		is         error  // the error must match, if set
		contains   string // the message must contain
	}{
		{"empty", "", nil, "no cgroup path"},
		{"missing", filepath.Join(t.TempDir(), "missing"), os.ErrNotExist, "missing"},
		{"not cgroup2", t.TempDir(), nil, "not a cgroup v2 directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tbl.AttachCgroup(tc.path)
			if err == nil {
				s.Close()
				t.Fatalf("AttachCgroup(%q) succeeded", tc.path)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v does not match %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not contain %q", err, tc.contains)
			}
			if errors.Is(err, ebpf.ErrNotSupported) {
				t.Errorf("error %v claims the kernel lacks something", err)
			}
		})
	}
}
