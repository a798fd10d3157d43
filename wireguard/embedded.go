package wireguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// linkGoneTimeout bounds how long closing an embedded device waits for the
// kernel to delete its TUN device.
const linkGoneTimeout = 5 * time.Second

// embedded is the wireguard-go backend: a TUN device created in the target
// namespace, a UDP bind whose sockets are opened there ([nsBind]), and a UAPI
// listener on /var/run/wireguard/NAME.sock for `wg` and wgctrl, served by
// the device's own IpcHandle.
type embedded struct {
	name  string
	index int
	nl    *netlink.Handle
	tun   *nsTUN
	dev   *device.Device
	log   *slog.Logger

	uapi     *net.UnixListener
	uapiDone chan struct{} // closed when the accept loop has returned

	mu      sync.Mutex
	conns   map[net.Conn]struct{} // live UAPI connections
	closing bool
	workers sync.WaitGroup // UAPI connection handlers
}

var _ backend = (*embedded)(nil)

// newEmbedded creates the device cfg describes in ns, whose netlink handle is
// nl, with private key k, and brings it up. On error, it undoes what it did.
func newEmbedded(cfg Config, ns netns.NsHandle, nl *netlink.Handle, k Key, log *slog.Logger) (_ *embedded, err error) {
	e := &embedded{name: cfg.Name, nl: nl, log: log, conns: map[net.Conn]struct{}{}}

	// The TUN device, its netlink listener and the ioctl socket that sets
	// its MTU are all created in ns.
	var tdev tun.Device
	if err := inNetNS(ns, func() error {
		var err error
		tdev, err = tun.CreateTUN(cfg.Name, cfg.MTU)
		return err
	}); err != nil {
		return nil, fmt.Errorf("create TUN device %s: %w", cfg.Name, err)
	}
	link, err := nl.LinkByName(cfg.Name)
	if err != nil {
		tdev.Close()
		return nil, fmt.Errorf("get TUN device %s: %w", cfg.Name, err)
	}
	e.index = link.Attrs().Index

	bind := &nsBind{Bind: conn.NewDefaultBind(), ns: ns}
	e.tun = newNSTUN(tdev, nl, e.index)
	e.dev = device.NewDevice(e.tun, bind, wgLogger(log))
	defer func() {
		if err != nil {
			err = errors.Join(err, e.close())
		}
	}()

	if err := e.configure(devChange{privateKey: &k, listenPort: cfg.ListenPort}); err != nil {
		return nil, err
	}

	// The UAPI socket's path is the one name shared by every namespace.
	e.uapi, err = uapiListen(cfg.Name)
	if err != nil {
		return nil, err
	}
	e.uapiDone = make(chan struct{})
	go e.serveUAPI()

	if err := nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set TUN device %s up: %w", cfg.Name, err)
	}
	if err := e.dev.Up(); err != nil {
		return nil, fmt.Errorf("bring device %s up on UDP port %d: %w", cfg.Name, cfg.ListenPort, err)
	}
	// From now on the device follows its link: down when someone sets the
	// link down, up again when it comes back.
	e.tun.ready.Store(true)
	return e, nil
}

// serveUAPI accepts UAPI connections and hands each to the device, until the
// listener is closed.
func (e *embedded) serveUAPI() {
	defer close(e.uapiDone)
	for {
		c, err := e.uapi.Accept()
		if err != nil {
			e.mu.Lock()
			closing := e.closing
			e.mu.Unlock()
			if !closing {
				e.log.Warn("UAPI socket stopped working", "error", err)
			}
			return
		}
		e.mu.Lock()
		if e.closing {
			e.mu.Unlock()
			c.Close()
			continue
		}
		e.conns[c] = struct{}{}
		e.workers.Add(1)
		e.mu.Unlock()
		go func() {
			defer e.workers.Done()
			e.dev.IpcHandle(c) // Closes c.
			e.mu.Lock()
			delete(e.conns, c)
			e.mu.Unlock()
		}()
	}
}

// uapiDir is where WireGuard implementations put their UAPI sockets, one
// per device, named after it: `wg` and wgctrl look there.
const uapiDir = "/var/run/wireguard"

