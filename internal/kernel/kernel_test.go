package kernel

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// requirePrivileged skips t unless the process runs as root. With
// NETBLOCKS_REQUIRE_PRIVILEGED=1 (CI) a missing privilege fails the test
// instead, so that a skip cannot hide a bug. The shared test helper package
// imports this one, so it cannot be used here.
func requirePrivileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("NETBLOCKS_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal("test needs root, and NETBLOCKS_REQUIRE_PRIVILEGED=1 forbids skipping")
	}
	t.Skip("test needs root (set NETBLOCKS_REQUIRE_PRIVILEGED=1 to fail instead of skipping)")
}

// wireGuardLoaded reports whether the wireguard module is loaded or built
// in. Call it after probing: the probe's family lookup may auto-load it.
func wireGuardLoaded(t *testing.T) bool {
	t.Helper()
	_, err := os.Stat("/sys/module/wireguard")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// checkResult asserts that err is what Probe(f) must return on this machine:
// nil for every feature but WireGuard, and for WireGuard nil exactly when the
// module is present, a *FeatureError otherwise.
func checkResult(t *testing.T, f Feature, err error) {
	t.Helper()
	want := true
	if f == WireGuard {
		want = wireGuardLoaded(t)
	}
	if want {
		if err != nil {
			t.Errorf("Probe(%s) = %v, want nil", f, err)
		}
		return
	}
	var fe *FeatureError
	if !errors.As(err, &fe) || fe.Feature != f {
		t.Errorf("Probe(%s) = %v (%T), want a *FeatureError for it", f, err, err)
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		t.Errorf("Probe(%s) = %v, want it to match ebpf.ErrNotSupported", f, err)
	}
}

func TestFeatures(t *testing.T) {
	got := make([]string, 0, len(Features()))
	for _, f := range Features() {
		got = append(got, f.String())
	}
	want := []string{"BTF", "TCX", "XDP link", "LRU hash map", "LPM trie map", "ring buffer",
		"cgroup v2 sock_addr hooks", "WireGuard module"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Features() names (-want +got):\n%s", diff)
	}
	for i, f := range Features() {
		if f != Feature(i+1) {
			t.Errorf("Features()[%d] = %d, want %d", i, f, i+1)
		}
		if f.description() == "" {
			t.Errorf("%s has no description", f)
		}
	}
	if s := Feature(0).String(); s != "Feature(0)" {
		t.Errorf("Feature(0).String() = %q", s)
	}
}

func TestProbe(t *testing.T) {
	requirePrivileged(t)
	for _, f := range Features() {
		t.Run(f.String(), func(t *testing.T) {
			checkResult(t, f, Probe(f))
		})
	}
}

func TestProbeUnknown(t *testing.T) {
	err := Probe(Feature(99))
	if err == nil || errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("Probe(Feature(99)) = %v, want an inconclusive error", err)
	}
	if !strings.Contains(err.Error(), "unknown feature") {
		t.Errorf("Probe(Feature(99)) = %q, want it to say unknown feature", err)
	}
}

func TestProbeAll(t *testing.T) {
	requirePrivileged(t)
	r := ProbeAll()
	var got []Feature
	for _, res := range r.Results {
		got = append(got, res.Feature)
		checkResult(t, res.Feature, res.Err)
	}
	if diff := cmp.Diff(Features(), got); diff != "" {
		t.Errorf("ProbeAll features (-want +got):\n%s", diff)
	}
	for _, res := range r.Results {
		if res.Feature == CgroupSockAddr {
			want, err := CgroupV2Path()
			if err != nil {
				t.Fatal(err)
			}
			if res.Detail != want {
				t.Errorf("cgroup sock_addr detail = %q, want %q", res.Detail, want)
			}
		}
	}
}

