package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Device is a WireGuard device in a network namespace, with its peers and the
// routes to them. Its methods are safe for concurrent use.
type Device struct {
	cfg     Config // with defaults
	backend Backend
	log     *slog.Logger

	mu    sync.Mutex
	kicks kicker
	be    backend // nil once closed
	ns    netns.NsHandle
	nl    *netlink.Handle
	index int
	key   Key // private
}

// New creates the device cfg describes, up and with no peers, and returns it.
// It loads or creates the key first (see [Config.KeyFile]) and picks the
// backend (see [Config.Backend]). On error, nothing it created is left
// behind, except a key file it wrote.
func New(cfg Config) (_ *Device, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}

	var key Key
	if cfg.KeyFile != "" {
		key, err = LoadOrCreateKey(cfg.KeyFile)
	} else {
		key, err = GenerateKey()
	}
	if err != nil {
		return nil, fmt.Errorf("create device %s: %w", cfg.Name, err)
	}

	kind, reason, err := chooseBackend(cfg.Backend)
	if err != nil {
		return nil, fmt.Errorf("create device %s: %w", cfg.Name, err)
	}

	d := &Device{cfg: cfg, backend: kind, key: key, ns: netns.None()}
	d.kicks.d = d
	d.log = cfg.Logger.With("device", cfg.Name)
	defer func() {
		if err != nil {
			d.release()
		}
	}()

	if cfg.NetNS > 0 {
		d.ns, err = dupNetNS(cfg.NetNS)
	} else {
		d.ns, err = currentNetNS()
	}
	if err != nil {
		return nil, fmt.Errorf("create device %s: %w", cfg.Name, err)
	}
	d.nl, err = netlink.NewHandleAt(d.ns)
	if err != nil {
		return nil, fmt.Errorf("create device %s: open netlink handle: %w", cfg.Name, err)
	}

	switch kind {
	case Kernel:
		var kd *kernelDev
		if kd, err = newKernel(cfg, d.ns, d.nl, key, d.log); err == nil {
			d.be, d.index = kd, kd.index
		}
	case Embedded:
		var ed *embedded
		if ed, err = newEmbedded(cfg, d.ns, d.nl, key, d.log); err == nil {
			d.be, d.index = ed, ed.index
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create device %s: %w", cfg.Name, err)
	}

	attrs := []any{"backend", kind, "public_key", key.PublicKey(), "port", cfg.ListenPort, "mtu", cfg.MTU}
	if reason != nil {
		attrs = append(attrs, "why", reason.Error())
	}
	d.log.Info("created WireGuard device", attrs...)
	return d, nil
}

// release closes the netlink and namespace handles.
func (d *Device) release() {
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	if d.ns.IsOpen() {
		d.ns.Close()
		d.ns = netns.None()
	}
}

// errClosed returns the error of op on a closed device.
func errClosed(op string) error {
	return fmt.Errorf("%s: device closed: %w", op, os.ErrClosed)
}

// Name returns the device's name.
func (d *Device) Name() string { return d.cfg.Name }

// Backend returns the backend the device runs on: [Kernel] or [Embedded],
// never [Auto].
func (d *Device) Backend() Backend { return d.backend }

// ListenPort returns the UDP port the device receives on.
func (d *Device) ListenPort() uint16 { return d.cfg.ListenPort }

// MTU returns the MTU the device was created with.
func (d *Device) MTU() int { return d.cfg.MTU }

// Index returns the device's interface index in its namespace.
func (d *Device) Index() int { return d.index }

// PublicKey returns the device's public key, the one to publish to the other
// nodes. It changes with [Device.Rotate].
func (d *Device) PublicKey() Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.key.PublicKey()
}