// uapiListen creates the UAPI socket of the device called name, as
// wireguard-go's ipc.UAPIOpen does: in uapiDir, mode 0600, replacing a stale
// socket but failing if a live one answers. ipc.UAPIOpen returns a duplicate
// of the listener's descriptor and leaves the original to the garbage
// collector, and until it runs the closed socket still holds the connections
// in its backlog; ipc.UAPIListen hands connections over through channels its
// Close can strand one in. The listener returned here is the only one, and
// removes the socket file when closed.
func uapiListen(name string) (*net.UnixListener, error) {
	if err := os.MkdirAll(uapiDir, 0o755); err != nil {
		return nil, fmt.Errorf("create UAPI socket directory: %w", err)
	}
	path := filepath.Join(uapiDir, name+".sock")
	addr := &net.UnixAddr{Name: path, Net: "unix"}

	// The socket's mode comes from the umask: only root may configure the
	// device. The umask is the process's; wireguard-go sets it the same way.
	old := unix.Umask(0o077)
	defer unix.Umask(old)

	ln, err := net.ListenUnix("unix", addr)
	if errors.Is(err, unix.EADDRINUSE) {
		if c, derr := net.Dial("unix", path); derr == nil {
			c.Close()
			return nil, fmt.Errorf("create UAPI socket %s: a WireGuard device of this name runs in this or another namespace (names must be unique on the machine)", path)
		}
		// Stale: left by a process that died.
		if rerr := os.Remove(path); rerr != nil {
			return nil, fmt.Errorf("remove stale UAPI socket: %w", rerr)
		}
		ln, err = net.ListenUnix("unix", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("create UAPI socket %s: %w", path, err)
	}
	return ln, nil
}

func (e *embedded) configure(c devChange) error {
	if err := e.dev.IpcSet(encodeChange(c)); err != nil {
		return fmt.Errorf("configure device %s: %w", e.name, err)
	}
	return nil
}

func (e *embedded) state() (devState, error) {
	var sb strings.Builder
	if err := e.dev.IpcGetOperation(&sb); err != nil {
		return devState{}, fmt.Errorf("get configuration of device %s: %w", e.name, err)
	}
	s, err := parseState(strings.NewReader(sb.String()))
	if err != nil {
		return devState{}, fmt.Errorf("get configuration of device %s: %w", e.name, err)
	}
	return s, nil
}

// close stops the UAPI listener (removing the socket file) and the
// connections it accepted, then the device, its goroutines and sockets, and
// waits until the kernel has deleted the TUN device. It also cleans up after
// a newEmbedded that failed halfway.
func (e *embedded) close() error {
	var errs []error
	if e.uapi != nil {
		e.mu.Lock()
		e.closing = true
		e.mu.Unlock()
		if err := e.uapi.Close(); err != nil { // Removes the socket file.
			errs = append(errs, fmt.Errorf("close UAPI socket of %s: %w", e.name, err))
		}
		<-e.uapiDone
		e.mu.Lock()
		for c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
		e.workers.Wait()
	}

	e.dev.Close()
	<-e.dev.Wait()
	e.tun.detach()
	if err := e.waitLinkGone(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// waitLinkGone waits until the TUN device is gone. The kernel deletes it when
// the last descriptor of its file is closed, which the Go runtime may do a
// little after Close returns, once a blocked read has woken up.
func (e *embedded) waitLinkGone() error {
	deadline := time.Now().Add(linkGoneTimeout)
	for {
		link, err := e.nl.LinkByIndex(e.index)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) || (err == nil && link.Attrs().Name != e.name) {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("wait for TUN device %s to go: %w", e.name, err)
			}
			return fmt.Errorf("wait for TUN device %s to go: still there after %v", e.name, linkGoneTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wgLogger returns a wireguard-go logger writing to log: its verbose
// messages at Debug level, its errors at Warn (they are mostly about one
// peer or packet, not the device).
func wgLogger(log *slog.Logger) *device.Logger {
	ctx := context.Background()
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(ctx, slog.LevelDebug) {
				log.Debug("wireguard-go: " + fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			if log.Enabled(ctx, slog.LevelWarn) {
				log.Warn("wireguard-go: " + fmt.Sprintf(format, args...))
			}
		},
	}
}
