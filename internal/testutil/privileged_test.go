package testutil

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/kernel"
)

// recordingTB is a testing.TB that records skips and failures instead of
// reporting them. Like testing.T, its SkipNow and FailNow call
// runtime.Goexit, so it must be used through recordTB.
type recordingTB struct {
	testing.TB

	mu       sync.Mutex
	skipped  bool
	failed   bool
	messages []string
}

// recordTB runs fn on a new goroutine with a recordingTB, so that the
// runtime.Goexit of a skip or failure ends only that goroutine, and returns
// the recording and whether fn returned normally.
func recordTB(t *testing.T, fn func(tb testing.TB)) (rec *recordingTB, returned bool) {
	t.Helper()
	rec = &recordingTB{TB: t}
	done := make(chan bool, 1)
	go func() {
		ok := false
		defer func() { done <- ok }()
		fn(rec)
		ok = true
	}()
	return rec, <-done
}

// Helper does nothing: recorded calls have no call site to hide.
func (r *recordingTB) Helper() {}

// record notes a skip, a failure and a message.
func (r *recordingTB) record(skip, fail bool, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.skipped = r.skipped || skip
	r.failed = r.failed || fail
	if msg != "" {
		r.messages = append(r.messages, msg)
	}
}

// Log records a message.
func (r *recordingTB) Log(args ...any) { r.record(false, false, fmt.Sprint(args...)) }

// Logf records a message.
func (r *recordingTB) Logf(format string, args ...any) {
	r.record(false, false, fmt.Sprintf(format, args...))
}

// Error records a failure.
func (r *recordingTB) Error(args ...any) { r.record(false, true, fmt.Sprint(args...)) }

// Errorf records a failure.
func (r *recordingTB) Errorf(format string, args ...any) {
	r.record(false, true, fmt.Sprintf(format, args...))
}

// Fail records a failure.
func (r *recordingTB) Fail() { r.record(false, true, "") }

// FailNow records a failure and ends the goroutine.
func (r *recordingTB) FailNow() { r.Fail(); runtime.Goexit() }

// Fatal records a failure and ends the goroutine.
func (r *recordingTB) Fatal(args ...any) { r.Error(args...); runtime.Goexit() }

// Fatalf records a failure and ends the goroutine.
func (r *recordingTB) Fatalf(format string, args ...any) { r.Errorf(format, args...); runtime.Goexit() }

// SkipNow records a skip and ends the goroutine.
func (r *recordingTB) SkipNow() { r.record(true, false, ""); runtime.Goexit() }

// Skip records a skip and ends the goroutine.
func (r *recordingTB) Skip(args ...any) { r.Log(args...); r.SkipNow() }

// Skipf records a skip and ends the goroutine.
func (r *recordingTB) Skipf(format string, args ...any) { r.Logf(format, args...); r.SkipNow() }

// Skipped reports whether a skip was recorded.
func (r *recordingTB) Skipped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.skipped
}

// Failed reports whether a failure was recorded.
func (r *recordingTB) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// output returns everything recorded, one message a line.
func (r *recordingTB) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.messages, "\n")
}

// decision is what a helper under test did with its testing.TB.
type decision int

const (
	decidedPass decision = iota
	decidedSkip
	decidedFail
)

// String names the decision.
func (d decision) String() string {
	return [...]string{"pass", "skip", "fail"}[d]
}

// decide returns what rec recorded, failing t if the recording is
// inconsistent with how fn ended.
func decide(t *testing.T, rec *recordingTB, returned bool) decision {
	t.Helper()
	var d decision
	switch {
	case rec.Failed() && rec.Skipped():
		t.Fatalf("both skipped and failed: %s", rec.output())
	case rec.Failed():
		d = decidedFail
	case rec.Skipped():
		d = decidedSkip
	}
	if returned != (d == decidedPass) {
		t.Fatalf("decision %v, but returned normally = %v", d, returned)
	}
	return d
}

// dropEffectiveCaps removes caps from the effective set of the calling
// thread, which must be locked and must never be unlocked again: the thread
// dies with its goroutine.
func dropEffectiveCaps(caps ...uint) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("get capabilities: %w", err)
	}
	for _, c := range caps {
		data[c/32].Effective &^= 1 << (c % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set capabilities: %w", err)
	}
	return nil
}

