package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// wireguardLinkType is the netlink kind of a kernel WireGuard device.
const wireguardLinkType = "wireguard"

// kernelDev is the kernel backend: a link of type "wireguard" created through
// a netlink handle in the target namespace (so that its UDP socket lives
// there too), configured through a wgctrl client whose generic netlink socket
// was opened in that namespace.
type kernelDev struct {
	name  string
	index int
	nl    *netlink.Handle
	wg    *wgctrl.Client
}

var _ backend = (*kernelDev)(nil)

// newKernel creates the device cfg describes in ns, whose netlink handle is
// nl, with private key k, and brings it up. A kernel WireGuard device of the
// same name that is already there (left by a process that did not Close) is
// taken over, peers and routes included, for SetPeers to reconcile. On error,
// it undoes what it did.
func newKernel(cfg Config, ns netns.NsHandle, nl *netlink.Handle, k Key, log *slog.Logger) (_ *kernelDev, err error) {
	d := &kernelDev{name: cfg.Name, nl: nl}

	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = cfg.Name, cfg.MTU
	created := true
	if err := nl.LinkAdd(&netlink.Wireguard{LinkAttrs: attrs}); errors.Is(err, unix.EEXIST) {
		created = false
	} else if err != nil {
		return nil, fmt.Errorf("add WireGuard device %s: %w", cfg.Name, err)
	}
	link, err := nl.LinkByName(cfg.Name)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("get WireGuard device %s: %w", cfg.Name, err), d.deleteLink(created))
	}
	if t := link.Type(); t != wireguardLinkType {
		return nil, fmt.Errorf("add WireGuard device %s: a device of that name exists and is of type %q", cfg.Name, t)
	}
	d.index = link.Attrs().Index
	if !created {
		log.Info("taking over existing kernel WireGuard device")
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.deleteLink(created))
		}
	}()

	// wgctrl opens its generic netlink socket when created: in ns, it finds
	// the devices of ns.
	if err := inNetNS(ns, func() error {
		var err error
		d.wg, err = wgctrl.New()
		return err
	}); err != nil {
		return nil, fmt.Errorf("open wgctrl client: %w", err)
	}
	defer func() {
		if err != nil {
			d.wg.Close()
		}
	}()

	if err := d.configure(devChange{privateKey: &k, listenPort: cfg.ListenPort}); err != nil {
		return nil, err
	}
	if err := nl.LinkSetMTU(link, cfg.MTU); err != nil {
		return nil, fmt.Errorf("set MTU of %s to %d: %w", cfg.Name, cfg.MTU, err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set WireGuard device %s up: %w", cfg.Name, err)
	}
	return d, nil
}

// deleteLink deletes the device if created is true.
func (d *kernelDev) deleteLink(created bool) error {
	if !created {
		return nil
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = d.name
	if err := d.nl.LinkDel(&netlink.Wireguard{LinkAttrs: attrs}); err != nil {
		return fmt.Errorf("delete WireGuard device %s: %w", d.name, err)
	}
	return nil
}

func (d *kernelDev) configure(c devChange) error {
	cfg := wgtypes.Config{}
	if c.privateKey != nil {
		k := wgtypes.Key(*c.privateKey)
		cfg.PrivateKey = &k
	}
	if c.listenPort != 0 {
		port := int(c.listenPort)
		cfg.ListenPort = &port
	}
	for _, p := range c.peers {
		pc := wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.publicKey), Remove: p.remove, UpdateOnly: p.keepaliveOnly}
		if p.keepaliveOnly {
			keepalive := p.keepalive
			pc.PersistentKeepaliveInterval = &keepalive
		} else if !p.remove {
			keepalive := p.keepalive
			pc.PersistentKeepaliveInterval = &keepalive
			pc.ReplaceAllowedIPs = true
			for _, ip := range p.allowedIPs {
				pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{
					IP:   ip.Addr().AsSlice(),
					Mask: net.CIDRMask(ip.Bits(), ip.Addr().BitLen()),
				})
			}
			if p.endpoint.IsValid() {
				pc.Endpoint = net.UDPAddrFromAddrPort(p.endpoint)
			}
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	if err := d.wg.ConfigureDevice(d.name, cfg); err != nil {
		return fmt.Errorf("configure device %s: %w", d.name, err)
	}
	return nil
}

func (d *kernelDev) state() (devState, error) {
	dev, err := d.wg.Device(d.name)
	if err != nil {
		return devState{}, fmt.Errorf("get configuration of device %s: %w", d.name, err)
	}
	s := devState{privateKey: Key(dev.PrivateKey), listenPort: uint16(dev.ListenPort)}
	for _, p := range dev.Peers {
		ps := peerState{
			publicKey:     Key(p.PublicKey),
			keepalive:     p.PersistentKeepaliveInterval.Truncate(time.Second),
			rxBytes:       uint64(p.ReceiveBytes),
			txBytes:       uint64(p.TransmitBytes),
			lastHandshake: p.LastHandshakeTime,
		}
		if p.Endpoint != nil {
			ps.endpoint = p.Endpoint.AddrPort()
			ps.endpoint = netip.AddrPortFrom(ps.endpoint.Addr().Unmap(), ps.endpoint.Port())
		}
		for _, ip := range p.AllowedIPs {
			addr, ok := netip.AddrFromSlice(ip.IP)
			if !ok {
				continue
			}
			ones, bits := ip.Mask.Size()
			if bits == 32 {
				addr = addr.Unmap()
			}
			ps.allowedIPs = append(ps.allowedIPs, netip.PrefixFrom(addr, ones))
		}
		s.peers = append(s.peers, ps)
	}
	return s, nil
}

func (d *kernelDev) close() error {
	cerr := d.wg.Close()
	if err := d.deleteLink(true); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("close wgctrl client: %w", cerr)
	}
	return nil
}
