package testutil

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// isMountPoint reports whether dir is a mount point in this process's mount
// namespace.
func isMountPoint(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// Field 5 is the mount point (spaces escaped as \040, none in ours).
		if fields := strings.Fields(s.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return false
}

func TestTempBPFFS(t *testing.T) {
	t.Parallel()
	RequirePrivileged(t)

	var dir string
	t.Run("pin", func(t *testing.T) {
		dir = TempBPFFS(t)

		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		if st.Type != unix.BPF_FS_MAGIC {
			t.Fatalf("%s: filesystem magic %#x, want BPF_FS_MAGIC %#x", dir, st.Type, unix.BPF_FS_MAGIC)
		}
		if !isMountPoint(t, dir) {
			t.Fatalf("%s is not a mount point", dir)
		}

		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Put(uint32(0), uint32(42)); err != nil {
			t.Fatal(err)
		}

		pin := filepath.Join(dir, "counter")
		if err := m.Pin(pin); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(pin); err != nil {
			t.Fatalf("pinned map: %v", err)
		}
		pinned, err := ebpf.LoadPinnedMap(pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer pinned.Close()
		var v uint32
		if err := pinned.Lookup(uint32(0), &v); err != nil || v != 42 {
			t.Fatalf("pinned map holds %d (%v), want 42", v, err)
		}

		// Each call is a separate instance.
		other := TempBPFFS(t)
		if other == dir {
			t.Fatal("two calls returned the same directory")
		}
		if _, err := os.Stat(filepath.Join(other, "counter")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("pin visible in another instance (stat: %v)", err)
		}
	})

	if dir == "" {
		t.Fatal("subtest did not mount")
	}
	if isMountPoint(t, dir) {
		t.Errorf("%s still mounted after cleanup", dir)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind after cleanup (stat: %v)", dir, err)
	}
}
