package wireguard

import (
	"errors"
	"fmt"

	"github.com/netblocks/netblocks/internal/kernel"
)

// backend is one implementation of a WireGuard device, as wgctrl's
// internal/wginternal has one per platform. It owns the network device.
type backend interface {
	// configure applies c to the device.
	configure(c devChange) error
	// state returns the device's configuration and per-peer counters.
	state() (devState, error)
	// close stops the device and deletes its network device, which takes
	// the routes through it along.
	close() error
}

// chooseBackend resolves want into the backend to create: Auto becomes Kernel
// when the kernel has the wireguard module and Embedded when a probe says it
// has not. reason says why Auto chose Embedded.
func chooseBackend(want Backend) (got Backend, reason error, err error) {
	if want == Embedded {
		return Embedded, nil, nil
	}
	perr := kernel.Probe(kernel.WireGuard)
	var fe *kernel.FeatureError
	switch {
	case perr == nil:
		return Kernel, nil, nil
	case want == Kernel:
		return 0, nil, fmt.Errorf("choose kernel backend: %w", perr)
	case errors.As(perr, &fe):
		return Embedded, perr, nil
	default:
		// The probe could not decide (for example, no permission to open a
		// generic netlink socket): guessing could hide the kernel device.
		return 0, nil, fmt.Errorf("choose backend: %w", perr)
	}
}
