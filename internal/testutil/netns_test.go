package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/netlinksafe"
)

// netnsDir is where named network namespaces are bind-mounted.
const netnsDir = "/var/run/netns"

// currentNetNSID returns the unique id of the calling thread's network
// namespace.
func currentNetNSID() (string, error) {
	h, err := netns.Get()
	if err != nil {
		return "", fmt.Errorf("get current network namespace: %w", err)
	}
	defer h.Close()
	return h.UniqueId(), nil
}

// nsInode returns the inode number of the namespace h refers to.
func nsInode(t *testing.T, h netns.NsHandle) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		t.Fatalf("stat namespace handle: %v", err)
	}
	return st.Ino
}

func TestNewNetNS(t *testing.T) {
	t.Parallel()

	a, b := NewNetNS(t), NewNetNS(t)

	if a.Name() == b.Name() {
		t.Fatalf("two namespaces share the name %s", a.Name())
	}
	for _, n := range []*NetNS{a, b} {
		if !strings.HasPrefix(n.Name(), "nbt-") {
			t.Errorf("name %q: want prefix nbt-", n.Name())
		}
		if _, err := os.Stat(filepath.Join(netnsDir, n.Name())); err != nil {
			t.Errorf("namespace %s not bind-mounted: %v", n.Name(), err)
		}
		if !n.Handle().IsOpen() {
			t.Errorf("namespace %s: handle not open", n.Name())
		}
	}
	if a.Handle().Equal(b.Handle()) {
		t.Fatalf("namespaces %s and %s are the same namespace", a.Name(), b.Name())
	}

	// Lock the test goroutine so that "the caller's namespace" means one
	// thread's, before and after.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	callerID, err := currentNetNSID()
	if err != nil {
		t.Fatal(err)
	}
	if callerID == a.Handle().UniqueId() || callerID == b.Handle().UniqueId() {
		t.Fatalf("caller already in a test namespace")
	}

	for _, n := range []*NetNS{a, b} {
		var inside string
		if err := n.Do(func() error {
			var err error
			inside, err = currentNetNSID()
			return err
		}); err != nil {
			t.Fatalf("Do in %s: %v", n.Name(), err)
		}
		if want := n.Handle().UniqueId(); inside != want {
			t.Errorf("Do in %s ran in namespace %s, want %s", n.Name(), inside, want)
		}
		if after, err := currentNetNSID(); err != nil || after != callerID {
			t.Errorf("caller's namespace after Do in %s: %s (%v), want %s", n.Name(), after, err, callerID)
		}
	}

	errBoom := errors.New("boom")
	if err := a.Do(func() error { return errBoom }); !errors.Is(err, errBoom) {
		t.Errorf("Do returned %v, want %v", err, errBoom)
	}
	if after, err := currentNetNSID(); err != nil || after != callerID {
		t.Errorf("caller's namespace after failing Do: %s (%v), want %s", after, err, callerID)
	}
}

func TestNetNSDoPanicAndGoexit(t *testing.T) {
	t.Parallel()

	n := NewNetNS(t)

	var recovered any
	func() {
		defer func() { recovered = recover() }()
		_ = n.Do(func() error { panic("boom in namespace") })
	}()
	if s, _ := recovered.(string); !strings.Contains(s, "boom in namespace") {
		t.Errorf("panic in Do: recovered %v, want it raised again in the caller", recovered)
	}

	if err := n.Do(func() error { runtime.Goexit(); return nil }); err == nil {
		t.Error("Do with runtime.Goexit returned nil")
	}

	// Do still works.
	var inside string
	if err := n.Do(func() error {
		var err error
		inside, err = currentNetNSID()
		return err
	}); err != nil || inside != n.Handle().UniqueId() {
		t.Errorf("Do after panic: in %s (%v), want %s", inside, err, n.Handle().UniqueId())
	}
}

func TestNetNSNetlink(t *testing.T) {
	t.Parallel()

	a, b := NewNetNS(t), NewNetNS(t)

	// A fresh namespace holds only a loopback device, down.
	links, err := netlinksafe.Dump(a.Netlink().LinkList)
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("links in new namespace: %v, want only lo", links)
	}

	// A link made through a's handle is in a, not in b.
	if err := a.Netlink().LinkAdd(&netlink.Bridge{LinkAttrs: linkAttrs("nbtbr", 1500)}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Netlink().LinkByName("nbtbr"); err != nil {
		t.Errorf("bridge not in %s: %v", a.Name(), err)
	}
	if _, err := b.Netlink().LinkByName("nbtbr"); err == nil {
		t.Errorf("bridge made in %s appears in %s", a.Name(), b.Name())
	}
}

func TestNetNSExec(t *testing.T) {
	t.Parallel()

	n := NewNetNS(t)

	out, err := n.Exec("readlink", "/proc/self/ns/net")
	if err != nil {
		t.Fatalf("Exec: %v: %s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), fmt.Sprintf("net:[%d]", nsInode(t, n.Handle())); got != want {
		t.Errorf("command ran in %s, want %s", got, want)
	}

	out, err = n.Exec("sh", "-c", "echo failing; exit 3")
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Errorf("Exec of a failing command: %v, want exit status 3", err)
	}
	if strings.TrimSpace(string(out)) != "failing" {
		t.Errorf("Exec of a failing command: output %q, want %q", out, "failing")
	}
}

func TestNetNSCleanup(t *testing.T) {
	t.Parallel()
	RequirePrivileged(t)

	var names []string
	t.Run("create", func(t *testing.T) {
		for range 3 {
			n := NewNetNS(t)
			names = append(names, n.Name())
		}
	})
	if len(names) != 3 {
		t.Fatalf("created %d namespaces, want 3", len(names))
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(netnsDir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s left behind after cleanup (stat: %v)", name, err)
		}
	}
}

func TestNetnsName(t *testing.T) {
	t.Parallel()

	seen := make(map[string]bool)
	prefix := ""
	for range 20 {
		name := netnsName("TestSomething/sub")
		if len(name) != len("nbt-01234567-89ab") {
			t.Errorf("name %q: unexpected length", name)
		}
		p := name[:len("nbt-01234567")]
		if prefix != "" && p != prefix {
			t.Errorf("name %q: hash part differs from %q for the same test", name, prefix)
		}
		prefix = p
		seen[name] = true
	}
	if len(seen) < 15 {
		t.Errorf("only %d distinct names out of 20", len(seen))
	}
	if other := netnsName("TestOther"); strings.HasPrefix(other, prefix) {
		t.Errorf("different tests share the hash part %q", prefix)
	}
}