// onThreadWithout runs fn(tb) with caps dropped from the effective set of
// the (locked, then discarded) thread it runs on.
func onThreadWithout(caps []uint, fn func(testing.TB)) func(testing.TB) {
	return func(tb testing.TB) {
		runtime.LockOSThread() // Never unlocked: the thread's capabilities are changed.
		if err := dropEffectiveCaps(caps...); err != nil {
			tb.Error(err) // Recorded; Fatal would be mistaken for the decision.
			return
		}
		fn(tb)
	}
}

func TestRequirePrivileged(t *testing.T) {
	RequirePrivileged(t)

	for _, tc := range []struct {
		name    string
		env     string
		drop    []uint
		want    decision
		missing []string
	}{
		{name: "privileged", env: "", want: decidedPass},
		{name: "privileged required", env: "1", want: decidedPass},
		{name: "no CAP_BPF", env: "", drop: []uint{unix.CAP_BPF}, want: decidedSkip, missing: []string{"CAP_BPF"}},
		{name: "no CAP_NET_ADMIN required", env: "1", drop: []uint{unix.CAP_NET_ADMIN}, want: decidedFail, missing: []string{"CAP_NET_ADMIN"}},
		{name: "no CAP_SYS_ADMIN env 0", env: "0", drop: []uint{unix.CAP_SYS_ADMIN}, want: decidedSkip, missing: []string{"CAP_SYS_ADMIN"}},
		{name: "none", env: "", drop: []uint{unix.CAP_BPF, unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN}, want: decidedSkip,
			missing: []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"}},
		{name: "none required", env: "1", drop: []uint{unix.CAP_BPF, unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN}, want: decidedFail,
			missing: []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(RequirePrivilegedEnv, tc.env)

			rec, returned := recordTB(t, onThreadWithout(tc.drop, RequirePrivileged))
			if got := decide(t, rec, returned); got != tc.want {
				t.Fatalf("RequirePrivileged: %v, want %v; output: %s", got, tc.want, rec.output())
			}
			if tc.want == decidedPass {
				return
			}

			out := rec.output()
			detail, ok := strings.CutPrefix(out, "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): ")
			if !ok {
				t.Fatalf("reason %q does not start with the required prefix", out)
			}
			for _, c := range []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"} {
				if named, want := strings.Contains(detail, c), slices.Contains(tc.missing, c); named != want {
					t.Errorf("reason %q names %s: %v, want %v", out, c, named, want)
				}
			}
			if tc.want == decidedFail && !strings.Contains(out, RequirePrivilegedEnv) {
				t.Errorf("failure %q does not name %s", out, RequirePrivilegedEnv)
			}
		})
	}
}

