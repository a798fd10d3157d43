package testutil

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/kernel"
)

// RequirePrivilegedEnv names the environment variable that turns a skip for
// lack of privileges into a failure: when it is "1" (as in CI),
// [RequirePrivileged] calls Fatal instead of Skip.
const RequirePrivilegedEnv = "NETBLOCKS_REQUIRE_PRIVILEGED"

// privilegedReason starts every message of [RequirePrivileged].
const privilegedReason = "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"

// RequirePrivileged skips tb unless the calling thread has CAP_SYS_ADMIN,
// CAP_NET_ADMIN and CAP_BPF in its effective capability set, as read with
// capget(2) (being uid 0 is not enough, nor required). The reason starts with
// "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): " and names what is
// missing.
//
// When the environment variable [RequirePrivilegedEnv] is "1", it calls
// tb.Fatal with the same reason instead of skipping.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	requirePrivileged(tb)
}

// requirePrivileged is [RequirePrivileged], reporting whether tb may go on
// (for a testing.TB whose Skip and Fatal return).
func requirePrivileged(tb testing.TB) bool {
	tb.Helper()

	missing, err := missingCapabilities()
	if err == nil && len(missing) == 0 {
		return true
	}

	var reason string
	if err != nil {
		reason = fmt.Sprintf("%s: %v", privilegedReason, err)
	} else {
		reason = fmt.Sprintf("%s: %s missing from the effective capability set",
			privilegedReason, strings.Join(missing, ", "))
	}

	if os.Getenv(RequirePrivilegedEnv) == "1" {
		tb.Fatalf("%s (%s=1 makes this a failure, not a skip)", reason, RequirePrivilegedEnv)
		return false
	}
	tb.Skip(reason)
	return false
}

// missingCapabilities returns the names of the capabilities privileged tests
// need that are not in the calling thread's effective set.
func missingCapabilities() ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3} // Pid 0: the calling thread.
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("get capabilities: %w", err)
	}

	var missing []string
	for _, c := range []struct {
		name string
		bit  uint
	}{
		{"CAP_BPF", unix.CAP_BPF},
		{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN},
		{"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN},
	} {
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			missing = append(missing, c.name)
		}
	}
	return missing, nil
}

// RequireFeature skips tb when the kernel lacks one of fs, naming the
// feature. It calls [RequirePrivileged] first.
//
// Only a conclusive answer of [kernel.Probe] (a *[kernel.FeatureError]) leads
// to a skip, which is allowed even when [RequirePrivilegedEnv] is "1". Any
// other probe error means the probe could not decide, and fails the test.
func RequireFeature(tb testing.TB, fs ...kernel.Feature) {
	tb.Helper()

	if !requirePrivileged(tb) {
		return
	}

	for _, f := range fs {
		err := kernel.Probe(f)
		if err == nil {
			continue
		}

		var fe *kernel.FeatureError
		if errors.As(err, &fe) {
			tb.Skip(featureSkipReason(f, err))
			return
		}
		tb.Fatalf("probe %s: %v", f, err)
		return
	}
}

// SkipOrFail handles an error returned by code under test: nil does nothing,
// an error wrapping a *[kernel.FeatureError] skips tb naming the missing
// feature, and anything else calls tb.Fatal.
//
// A bare [ebpf.ErrNotSupported] is a failure: only a feature probe may decide
// that the kernel lacks something, so that a skip never hides a bug.
//
// [ebpf.ErrNotSupported]: https://pkg.go.dev/github.com/cilium/ebpf#ErrNotSupported
func SkipOrFail(tb testing.TB, err error) {
	tb.Helper()

	if err == nil {
		return
	}

	var fe *kernel.FeatureError
	if errors.As(err, &fe) {
		tb.Skip(featureSkipReason(fe.Feature, err))
		return
	}
	tb.Fatal(err)
}

// featureSkipReason returns the reason to skip for err, a probe's conclusion
// that the kernel lacks f, making sure it names f.
func featureSkipReason(f kernel.Feature, err error) string {
	msg := err.Error()
	if strings.Contains(msg, f.String()) {
		return msg
	}
	return fmt.Sprintf("kernel lacks %s: %s", f, msg)
}