// SetPeers makes peers the device's peers, and routes their allowed IPs
// through the device (see [Peer.AllowedIPs]). Peers not in the list are
// removed, with their routes; peers configured as they already are keep their
// sessions and counters. A peer that takes the place of one removed (a node
// that rotated its key) is sent a handshake if none has happened half a
// second later: see the package documentation on rotation. Bad input (a duplicate public key, an allowed IP
// given to two peers, host bits set) is refused before anything changes. If
// a step fails, SetPeers restores the peers and routes as they were.
func (d *Device) SetPeers(peers []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.be == nil {
		return errClosed("set peers")
	}

	want, err := checkPeers(peers, d.key.PublicKey())
	if err != nil {
		return err
	}
	cur, err := d.be.state()
	if err != nil {
		return fmt.Errorf("set peers: %w", err)
	}

	pl := planChange(cur, want)
	if len(pl.change.peers) > 0 {
		if err := d.be.configure(pl.change); err != nil {
			return fmt.Errorf("set peers: %w", d.restorePeers(err, cur))
		}
	}
	radded, rdeleted, err := d.syncRoutes(routedPrefixes(want))
	if err != nil {
		return fmt.Errorf("set peers: %w", d.restorePeers(err, cur))
	}
	d.kicks.update(want, pl.replacements)

	if pl.added+pl.updated+pl.removed+radded+rdeleted > 0 {
		d.log.Info("set peers", "peers", len(want), "added", pl.added, "updated", pl.updated, "removed", pl.removed,
			"routes_added", radded, "routes_deleted", rdeleted)
	}
	return nil
}

// restorePeers puts the device's peers back as they were in old after err,
// and returns err with any failure to do so.
func (d *Device) restorePeers(err error, old devState) error {
	cur, serr := d.be.state()
	if serr != nil {
		return errors.Join(err, fmt.Errorf("undo: %w", serr))
	}
	pl := planChange(cur, peersOf(old))
	if len(pl.change.peers) == 0 {
		return err
	}
	if cerr := d.be.configure(pl.change); cerr != nil {
		return errors.Join(err, fmt.Errorf("undo: %w", cerr))
	}
	return err
}

// Rotate replaces the device's key pair with a new one, and the key file with
// it when there is one, and returns the new public key. Peers reject the
// device's handshakes until they have the new public key: see the package
// documentation on rotation. If a step fails, the old key stays in force, in
// the device and in the file.
func (d *Device) Rotate() (Key, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.be == nil {
		return Key{}, errClosed("rotate key")
	}

	key, err := GenerateKey()
	if err != nil {
		return Key{}, fmt.Errorf("rotate key: %w", err)
	}
	var pending *pendingKeyFile
	if d.cfg.KeyFile != "" {
		if pending, err = prepareKeyFile(d.cfg.KeyFile, key); err != nil {
			return Key{}, fmt.Errorf("rotate key: %w", err)
		}
	}
	if err := d.be.configure(devChange{privateKey: &key}); err != nil {
		if pending != nil {
			pending.discard()
		}
		return Key{}, fmt.Errorf("rotate key: %w", err)
	}
	if pending != nil {
		if err := pending.replace(); err != nil {
			if uerr := d.be.configure(devChange{privateKey: &d.key}); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", uerr))
			}
			return Key{}, fmt.Errorf("rotate key: %w", err)
		}
	}

	old := d.key.PublicKey()
	d.key = key
	d.log.Info("rotated key", "old_public_key", old, "public_key", key.PublicKey())
	return key.PublicKey(), nil
}

// Close stops the device and deletes it, which removes its routes. The
// embedded backend's goroutines, UDP sockets and UAPI socket go with it. The
// key file stays. Close on a closed device does nothing and returns nil; other
// methods return an error wrapping os.ErrClosed.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.be == nil {
		return nil
	}
	d.kicks.stop()
	err := d.be.close()
	d.be = nil
	d.release()
	if err != nil {
		return fmt.Errorf("close device %s: %w", d.cfg.Name, err)
	}
	d.log.Info("closed WireGuard device")
	return nil
}
