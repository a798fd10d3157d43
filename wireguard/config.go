package wireguard

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/vishvananda/netns"
)

// Backend is the implementation of a WireGuard device.
type Backend int

const (
	// Auto picks [Kernel] when the kernel has the wireguard module, else
	// [Embedded].
	Auto Backend = iota
	// Kernel is the kernel's WireGuard: a netlink link of type "wireguard",
	// configured through generic netlink (wgctrl).
	Kernel
	// Embedded is wireguard-go running inside this process: a TUN device and
	// UDP sockets in the device's namespace, and the standard UAPI socket
	// under /var/run/wireguard.
	Embedded
)

// String returns the backend's name: "auto", "kernel" or "embedded", or
// "Backend(N)".
func (b Backend) String() string {
	switch b {
	case Auto:
		return "auto"
	case Kernel:
		return "kernel"
	case Embedded:
		return "embedded"
	}
	return fmt.Sprintf("Backend(%d)", int(b))
}

// Defaults of [Config].
const (
	// DefaultName is the device's default name (Cilium's is cilium_wg0).
	DefaultName = "nb_wg0"
	// DefaultListenPort is the default UDP port, Cilium's.
	DefaultListenPort = 51871
	// DefaultUnderlayMTU is the underlay MTU assumed when none is given.
	DefaultUnderlayMTU = 1500
	// Overhead is what WireGuard adds to every packet over an IPv6 underlay,
	// the larger of the two: outer IPv6 header (40), UDP (8), and WireGuard's
	// data header (16) and authentication tag (16). The default MTU is the
	// underlay's less Overhead.
	Overhead = 80
	// DefaultRouteProtocol marks the routes a [Device] installs, so that
	// SetPeers removes its own routes and no one else's: `ip route show
	// proto 79` lists them. 79 is unassigned in iproute2's rt_protos (vxlan
	// uses 78).
	DefaultRouteProtocol = 79
)

// minMTU is the smallest MTU IPv4 allows (RFC 791).
const minMTU = 68

// maxMTU is the largest MTU a device can have: an IP packet's length field is
// 16 bits wide.
const maxMTU = 65535

// Config describes a WireGuard device. The zero value is a working device:
// "nb_wg0" on UDP port 51871 with MTU 1420, the backend chosen by probing the
// kernel, in the namespace of the calling thread, with a fresh key that is not
// stored anywhere.
type Config struct {
	// Name is the device's name, at most 15 bytes. Default "nb_wg0". The
	// embedded backend's UAPI socket, /var/run/wireguard/NAME.sock, is shared
	// by all namespaces: with that backend the name must be unique on the
	// machine, not only in its namespace.
	Name string

	// ListenPort is the UDP port the device receives on, in its namespace.
	// Default 51871 ([DefaultListenPort]).
	ListenPort uint16

	// MTU is the device's MTU, the largest packet the tunnel carries. Default
	// UnderlayMTU less 80 ([Overhead]). Pods' interfaces should use it too.
	MTU int

	// UnderlayMTU is the MTU of the network between the nodes, from which the
	// default MTU is computed. Default 1500. Ignored when MTU is set.
	UnderlayMTU int

	// KeyFile is where the private key is kept ([LoadOrCreateKey]): read if it
	// exists, else generated and written there. [Device.Rotate] replaces it.
	// Default none: New generates a key that lives as long as the device.
	KeyFile string

	// Backend chooses the implementation. Default [Auto]: [Kernel] when the
	// kernel has the wireguard module, else [Embedded]. [Kernel] on a kernel
	// without the module fails with an error that wraps
	// ebpf.ErrNotSupported and names the module.
	Backend Backend

	// RouteProtocol is the protocol number (rtm_protocol) of the routes
	// SetPeers installs; it removes only routes via this device that carry it.
	// Default 79 ([DefaultRouteProtocol]); 0 to 4 are the kernel's and
	// refused.
	RouteProtocol uint8

	// NetNS is the network namespace the device lives in. New duplicates the
	// handle and the caller keeps its own. Default (0 or netns.None()): the
	// namespace of the thread calling New, normally the process's.
	NetNS netns.NsHandle

	// Logger receives the device's events and wireguard-go's messages
	// (Debug for its verbose ones, Warn for its errors). Default nil:
	// nothing is logged.
	Logger *slog.Logger
}

// withDefaults returns cfg with its defaults filled in, or an error naming
// what is wrong.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if err := checkLinkName(cfg.Name); err != nil {
		return cfg, fmt.Errorf("check config: name: %w", err)
	}
	if cfg.ListenPort == 0 {
		cfg.ListenPort = DefaultListenPort
	}

	switch {
	case cfg.UnderlayMTU == 0:
		cfg.UnderlayMTU = DefaultUnderlayMTU
	case cfg.UnderlayMTU < 0:
		return cfg, fmt.Errorf("check config: underlay MTU %d is negative", cfg.UnderlayMTU)
	}
	switch {
	case cfg.MTU < 0:
		return cfg, fmt.Errorf("check config: MTU %d is negative", cfg.MTU)
	case cfg.MTU == 0:
		cfg.MTU = cfg.UnderlayMTU - Overhead
		if cfg.MTU < minMTU {
			return cfg, fmt.Errorf("check config: underlay MTU %d leaves %d for the tunnel, below the minimum of %d",
				cfg.UnderlayMTU, cfg.MTU, minMTU)
		}
	case cfg.MTU < minMTU:
		return cfg, fmt.Errorf("check config: MTU %d is below the minimum of %d", cfg.MTU, minMTU)
	case cfg.MTU > maxMTU:
		return cfg, fmt.Errorf("check config: MTU %d is above the maximum of %d", cfg.MTU, maxMTU)
	}

	if cfg.Backend < Auto || cfg.Backend > Embedded {
		return cfg, fmt.Errorf("check config: unknown %v", cfg.Backend)
	}

	switch {
	case cfg.RouteProtocol == 0:
		cfg.RouteProtocol = DefaultRouteProtocol
	case cfg.RouteProtocol <= 4:
		return cfg, fmt.Errorf("check config: route protocol %d is reserved for the kernel (0-4)", cfg.RouteProtocol)
	}

	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// checkLinkName returns an error if the kernel would refuse name for a
// device, or if it cannot name a UAPI socket.
func checkLinkName(name string) error {
	switch {
	case len(name) > 15:
		return fmt.Errorf("%q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid device name", name)
	case strings.ContainsAny(name, "/: \t\n\x00%"):
		return fmt.Errorf("%q contains '/', ':', '%%' or white space", name)
	}
	return nil
}
