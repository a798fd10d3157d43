package testutil

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// TempBPFFS mounts a private bpffs instance on a fresh tb.TempDir() and
// returns its path; the test's cleanup unmounts it, which drops every pin in
// it. Pin tests use it instead of /sys/fs/bpf, which they must never touch
// (and which may not even be mounted). It calls [RequirePrivileged] first.
//
// Each call mounts a new instance, so pins in one are invisible in another.
// The mount is lazily detached at cleanup, so a file left open under it does
// not fail the test.
func TempBPFFS(tb testing.TB) string {
	tb.Helper()

	if !requirePrivileged(tb) {
		return ""
	}

	dir := tb.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
		tb.Fatal(fmt.Errorf("mount bpffs on %s: %w", dir, err))
		return ""
	}
	// Registered after TempDir's cleanup, so it runs before the directory is
	// removed.
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Error(fmt.Errorf("unmount bpffs on %s: %w", dir, err))
		}
	})
	return dir
}
