package wireguard

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// inNetNS runs fn on an OS thread switched into ns, in a goroutine of its
// own, and returns fn's error. The caller's thread never changes namespace.
//
// Afterwards the thread goes back to the namespace it came from and is
// unlocked. If that fails, the goroutine exits still locked and the runtime
// discards the thread, so that no other goroutine ever runs in ns by accident.
// A panic in fn is raised again in the caller.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	type result struct {
		err      error
		panicked bool
		val      any
	}
	done := make(chan result, 1)
	go func() {
		var res result
		defer func() { done <- res }()

		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("get network namespace of thread: %w", err)
			return
		}
		defer orig.Close()

		if err := netns.Set(ns); err != nil {
			// setns failed, so the thread is where it was.
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("enter network namespace: %w", err)
			return
		}
		func() {
			defer func() {
				if p := recover(); p != nil {
					res.panicked, res.val = true, p
				}
			}()
			res.err = fn()
		}()
		if err := netns.Set(orig); err != nil {
			res.err = errors.Join(res.err, fmt.Errorf("restore network namespace of thread (thread discarded): %w", err))
			return // Still locked: the thread dies with the goroutine.
		}
		runtime.UnlockOSThread()
	}()

	res := <-done
	if res.panicked {
		panic(res.val)
	}
	return res.err
}

// currentNetNS returns a new handle to the network namespace of the calling
// thread.
func currentNetNS() (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return netns.None(), fmt.Errorf("get network namespace of thread: %w", err)
	}
	return ns, nil
}

// dupNetNS returns a new handle to the namespace ns refers to, which the
// caller owns.
func dupNetNS(ns netns.NsHandle) (netns.NsHandle, error) {
	fd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("duplicate network namespace handle: %w", err)
	}
	return netns.NsHandle(fd), nil
}

// nsBind is wireguard-go's UDP bind with its sockets opened in a network
// namespace. wireguard-go opens them whenever the device goes up or its port
// changes, from whichever goroutine asked for that (the TUN event reader, a
// UAPI client such as `wg set`, or New): Open switches a thread into the
// namespace each time, so the sockets land there and nowhere else.
//
// Wrapping the bind hides its concrete type, which turns off wireguard-go's
// route listener for sticky source addresses (it would listen in the wrong
// namespace); replies still leave from the address a peer's packets came to.
type nsBind struct {
	conn.Bind
	ns netns.NsHandle
}

var _ conn.Bind = (*nsBind)(nil)

// Open opens the bind's sockets in the namespace.
func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = inNetNS(b.ns, func() error {
		var err error
		fns, actual, err = b.Bind.Open(port)
		return err
	})
	return fns, actual, err
}

// nsTUN is wireguard-go's TUN device with two changes.
//
// Its MTU is read through a netlink handle in the device's namespace. The
// stock MTU opens an ioctl socket on the calling thread and looks the device
// up by name, which from any thread outside the namespace finds no device, or
// another one of the same name.
//
// Its link state events (which make wireguard-go bring the device up and
// down) are held back until New has brought the device up itself: the
// stock TUN device's "hack listener" takes a failed empty write for a sign
// that the link is up, and on recent kernels (6.18 here) that write fails the
// same way on a link that is down. wireguard-go would then bring the device
// up as soon as it is created, opening its sockets on a random port before New
// has set one, or reporting the set port's failure to nobody.
type nsTUN struct {
	tun.Device
	index  int
	events chan tun.Event
	ready  atomic.Bool // forward link state events

	mu sync.Mutex
	nl *netlink.Handle // nil once detached
}

var _ tun.Device = (*nsTUN)(nil)

// newNSTUN wraps dev, the TUN device with the given index in the namespace
// of nl, and starts forwarding its events.
func newNSTUN(dev tun.Device, nl *netlink.Handle, index int) *nsTUN {
	t := &nsTUN{Device: dev, index: index, events: make(chan tun.Event, 4), nl: nl}
	go t.forwardEvents()
	return t
}

// forwardEvents passes the TUN device's events on, without link state
// changes until ready, and ends when the TUN device closes its channel.
func (t *nsTUN) forwardEvents() {
	defer close(t.events)
	for ev := range t.Device.Events() {
		if !t.ready.Load() {
			ev &^= tun.EventUp | tun.EventDown
		}
		if ev != 0 {
			t.events <- ev
		}
	}
}

// Events returns the events wireguard-go's device acts on.
func (t *nsTUN) Events() <-chan tun.Event { return t.events }

// MTU returns the device's current MTU.
func (t *nsTUN) MTU() (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nl == nil {
		return 0, fmt.Errorf("get MTU of TUN device %d: %w", t.index, os.ErrClosed)
	}
	link, err := t.nl.LinkByIndex(t.index)
	if err != nil {
		return 0, fmt.Errorf("get TUN device %d: %w", t.index, err)
	}
	return link.Attrs().MTU, nil
}

// detach stops MTU from using the netlink handle, which its owner may close
// once detach returns. wireguard-go's event reader may still ask for the MTU
// after the device has closed.
func (t *nsTUN) detach() {
	t.mu.Lock()
	t.nl = nil
	t.mu.Unlock()
}
