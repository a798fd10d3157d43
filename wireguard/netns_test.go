package wireguard

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/netblocks/netblocks/internal/testutil"
)

// TestEmbeddedLab runs the lab on the embedded backend, the one this machine
// has.
func TestEmbeddedLab(t *testing.T) {
	testLab(t, Embedded)
}

// testLab runs pod traffic between two nodes through devices of backend and
// checks what the underlay, `wg`, wgctrl and `ss` see, then removes a peer,
// rotates a key and restarts a device.
func testLab(t *testing.T, backend Backend) {
	testutil.RequirePrivileged(t)
	requireTool(t, "ping", "iputils-ping")
	requireTool(t, "wg", "wireguard-tools")
	requireTool(t, "ss", "iproute2")

	l := newLab(t)
	// The capture starts before the first handshake.
	c := startCapture(t, l.nodes[0].NS, l.nodes[0].Index)
	l.start(t, Config{Backend: backend})
	a, b := l.nodes[0], l.nodes[1]
	if got := a.dev.Backend(); got != backend {
		t.Fatalf("Backend() = %v, want %v", got, backend)
	}

	t.Run("traffic", func(t *testing.T) {
		for _, v6 := range []bool{false, true} {
			checkPing(t, a, b, v6)
			checkPing(t, b, a, v6)
			checkTCP(t, a, b, v6)
			checkTCP(t, b, a, v6)
		}
	})

	t.Run("underlay carries only WireGuard", func(t *testing.T) {
		r := classifyUnderlay(c.frames(), DefaultListenPort)
		t.Logf("underlay: %d WireGuard messages (handshake initiations %d, responses %d, cookies %d, data %d), %d other IP packets",
			r.wireguard, r.byType[1], r.byType[2], r.byType[3], r.byType[4], len(r.other))
		if r.byType[1] == 0 || r.byType[2] == 0 {
			t.Errorf("saw no handshake on the underlay")
		}
		if r.byType[4] < 100 {
			t.Errorf("saw %d WireGuard data messages on the underlay, want the pod traffic's", r.byType[4])
		}
		if len(r.other) > 0 {
			t.Errorf("underlay carried %d packets that are not WireGuard, e.g. %q", len(r.other), r.other[:min(5, len(r.other))])
		}
	})

	t.Run("wg show", func(t *testing.T) {
		out, err := a.NS.Exec("wg", "show", a.dev.Name())
		if err != nil {
			t.Fatalf("wg show: %v\n%s", err, out)
		}
		for _, want := range []string{
			"interface: " + a.dev.Name(),
			"public key: " + a.dev.PublicKey().String(),
			"listening port: " + strconv.Itoa(DefaultListenPort),
			"peer: " + b.dev.PublicKey().String(),
			"endpoint: " + netip.AddrPortFrom(b.Addr.Addr(), DefaultListenPort).String(),
			"allowed ips: 10.244.2.0/24, fd00:10:244:2::/64",
			"latest handshake:",
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("wg show %s lacks %q:\n%s", a.dev.Name(), want, out)
			}
		}
		out, err = a.NS.Exec("wg", "show", "all", "endpoints")
		if err != nil {
			t.Fatalf("wg show all endpoints: %v\n%s", err, out)
		}
		want := fmt.Sprintf("%s\t%s\t%s:%d", a.dev.Name(), b.dev.PublicKey(), b.Addr.Addr(), DefaultListenPort)
		if !strings.Contains(string(out), want) {
			t.Errorf("wg show all endpoints lacks %q:\n%s", want, out)
		}
	})

	t.Run("wgctrl", func(t *testing.T) {
		// Opened in the node namespace, the client finds kernel devices
		// there too; the embedded one it finds by its UAPI socket.
		var c *wgctrl.Client
		if err := a.NS.Do(func() error {
			var err error
			c, err = wgctrl.New()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		dev, err := c.Device(a.dev.Name())
		if err != nil {
			t.Fatalf("wgctrl: %v", err)
		}
		if len(dev.Peers) != 1 || Key(dev.Peers[0].PublicKey) != b.dev.PublicKey() || Key(dev.PublicKey) != a.dev.PublicKey() {
			t.Errorf("wgctrl sees key %s and peers %v, want key %s and peer %s", dev.PublicKey, dev.Peers, a.dev.PublicKey(), b.dev.PublicKey())
		}
	})

	t.Run("UDP socket in the node namespace only", func(t *testing.T) {
		// ss lists the sockets of the namespace it runs in. A kernel
		// device's socket belongs to no process.
		port := ":" + strconv.Itoa(DefaultListenPort)
		owner := "pid=" + strconv.Itoa(os.Getpid()) + ","
		out, err := a.NS.Exec("ss", "-uanpH", "sport", "=", port)
		if err != nil {
			t.Fatalf("ss in %s: %v\n%s", a.NS.Name(), err, out)
		}
		t.Logf("ss -uanp in %s:\n%s", a.NS.Name(), out)
		if !strings.Contains(string(out), port) || (backend == Embedded && !strings.Contains(string(out), owner)) {
			t.Errorf("ss in %s shows no UDP socket of the device on %s:\n%s", a.NS.Name(), port, out)
		}
		if backend != Embedded {
			return
		}
		out, err = exec.Command("ss", "-uanpH", "sport", "=", port).CombinedOutput()
		if err != nil {
			t.Fatalf("ss in the initial namespace: %v\n%s", err, out)
		}
		if strings.Contains(string(out), owner) {
			t.Errorf("this process has a UDP socket on %s in the initial namespace:\n%s", port, out)
		}
	})

	t.Run("sockets reopened from other goroutines stay in the namespace", func(t *testing.T) {
		if backend != Embedded {
			t.Skip("the kernel backend has no sockets of this process")
		}
		// `wg set` changes the port through the UAPI socket: wireguard-go
		// reopens its sockets on the goroutine serving that connection.
		// Setting the link down and up makes its TUN event reader close and
		// reopen them.
		owner := "pid=" + strconv.Itoa(os.Getpid()) + ","
		check := func(port int) {
			t.Helper()
			p := ":" + strconv.Itoa(port)
			if out, err := a.NS.Exec("ss", "-uanpH", "sport", "=", p); err != nil || !strings.Contains(string(out), owner) {
				t.Errorf("ss in %s shows no UDP socket of this process on %s: %v\n%s", a.NS.Name(), p, err, out)
			}
			if out, err := exec.Command("ss", "-uanpH", "sport", "=", p).CombinedOutput(); err != nil || strings.Contains(string(out), owner) {
				t.Errorf("ss in the initial namespace: %v; this process has a UDP socket on %s there:\n%s", err, p, out)
			}
		}
		for _, port := range []int{DefaultListenPort + 1, DefaultListenPort} {
			if out, err := a.NS.Exec("wg", "set", a.dev.Name(), "listen-port", strconv.Itoa(port)); err != nil {
				t.Fatalf("wg set listen-port: %v\n%s", err, out)
			}
			check(port)
		}

		link, err := a.NS.Netlink().LinkByIndex(a.dev.Index())
		if err != nil {
			t.Fatal(err)
		}
		if err := a.NS.Netlink().LinkSetDown(link); err != nil {
			t.Fatal(err)
		}
		if err := a.NS.Netlink().LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
		// The kernel dropped the routes through the device when it went
		// down; SetPeers puts them back.
		l.connect(t)
		if routes, err := a.dev.ownRoutes(); err != nil || len(routes) != 2 {
			t.Errorf("routes via %s after SetPeers: %v, %v; want 2", a.dev.Name(), routes, err)
		}
		// The TUN event reader polls the link state once a second.
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := ping(a.pod, b.podAddr(false), 1, time.Second); err == nil || time.Now().After(deadline) {
				break
			}
		}
		check(DefaultListenPort)
		checkPing(t, a, b, false)
	})

	t.Run("stats", func(t *testing.T) {
		stats, err := a.dev.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if len(stats) != 1 {
			t.Fatalf("Stats() = %+v, want one peer", stats)
		}
		s := stats[0]
		wantEP := netip.AddrPortFrom(b.Addr.Addr(), DefaultListenPort)
		if s.PublicKey != b.dev.PublicKey() || s.Endpoint != wantEP || s.RxBytes < 4<<20 || s.TxBytes < 4<<20 ||
			time.Since(s.LastHandshake) > time.Minute {
			t.Errorf("Stats() = %+v, want peer %s at %s, at least 4 MiB each way, a recent handshake", s, b.dev.PublicKey(), wantEP)
		}
	})

	t.Run("unchanged peers keep sessions and counters", func(t *testing.T) {
		before, err := a.dev.Stats()
		if err != nil {
			t.Fatal(err)
		}
		l.connect(t)
		after, err := a.dev.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if after[0].RxBytes < before[0].RxBytes || !after[0].LastHandshake.Equal(before[0].LastHandshake) {
			t.Errorf("SetPeers with the same peers reset the peer: %+v, was %+v", after[0], before[0])
		}
	})

	t.Run("node address as allowed IP", func(t *testing.T) {
		// Each node admits the other's node address through the tunnel,
		// which gets no route: it contains the endpoint.
		for i, n := range l.nodes {
			p := l.nodes[1-i].peer()
			p.AllowedIPs = append(slices.Clone(p.AllowedIPs), netip.PrefixFrom(l.nodes[1-i].Addr.Addr(), 32))
			if err := n.dev.SetPeers([]Peer{p}); err != nil {
				t.Fatal(err)
			}
			routes, err := n.dev.ownRoutes()
			if err != nil {
				t.Fatal(err)
			}
			if len(routes) != 2 {
				t.Errorf("routes via %s: %v, want the two pod CIDRs only", n.dev.Name(), routes)
			}
		}
		checkPing(t, a, b, false)
		checkTCP(t, a, b, false)
		l.connect(t)
	})

	t.Run("removed peer", func(t *testing.T) {
		if err := a.dev.SetPeers(nil); err != nil {
			t.Fatal(err)
		}
		if routes, err := a.dev.ownRoutes(); err != nil || len(routes) != 0 {
			t.Errorf("routes via %s after removing every peer: %v, %v", a.dev.Name(), routes, err)
		}
		// Without the route the node sends pod traffic to its default
		// route, which it has not: nothing reaches the other pod.
		for _, v6 := range []bool{false, true} {
			if out, err := ping(a.pod, b.podAddr(v6), 2, 2*time.Second); err == nil {
				t.Errorf("ping %s still answered after the peer was removed:\n%s", b.podAddr(v6), out)
			}
		}
		// Without the peer, the other node's packets find no one to
		// decrypt them, even with its route in place.
		if out, err := ping(b.pod, a.podAddr(false), 2, 2*time.Second); err == nil {
			t.Errorf("ping %s from the other side still answered after the peer was removed:\n%s", a.podAddr(false), out)
		}
		l.connect(t)
		checkPing(t, a, b, false)
	})

	t.Run("rotation", func(t *testing.T) {
		echo := startUDPEcho(t, b.pod, b.podAddr(false))
		// The other node learns the new key at once, or later, as from a
		// cluster store, with and without a keepalive of its own.
		for _, tc := range []struct {
			delay     time.Duration
			keepalive time.Duration
		}{{0, 0}, {time.Second, 0}, {time.Second, 25 * time.Second}} {
			old := a.dev.PublicKey()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			pub, err := a.dev.Rotate()
			if err != nil {
				t.Fatal(err)
			}
			if pub == old || pub != a.dev.PublicKey() {
				t.Fatalf("Rotate() = %s, PublicKey() = %s, old key %s", pub, a.dev.PublicKey(), old)
			}
			published := make(chan error, 1)
			time.AfterFunc(tc.delay, func() {
				p := a.peer()
				p.PersistentKeepalive = tc.keepalive
				published <- b.dev.SetPeers([]Peer{p})
			})
			at, err := waitExchange(ctx, a.pod, echo.conn.LocalAddr(), time.Millisecond)
			cancel()
			if perr := <-published; perr != nil {
				t.Fatal(perr)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("rotation gap with the key published after %v, keepalive %v on the other node: %v from Rotate to the first UDP exchange between the pods",
				tc.delay, tc.keepalive, at.Sub(start))

			k, err := LoadOrCreateKey(a.cfg.KeyFile)
			if err != nil {
				t.Fatal(err)
			}
			if k.PublicKey() != pub {
				t.Errorf("key file holds public key %s after Rotate, want %s", k.PublicKey(), pub)
			}
		}
		l.connect(t)
		checkTCP(t, a, b, false)
		checkTCP(t, b, a, false)
	})

	t.Run("peer replacing another is sent a handshake", func(t *testing.T) {
		// No traffic: only SetPeers on the other node can start the
		// handshake with the rotated node.
		time.Sleep(100 * time.Millisecond)
		c := startCapture(t, a.NS, a.Index)
		if _, err := a.dev.Rotate(); err != nil {
			t.Fatal(err)
		}
		if err := b.dev.SetPeers([]Peer{a.peer()}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			stats, err := b.dev.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if !stats[0].LastHandshake.IsZero() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no handshake with the replacing peer: %+v", stats[0])
			}
			time.Sleep(20 * time.Millisecond)
		}
		var first string
		for _, f := range c.frames() {
			p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
			if udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && len(udp.Payload) > 0 && udp.Payload[0] == 1 {
				first = p.NetworkLayer().NetworkFlow().Src().String()
				break
			}
		}
		if first != b.Addr.Addr().String() {
			t.Errorf("first handshake initiation came from %q, want the node that learned the new key, %s", first, b.Addr.Addr())
		}
	})

	t.Run("restart keeps the key", func(t *testing.T) {
		pub := a.dev.PublicKey()
		if err := a.dev.Close(); err != nil {
			t.Fatal(err)
		}
		a.dev = newDevice(t, a.cfg)
		if got := a.dev.PublicKey(); got != pub {
			t.Fatalf("public key after restart = %s, want %s", got, pub)
		}
		if err := a.dev.SetPeers([]Peer{b.peer()}); err != nil {
			t.Fatal(err)
		}
		checkPing(t, a, b, false)
		checkTCP(t, b, a, true)
	})
}