func TestFeatureError(t *testing.T) {
	cause := errors.New("create tcx link: invalid argument")
	err := error(&FeatureError{Feature: TCX, Err: cause})
	if got, want := err.Error(), "kernel lacks TCX (tc BPF links, Linux 6.6+): create tcx link: invalid argument"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		t.Error("FeatureError does not match ebpf.ErrNotSupported")
	}
	if !errors.Is(err, cause) || errors.Unwrap(err) != cause {
		t.Error("FeatureError does not unwrap to its cause")
	}
	if errors.Is(err, os.ErrNotExist) {
		t.Error("FeatureError matches an unrelated error")
	}
	wrapped := fmt.Errorf("attach filter: %w", err)
	var fe *FeatureError
	if !errors.As(wrapped, &fe) || fe.Feature != TCX {
		t.Errorf("errors.As through wrapping = %v", fe)
	}

	for _, tt := range []struct {
		err  *FeatureError
		want string
	}{
		{&FeatureError{Feature: WireGuard}, `kernel lacks WireGuard module (generic netlink family "wireguard", Linux 5.6+ with CONFIG_WIREGUARD)`},
		{&FeatureError{Feature: XDPLink, Err: unix.EINVAL}, "kernel lacks XDP link (XDP attached through a bpf_link, Linux 5.9+): invalid argument"},
		{&FeatureError{Feature: Feature(42), Err: unix.EINVAL}, "kernel lacks Feature(42): invalid argument"},
	} {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		if !errors.Is(tt.err, ebpf.ErrNotSupported) {
			t.Errorf("%v does not match ebpf.ErrNotSupported", tt.err)
		}
	}
	for _, f := range Features() {
		msg := (&FeatureError{Feature: f}).Error()
		if prefix := "kernel lacks " + f.String() + " ("; !strings.HasPrefix(msg, prefix) {
			t.Errorf("%q does not start with %q", msg, prefix)
		}
	}
}

func TestClassify(t *testing.T) {
	cause := fmt.Errorf("create tcx link: %w", unix.EINVAL)
	upstream := fmt.Errorf("LRUHash: %w", ebpf.ErrNotSupported)
	for _, tt := range []struct {
		name      string
		err       error
		wantCause error // the FeatureError's Err; nil if inconclusive
		wantMsg   string
	}{
		{"marked", lacks(cause), cause, "kernel lacks TCX (tc BPF links, Linux 6.6+): create tcx link: invalid argument"},
		{"ErrNotSupported", upstream, upstream, "kernel lacks TCX (tc BPF links, Linux 6.6+): LRUHash: not supported"},
		{"inconclusive", unix.EPERM, nil, "probe TCX: operation not permitted"},
		{"plain EINVAL", cause, nil, "probe TCX: create tcx link: invalid argument"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := classify(TCX, tt.err)
			if err.Error() != tt.wantMsg {
				t.Errorf("message = %q, want %q", err, tt.wantMsg)
			}
			var fe *FeatureError
			isFE := errors.As(err, &fe)
			if isFE != (tt.wantCause != nil) || isFE != errors.Is(err, ebpf.ErrNotSupported) {
				t.Fatalf("classify(%v) = %v (%T)", tt.err, err, err)
			}
			if isFE && (fe.Feature != TCX || fe.Err != tt.wantCause) {
				t.Errorf("FeatureError = %+v, want cause %v", fe, tt.wantCause)
			}
			if !isFE && !errors.Is(err, tt.err) {
				t.Errorf("inconclusive error %v does not wrap %v", err, tt.err)
			}
		})
	}
}

func TestRequire(t *testing.T) {
	if err := Require(); err != nil {
		t.Errorf("Require() = %v", err)
	}

	// Inconclusive errors are joined as they are, and are not "missing".
	err := Require(Feature(98), Feature(99))
	if err == nil || errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("Require(unknown, unknown) = %v", err)
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 2 {
		t.Errorf("Require(unknown, unknown) joined %d errors, want 2", n)
	}

	requirePrivileged(t)
	if err := Require(BTF, TCX, XDPLink, LRUHash, LPMTrie, RingBuf, CgroupSockAddr); err != nil {
		t.Errorf("Require(all but WireGuard) = %v", err)
	}

	err = Require(TCX, WireGuard, Feature(99))
	errs := err.(interface{ Unwrap() []error }).Unwrap()
	var fe *FeatureError
	if wireGuardLoaded(t) {
		if len(errs) != 1 || errors.As(err, &fe) {
			t.Errorf("Require(TCX, WireGuard, unknown) = %v, want only the unknown feature's error", err)
		}
		return
	}
	if len(errs) != 2 {
		t.Fatalf("Require(TCX, WireGuard, unknown) joined %d errors, want 2: %v", len(errs), err)
	}
	if !errors.As(errs[0], &fe) || fe.Feature != WireGuard {
		t.Errorf("first joined error = %v, want WireGuard's FeatureError", errs[0])
	}
	if errors.Is(errs[1], ebpf.ErrNotSupported) {
		t.Errorf("second joined error = %v, want the unknown feature's inconclusive error", errs[1])
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		t.Error("joined error does not match ebpf.ErrNotSupported")
	}
	if !strings.Contains(err.Error(), "kernel lacks WireGuard module") {
		t.Errorf("joined error %q does not name WireGuard", err)
	}
}