func TestRequireFeature(t *testing.T) {
	RequirePrivileged(t)

	t.Run("probed", func(t *testing.T) {
		// A skip for a missing feature is allowed in CI too.
		t.Setenv(RequirePrivilegedEnv, "1")

		for _, f := range kernel.Features() {
			probeErr := kernel.Probe(f)
			want := decidedPass
			var fe *kernel.FeatureError
			switch {
			case errors.As(probeErr, &fe):
				want = decidedSkip
			case probeErr != nil:
				want = decidedFail
			}

			rec, returned := recordTB(t, func(tb testing.TB) { RequireFeature(tb, f) })
			if got := decide(t, rec, returned); got != want {
				t.Errorf("RequireFeature(%s): %v, want %v (probe: %v); output: %s", f, got, want, probeErr, rec.output())
				continue
			}
			if want != decidedPass && !strings.Contains(rec.output(), f.String()) {
				t.Errorf("RequireFeature(%s): output %q does not name the feature", f, rec.output())
			}
			t.Logf("%s: %v (%v)", f, want, probeErr)
		}
	})

	t.Run("all features", func(t *testing.T) {
		t.Setenv(RequirePrivilegedEnv, "1")
		// All at once: the first one the kernel lacks decides.
		fs := kernel.Features()
		want := decidedPass
		for _, f := range fs {
			if err := kernel.Probe(f); err != nil {
				var fe *kernel.FeatureError
				if errors.As(err, &fe) {
					want = decidedSkip
				} else {
					want = decidedFail
				}
				break
			}
		}
		rec, returned := recordTB(t, func(tb testing.TB) { RequireFeature(tb, fs...) })
		if got := decide(t, rec, returned); got != want {
			t.Errorf("RequireFeature(all): %v, want %v; output: %s", got, want, rec.output())
		}
	})

	t.Run("none", func(t *testing.T) {
		rec, returned := recordTB(t, func(tb testing.TB) { RequireFeature(tb) })
		if got := decide(t, rec, returned); got != decidedPass {
			t.Errorf("RequireFeature(): %v, want pass; output: %s", got, rec.output())
		}
	})

	t.Run("undecided probe fails", func(t *testing.T) {
		t.Setenv(RequirePrivilegedEnv, "")
		unknown := kernel.Feature(1000)
		if err := kernel.Probe(unknown); err == nil || errors.Is(err, ebpf.ErrNotSupported) {
			t.Fatalf("Probe(%d) = %v, want an undecided error", unknown, err)
		}
		rec, returned := recordTB(t, func(tb testing.TB) { RequireFeature(tb, unknown) })
		if got := decide(t, rec, returned); got != decidedFail {
			t.Errorf("RequireFeature(unknown): %v, want fail; output: %s", got, rec.output())
		}
	})

	for _, tc := range []struct {
		env  string
		want decision
	}{
		{"", decidedSkip},
		{"1", decidedFail},
	} {
		t.Run("unprivileged env="+tc.env, func(t *testing.T) {
			t.Setenv(RequirePrivilegedEnv, tc.env)
			rec, returned := recordTB(t, onThreadWithout([]uint{unix.CAP_BPF}, func(tb testing.TB) {
				RequireFeature(tb, kernel.BTF)
			}))
			if got := decide(t, rec, returned); got != tc.want {
				t.Errorf("RequireFeature without CAP_BPF: %v, want %v; output: %s", got, tc.want, rec.output())
			}
			if !strings.HasPrefix(rec.output(), "needs root") {
				t.Errorf("output %q: want the privilege reason", rec.output())
			}
		})
	}
}

func TestSkipOrFail(t *testing.T) {
	lacks := &kernel.FeatureError{Feature: kernel.WireGuard, Err: errors.New("no generic netlink family")}

	for _, env := range []string{"", "1"} {
		t.Run("env="+env, func(t *testing.T) {
			t.Setenv(RequirePrivilegedEnv, env)

			for _, tc := range []struct {
				name string
				err  error
				want decision
			}{
				{"nil", nil, decidedPass},
				{"feature error", lacks, decidedSkip},
				{"wrapped feature error", fmt.Errorf("create device: %w", lacks), decidedSkip},
				{"joined feature error", errors.Join(errors.New("other"), lacks), decidedSkip},
				{"feature error without cause", &kernel.FeatureError{Feature: kernel.TCX}, decidedSkip},
				{"bare ErrNotSupported", ebpf.ErrNotSupported, decidedFail},
				{"wrapped ErrNotSupported", fmt.Errorf("attach program: %w", ebpf.ErrNotSupported), decidedFail},
				{"other error", errors.New("boom"), decidedFail},
			} {
				rec, returned := recordTB(t, func(tb testing.TB) { SkipOrFail(tb, tc.err) })
				got := decide(t, rec, returned)
				if got != tc.want {
					t.Errorf("%s: %v, want %v; output: %s", tc.name, got, tc.want, rec.output())
					continue
				}
				var fe *kernel.FeatureError
				if got == decidedSkip && errors.As(tc.err, &fe) && !strings.Contains(rec.output(), fe.Feature.String()) {
					t.Errorf("%s: skip reason %q does not name %s", tc.name, rec.output(), fe.Feature)
				}
				if got == decidedFail && !strings.Contains(rec.output(), tc.err.Error()) {
					t.Errorf("%s: failure %q does not contain the error %q", tc.name, rec.output(), tc.err)
				}
			}
		})
	}
}
