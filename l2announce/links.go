package l2announce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/netlinksafe"
)

// linkInfo is what a Responder needs to know about one interface.
type linkInfo struct {
	Index int
	Name  string
	MAC   net.HardwareAddr
	MTU   int
	// Up: administratively up and running (carrier, operationally up).
	Up bool
	// Ethernet: an Ethernet-like device with a 6-byte address, not
	// loopback.
	Ethernet bool
}

// netInterface returns l as a *net.Interface for [Config.Listen].
func (l linkInfo) netInterface() *net.Interface {
	ifi := &net.Interface{Index: l.Index, Name: l.Name, HardwareAddr: l.MAC, MTU: l.MTU}
	if l.Up {
		ifi.Flags |= net.FlagUp | net.FlagRunning
	}
	return ifi
}

// system is where a Responder finds interfaces and opens packet connections:
// netlink and AF_PACKET in a network namespace, or a fake in unit tests.
type system interface {
	// watchLinks sends the interfaces, by index, to out whenever they
	// change, the first time at once, until ctx is done. A newer set may
	// replace one that was not received yet.
	watchLinks(ctx context.Context, out chan map[int]linkInfo)
	// listen opens a packet connection for frames of etherType on ifi.
	listen(ifi *net.Interface, etherType uint16) (net.PacketConn, error)
	close() error
}

// resubscribeDelay is how long a Responder waits before it subscribes to link
// updates again after the subscription failed.
const resubscribeDelay = time.Second

// nlSystem is the system of a network namespace: netlink for interfaces, the
// listen function for connections.
type nlSystem struct {
	ns       netns.NsHandle // netns.None(): the caller's namespace.
	listenFn func(ifi *net.Interface, etherType uint16) (net.PacketConn, error)
	log      *slog.Logger
}

var _ system = (*nlSystem)(nil)

// openSystem returns the system of the namespace at path ("" for the
// caller's).
func openSystem(path string, listen func(*net.Interface, uint16) (net.PacketConn, error), log *slog.Logger) (*nlSystem, error) {
	s := &nlSystem{ns: netns.None(), listenFn: listen, log: log}
	if path != "" {
		ns, err := netns.GetFromPath(path)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", path, err)
		}
		s.ns = ns
	}
	return s, nil
}

func (s *nlSystem) close() error {
	if s.ns.IsOpen() {
		return s.ns.Close()
	}
	return nil
}

func (s *nlSystem) listen(ifi *net.Interface, etherType uint16) (net.PacketConn, error) {
	var conn net.PacketConn
	err := doInNetNS(s.ns, func() error {
		var err error
		conn, err = s.listenFn(ifi, etherType)
		return err
	})
	return conn, err
}

func (s *nlSystem) watchLinks(ctx context.Context, out chan map[int]linkInfo) {
	for {
		err := s.watchOnce(ctx, out)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("link updates failed, subscribing again", "error", err, "delay", resubscribeDelay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(resubscribeDelay):
		}
	}
}

// watchOnce subscribes to link updates, lists the links and follows the
// updates until ctx is done or the subscription fails. Listing after
// subscribing loses no change: one made during the listing is also queued
// as an update.
func (s *nlSystem) watchOnce(ctx context.Context, out chan map[int]linkInfo) error {
	updates := make(chan netlink.LinkUpdate, 256)
	done := make(chan struct{})
	errc := make(chan error, 1)
	opts := netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
		ReceiveBufferSize: 1 << 20,
	}
	if s.ns.IsOpen() {
		ns := s.ns
		opts.Namespace = &ns
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	defer func() {
		close(done)
		for range updates { // Until the subscription's goroutine ends.
		}
	}()

	links, err := s.list()
	if err != nil {
		return err
	}
	offer(out, clone(links))

	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				select {
				case err := <-errc:
					return fmt.Errorf("receive link updates: %w", err)
				default:
					return errors.New("receive link updates: subscription closed")
				}
			}
			if u.IfInfomsg.Family != unix.AF_UNSPEC {
				continue // AF_BRIDGE port events: not about the link itself.
			}
			if u.Header.Type == unix.RTM_DELLINK {
				delete(links, int(u.IfInfomsg.Index))
			} else {
				l := infoOf(u.Link)
				links[l.Index] = l
			}
			offer(out, clone(links))
		}
	}
}

// list returns the namespace's links by index.
func (s *nlSystem) list() (map[int]linkInfo, error) {
	h, err := netlink.NewHandleAt(s.ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	defer h.Close()
	links, err := netlinksafe.Dump(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	m := make(map[int]linkInfo, len(links))
	for _, l := range links {
		info := infoOf(l)
		m[info.Index] = info
	}
	return m, nil
}

// infoOf returns what a Responder needs to know about l.
func infoOf(l netlink.Link) linkInfo {
	a := l.Attrs()
	return linkInfo{
		Index:    a.Index,
		Name:     a.Name,
		MAC:      append(net.HardwareAddr(nil), a.HardwareAddr...),
		MTU:      a.MTU,
		Up:       a.RawFlags&unix.IFF_UP != 0 && a.RawFlags&unix.IFF_RUNNING != 0,
		Ethernet: a.EncapType == "ether" && len(a.HardwareAddr) == 6 && a.RawFlags&unix.IFF_LOOPBACK == 0,
	}
}

func clone(m map[int]linkInfo) map[int]linkInfo {
	c := make(map[int]linkInfo, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// offer puts v into ch, which has a buffer of one, replacing a value that
// was not received yet. There must be only one sender.
func offer[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