func TestCgroupV2Path(t *testing.T) {
	path, err := CgroupV2Path()
	if err != nil {
		t.Fatalf("CgroupV2Path: %v", err)
	}
	t.Logf("cgroup v2 at %s", path)
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Errorf("%s has file system magic %#x, want cgroup2's %#x", path, st.Type, unix.CGROUP2_SUPER_MAGIC)
	}
}

func TestParseCgroup2Mount(t *testing.T) {
	const (
		root    = "25 1 0:22 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
		hybrid  = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate\n"
		unified = "31 25 0:27 / /sys/fs/cgroup rw,nosuid shared:9 master:2 - cgroup2 cgroup2 rw\n"
		subtree = "32 25 0:27 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup rw\n"
		v1      = "33 25 0:28 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n"
		escaped = "34 25 0:29 / /mnt/my\\040cgroup\\134x rw - cgroup2 none rw\n"
	)
	for _, tt := range []struct {
		name      string
		in        string
		want      string
		wantFound bool
		wantErr   bool
	}{
		{name: "hybrid", in: root + v1 + hybrid, want: "/sys/fs/cgroup/unified", wantFound: true},
		{name: "unified", in: root + unified, want: "/sys/fs/cgroup", wantFound: true},
		{name: "root preferred over subtree", in: root + subtree + hybrid, want: "/sys/fs/cgroup/unified", wantFound: true},
		{name: "subtree only", in: root + subtree, want: "/sys/fs/cgroup", wantFound: true},
		{name: "escaped", in: escaped, want: `/mnt/my cgroup\x`, wantFound: true},
		{name: "v1 only", in: root + v1},
		{name: "empty"},
		{name: "no separator", in: "35 25 0:30 / /x rw shared:1 cgroup2 none rw\n", wantErr: true},
		{name: "no fs type", in: "35 25 0:30 / /x rw -\n", wantErr: true},
		{name: "truncated escape", in: "35 25 0:30 / /x\\09 rw - cgroup2 none rw\n", wantErr: true},
		{name: "bad escape", in: "35 25 0:30 / /x\\089y rw - cgroup2 none rw\n", wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := parseCgroup2Mount(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want || found != tt.wantFound {
				t.Errorf("got %q, %v, want %q, %v", got, found, tt.want, tt.wantFound)
			}
		})
	}
}

func TestCgroupV2PathNotExist(t *testing.T) {
	_, found, err := findCgroup2(t.TempDir() + "/missing")
	if found || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("findCgroup2(missing file) = %v, %v", found, err)
	}
	if !errors.Is(errNoCgroup2(), os.ErrNotExist) {
		t.Error("errNoCgroup2 does not wrap os.ErrNotExist")
	}
}

func TestReportString(t *testing.T) {
	r := Report{
		Release: "6.18.0-test",
		Results: []Result{
			{Feature: BTF, Detail: "/sys/kernel/btf/vmlinux"},
			{Feature: TCX},
			{Feature: XDPLink, Err: fmt.Errorf("probe XDP link: %w", unix.EPERM)},
			{Feature: WireGuard, Err: &FeatureError{Feature: WireGuard, Err: errors.New("line one\nline two")}},
			{Feature: RingBuf, Err: &FeatureError{Feature: RingBuf}},
		},
	}
	want := `kernel 6.18.0-test
BTF                yes (/sys/kernel/btf/vmlinux)
TCX                yes
XDP link           unknown: probe XDP link: operation not permitted
WireGuard module   no: line one; line two
ring buffer        no`
	if diff := cmp.Diff(want, r.String()); diff != "" {
		t.Errorf("Report.String() (-want +got):\n%s", diff)
	}
}

func TestReport(t *testing.T) {
	requirePrivileged(t)
	r := ProbeAll()
	t.Log("\n" + r.String())

	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if want := unix.ByteSliceToString(u.Release[:]); r.Release != want {
		t.Errorf("Release = %q, want %q", r.Release, want)
	}
	lines := strings.Split(r.String(), "\n")
	if len(lines) != 1+len(Features()) {
		t.Fatalf("report has %d lines, want %d", len(lines), 1+len(Features()))
	}
	if lines[0] != "kernel "+r.Release {
		t.Errorf("first line = %q", lines[0])
	}
	for i, f := range Features() {
		line := lines[i+1]
		if !strings.HasPrefix(line, f.String()+" ") {
			t.Errorf("line %q does not start with %q", line, f)
		}
		if strings.Contains(line, "unknown:") {
			t.Errorf("probe of %s was inconclusive: %s", f, line)
		}
	}
}
