package l2announce

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// doInNetNS runs fn on an OS thread switched into ns and returns fn's error;
// with ns not open, it runs fn on the caller's thread. Sockets fn opens stay
// in ns. The thread is moved back afterwards, or discarded if that fails, so
// no other goroutine ever runs in ns by accident.
func doInNetNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get network namespace of thread: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		err = fn()
		if rerr := netns.Set(orig); rerr != nil {
			// Still locked: the runtime discards the thread with the
			// goroutine.
			errc <- errors.Join(err, fmt.Errorf("restore network namespace of thread: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}
