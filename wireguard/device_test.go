package wireguard

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/kernel"
	"github.com/netblocks/netblocks/internal/netlinksafe"
	"github.com/netblocks/netblocks/internal/testutil"
)

// TestAutoBackend checks that Auto picks what the kernel probe says.
func TestAutoBackend(t *testing.T) {
	ns := testutil.NewNetNS(t)
	want := Embedded
	if err := kernel.Probe(kernel.WireGuard); err == nil {
		want = Kernel
	}
	d := newDevice(t, Config{Name: uniqueName(), NetNS: ns.Handle(), Logger: testLogger(t)})
	if d.Backend() != want {
		t.Errorf("Backend() = %v, want %v", d.Backend(), want)
	}
}

// TestKernelBackendMissing checks the error of Backend: Kernel on a kernel
// without the module, and that nothing is left behind.
func TestKernelBackendMissing(t *testing.T) {
	ns := testutil.NewNetNS(t)
	if err := kernel.Probe(kernel.WireGuard); err == nil {
		t.Skip("the kernel has the wireguard module")
	}
	name := uniqueName()
	d, err := New(Config{Name: name, NetNS: ns.Handle(), Backend: Kernel})
	if err == nil {
		d.Close()
		t.Fatal("New with the kernel backend succeeded without the module")
	}
	t.Log(err)
	var fe *kernel.FeatureError
	if !errors.As(err, &fe) || fe.Feature != kernel.WireGuard || !errors.Is(err, ebpf.ErrNotSupported) {
		t.Errorf("New = %v, want an error wrapping a *kernel.FeatureError for WireGuard", err)
	}
	if _, lerr := ns.Netlink().LinkByName(name); lerr == nil {
		t.Errorf("device %s left behind", name)
	}
}

// TestNameInUse checks that an embedded device cannot take a name an
// embedded device uses in another namespace (their UAPI sockets would
// collide), and that the failed attempt leaves the first device working.
func TestNameInUse(t *testing.T) {
	ns1, ns2 := testutil.NewNetNS(t), testutil.NewNetNS(t)
	name := uniqueName()
	first := newDevice(t, Config{Name: name, NetNS: ns1.Handle(), Backend: Embedded, Logger: testLogger(t)})

	d, err := New(Config{Name: name, NetNS: ns2.Handle(), Backend: Embedded})
	if err == nil {
		d.Close()
		t.Fatal("a second embedded device of the same name was created")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "names must be unique on the machine") {
		t.Errorf("New = %v, want an error explaining that names must be unique", err)
	}
	if _, lerr := ns2.Netlink().LinkByName(name); lerr == nil {
		t.Errorf("TUN device %s left behind in the second namespace", name)
	}
	if _, err := first.Stats(); err != nil {
		t.Errorf("first device after the collision: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/var/run/wireguard", name+".sock")); err != nil {
		t.Errorf("first device's UAPI socket: %v", err)
	}
}

// TestPortInUse checks that New fails when its UDP port is taken in the
// namespace, naming the port, and undoes everything.
func TestPortInUse(t *testing.T) {
	ns := testutil.NewNetNS(t)
	if err := ns.Netlink().LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}); err != nil {
		t.Fatal(err)
	}
	var squatter net.PacketConn
	if err := ns.Do(func() error {
		var err error
		squatter, err = net.ListenPacket("udp", ":51999")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()

	name := uniqueName()
	d, err := New(Config{Name: name, NetNS: ns.Handle(), Backend: Embedded, ListenPort: 51999})
	if err == nil {
		d.Close()
		t.Fatal("New succeeded on a port in use")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "UDP port 51999") || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("New = %v, want an error naming the port in use", err)
	}
	if _, lerr := ns.Netlink().LinkByName(name); lerr == nil {
		t.Errorf("TUN device %s left behind", name)
	}
	if _, serr := os.Stat(filepath.Join("/var/run/wireguard", name+".sock")); !os.IsNotExist(serr) {
		t.Errorf("UAPI socket left behind: %v", serr)
	}

	// The same port in another namespace is free.
	other := testutil.NewNetNS(t)
	newDevice(t, Config{Name: name, NetNS: other.Handle(), Backend: Embedded, ListenPort: 51999})
}

