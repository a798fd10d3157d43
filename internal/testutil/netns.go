package testutil

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netnsNameAttempts bounds the retries of [NewNetNS] when a randomly chosen
// name is already taken.
const netnsNameAttempts = 8

// NetNS is a named network namespace made for one test by [NewNetNS] and
// removed when the test ends. It appears under /var/run/netns, so `ip netns`
// and `ip -n NAME` see it while the test runs.
type NetNS struct {
	name   string
	handle netns.NsHandle
	nl     *netlink.Handle
}

// NewNetNS creates a network namespace for tb and registers a cleanup that
// closes its handles and deletes it. It calls [RequirePrivileged] first.
//
// The name is "nbt-" followed by a hash of tb.Name() and a random suffix, so
// parallel tests, in one package or several, never collide. The namespace
// starts empty: only a loopback device, which is down.
//
// The namespace is created on a dedicated, locked OS thread that is moved back
// to its original namespace afterwards (or discarded if that fails), so no
// goroutine, the caller's included, ever runs in it by accident.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()

	if !requirePrivileged(tb) {
		return nil
	}

	ns, err := newNetNS(tb.Name())
	if err != nil {
		tb.Fatal(err)
		return nil
	}
	tb.Cleanup(func() {
		if err := ns.close(); err != nil {
			tb.Error(err)
		}
	})
	return ns
}

// newNetNS creates a named network namespace and a netlink handle in it.
func newNetNS(testName string) (*NetNS, error) {
	var (
		name   string
		handle = netns.None()
		err    error
	)
	for range netnsNameAttempts {
		name = netnsName(testName)
		err = onLockedThread(func() error {
			var err error
			handle, err = netns.NewNamed(name)
			return err
		})
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		if handle.IsOpen() {
			// Created, but the thread could not be restored.
			handle.Close()
			_ = netns.DeleteNamed(name)
		}
		return nil, fmt.Errorf("create network namespace %s: %w", name, err)
	}

	n := &NetNS{name: name, handle: handle}
	err = onLockedThread(func() error {
		var err error
		n.nl, err = netlink.NewHandleAt(handle)
		return err
	})
	if err != nil {
		if n.nl != nil {
			n.nl.Close()
			n.nl = nil
		}
		return nil, errors.Join(fmt.Errorf("open netlink handle in %s: %w", name, err), n.close())
	}
	return n, nil
}

// netnsName returns a fresh namespace name for the test named testName.
func netnsName(testName string) string {
	h := fnv.New32a()
	h.Write([]byte(testName))
	return fmt.Sprintf("nbt-%08x-%04x", h.Sum32(), rand.N(1<<16))
}

// close releases the handles and deletes the namespace. The kernel destroys it
// (and every device in it) once no socket or process refers to it any more.
func (n *NetNS) close() error {
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}

	var errs []error
	if n.handle.IsOpen() {
		if err := n.handle.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close network namespace %s: %w", n.name, err))
		}
	}
	if err := netns.DeleteNamed(n.name); err != nil {
		errs = append(errs, fmt.Errorf("delete network namespace %s: %w", n.name, err))
	}
	return errors.Join(errs...)
}

// Name returns the namespace's name, as listed by `ip netns list`.
func (n *NetNS) Name() string { return n.name }

// Handle returns the namespace's file descriptor. It stays open until the
// test's cleanup; do not close it.
func (n *NetNS) Handle() netns.NsHandle { return n.handle }

// Netlink returns a netlink handle whose sockets live in the namespace, so
// every request made through it acts there without switching any thread.
// It is closed at the test's cleanup; do not close it.
func (n *NetNS) Netlink() *netlink.Handle { return n.nl }

// Do runs fn on an OS thread switched into the namespace and returns fn's
// error. Sockets fn opens stay in the namespace after Do returns, so a test
// may open them with Do and use them from the test goroutine.
//
// fn runs in a new goroutine locked to its thread. Afterwards the thread is
// moved back to its original namespace and unlocked; if that fails it stays
// locked, so the runtime discards it when the goroutine exits. The caller's
// thread is never switched.
//
// fn must not call t.Fatal, t.Skip or anything else that calls
// runtime.Goexit (Do turns that into an error), nor runtime.LockOSThread or
// runtime.UnlockOSThread; assertions belong outside fn. Goroutines fn starts
// run in the caller's namespace, not in n. A panic in fn is raised again in
// the caller.
func (n *NetNS) Do(fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(n.handle); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", n.name, err)
		}
		return fn()
	})
}

// Exec runs a command inside the namespace, like `ip netns exec`, and returns
// its combined standard output and error. Unlike `ip netns exec`, it does not
// remount /sys, so the command sees the mounts of the caller.
func (n *NetNS) Exec(name string, args ...string) ([]byte, error) {
	var out []byte
	err := n.Do(func() error {
		// The child is forked from this locked thread and inherits its
		// network namespace.
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	if err != nil {
		return out, fmt.Errorf("run %s in network namespace %s: %w", name, n.name, err)
	}
	return out, nil
}

// lockedResult is the outcome of fn in [onLockedThread].
type lockedResult struct {
	err      error
	panicked bool
	panicVal any
	stack    []byte
	exited   bool // fn called runtime.Goexit
}

// onLockedThread runs fn in a new goroutine locked to its OS thread, then moves
// the thread back to the network namespace it started in. Only when that
// succeeds is the thread unlocked and reused; otherwise the goroutine exits
// locked and the runtime discards the thread, so no other goroutine ever runs
// in a namespace it did not choose. A panic in fn is raised again in the
// caller; runtime.Goexit in fn becomes an error.
func onLockedThread(fn func() error) error {
	done := make(chan lockedResult, 1)
	go func() {
		res := lockedResult{exited: true}
		defer func() { done <- res }()

		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			res = lockedResult{err: fmt.Errorf("get current network namespace: %w", err)}
			return
		}
		defer orig.Close()

		func() {
			defer func() {
				if !res.exited {
					return
				}
				// recover returns nil only for runtime.Goexit: a panic(nil)
				// is a *runtime.PanicNilError.
				if p := recover(); p != nil {
					res.exited, res.panicked, res.panicVal, res.stack = false, true, p, debug.Stack()
				}
			}()
			res.err = fn()
			res.exited = false
		}()

		if err := netns.Set(orig); err != nil {
			res.err = errors.Join(res.err,
				fmt.Errorf("restore network namespace of OS thread (thread discarded): %w", err))
			return // Still locked: the thread dies with this goroutine.
		}
		runtime.UnlockOSThread()
	}()

	res := <-done
	switch {
	case res.panicked:
		panic(fmt.Sprintf("%v\n\npanic on namespace thread:\n%s", res.panicVal, res.stack))
	case res.exited:
		return errors.New("run function on namespace thread: it called runtime.Goexit " +
			"(t.Fatal, t.FailNow or t.Skip must not be called inside Do)")
	}
	return res.err
}