// TestSetPeersRefusesAndRollsBack checks that SetPeers changes nothing on bad
// input, and puts peers and routes back when a route cannot be added.
func TestSetPeersRefusesAndRollsBack(t *testing.T) {
	ns := testutil.NewNetNS(t)
	h := ns.Netlink()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	d := newDevice(t, Config{Name: uniqueName(), NetNS: ns.Handle(), Backend: Embedded, Logger: testLogger(t)})

	k := testKeys(t, 3)
	ep := netip.MustParseAddrPort("192.0.2.2:51871")
	start := []Peer{
		{PublicKey: k[0], Endpoint: ep, AllowedIPs: prefixes("10.244.2.0/24", "fd00:2::/64")},
		{PublicKey: k[1], AllowedIPs: prefixes("10.244.3.0/24")},
	}
	if err := d.SetPeers(start); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, d)

	// Bad input: refused before anything changes.
	err = d.SetPeers([]Peer{start[0], {PublicKey: k[2]}, {PublicKey: k[0]}})
	if err == nil || !strings.Contains(err.Error(), "same public key") {
		t.Errorf("SetPeers with a duplicate key = %v, want a 'same public key' error", err)
	}
	if err := d.SetPeers([]Peer{{PublicKey: d.PublicKey()}}); err == nil {
		t.Error("SetPeers with the device's own key succeeded")
	}
	if after := snapshot(t, d); after != before {
		t.Errorf("refused SetPeers changed the device:\n%s\nwas:\n%s", after, before)
	}

	// A route someone else owns: SetPeers fails and restores everything,
	// the removed peer, the updated one and the routes included.
	foreign := netip.MustParsePrefix("10.244.9.0/24")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: ipNet(foreign)}); err != nil {
		t.Fatal(err)
	}
	err = d.SetPeers([]Peer{
		{PublicKey: k[0], Endpoint: ep, AllowedIPs: prefixes("10.244.2.0/24", "10.244.9.0/24")},
		{PublicKey: k[2], AllowedIPs: prefixes("10.244.4.0/24")},
	})
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), "add route 10.244.9.0/24") {
		t.Fatalf("SetPeers over a foreign route = %v, want an error naming the route", err)
	}
	if after := snapshot(t, d); after != before {
		t.Errorf("failed SetPeers left the device changed:\n%s\nwas:\n%s", after, before)
	}
	foreignRoutes := func() ([]netlink.Route, error) {
		return netlinksafe.Dump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipNet(foreign)}, netlink.RT_FILTER_DST)
		})
	}
	routes, err := foreignRoutes()
	if err != nil || len(routes) != 1 || routes[0].LinkIndex != lo.Attrs().Index {
		t.Errorf("foreign route after the failed SetPeers: %v, %v", routes, err)
	}

	// Only the device's own routes go.
	if err := d.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if routes, err := foreignRoutes(); err != nil || len(routes) != 1 {
		t.Errorf("SetPeers(nil) touched the foreign route: %v, %v", routes, err)
	}
	if got := snapshot(t, d); got != "routes: []\n" {
		t.Errorf("after SetPeers(nil):\n%s", got)
	}
}

// snapshot describes the device's peers and own routes.
func snapshot(t testing.TB, d *Device) string {
	t.Helper()
	stats, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, s := range stats {
		sb.WriteString(s.PublicKey.String() + " " + s.Endpoint.String() + " " + prefixString(s.AllowedIPs) + "\n")
	}
	routes, err := d.ownRoutes()
	if err != nil {
		t.Fatal(err)
	}
	sb.WriteString("routes: " + prefixString(routes) + "\n")
	return sb.String()
}

func prefixString(ps []netip.Prefix) string {
	var ss []string
	for _, p := range ps {
		ss = append(ss, p.String())
	}
	return "[" + strings.Join(ss, " ") + "]"
}

// TestCloseCleansUp checks that Close leaves nothing of an embedded device:
// no link, no routes, no UAPI socket, no UDP socket, no goroutine.
func TestCloseCleansUp(t *testing.T) {
	ns := testutil.NewNetNS(t)
	baseline := runtime.NumGoroutine()

	cfg := Config{Name: uniqueName(), NetNS: ns.Handle(), Backend: Embedded, Logger: testLogger(t)}
	for round := range 3 {
		d, err := New(cfg)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		peer, _ := GenerateKey()
		if err := d.SetPeers([]Peer{{PublicKey: peer.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}}); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join("/var/run/wireguard", cfg.Name+".sock")
		if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("round %d: UAPI socket: %v, %v; want one only root may use", round, fi.Mode(), err)
		}
		// A UAPI client that stays connected does not hold Close up.
		client, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("round %d: connect to the UAPI socket: %v", round, err)
		}
		if _, err := client.Write([]byte("get=1\n\n")); err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, client); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("round %d: UAPI connection after Close: %v, want it closed", round, err)
		}
		client.Close()
		if err := d.Close(); err != nil {
			t.Errorf("round %d: second Close: %v", round, err)
		}
		if err := d.SetPeers(nil); !errors.Is(err, os.ErrClosed) {
			t.Errorf("SetPeers after Close = %v, want os.ErrClosed", err)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("round %d: UAPI socket still there after Close: %v", round, err)
		}
		links, err := netlinksafe.Dump(ns.Netlink().LinkList)
		if err != nil {
			t.Fatal(err)
		}
		for _, link := range links {
			if link.Attrs().Name != "lo" {
				t.Errorf("round %d: link %s left after Close", round, link.Attrs().Name)
			}
		}
	}
	// The goroutines wireguard-go's workers run exit shortly after Close.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline+2 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before New:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}

// TestStaleUAPISocket checks that New replaces a UAPI socket left by a
// process that died.
func TestStaleUAPISocket(t *testing.T) {
	ns := testutil.NewNetNS(t)
	name := uniqueName()
	path := filepath.Join("/var/run/wireguard", name+".sock")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	t.Cleanup(func() { os.Remove(path) })

	d := newDevice(t, Config{Name: name, NetNS: ns.Handle(), Backend: Embedded, Logger: testLogger(t)})
	if out, err := ns.Exec("wg", "show", name, "public-key"); err != nil || strings.TrimSpace(string(out)) != d.PublicKey().String() {
		t.Errorf("wg show %s public-key = %q, %v; want %s", name, out, err, d.PublicKey())
	}
}
