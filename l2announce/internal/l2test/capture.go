package l2test

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/testutil"
)

// Frame is an ARP frame a [Capture] saw arrive at a port of the bridge.
type Frame struct {
	At   time.Time
	Port string // The bridge port it arrived on.
	Op   uint16 // layers.ARPRequest or layers.ARPReply.
	SHA  net.HardwareAddr
	SPA  netip.Addr
	TPA  netip.Addr
	// ID is the probe identifier of a reply to a [Client.Probe], or 0.
	ID uint32
}

// Announcement reports whether f is a gratuitous ARP.
func (f Frame) Announcement() bool { return f.SPA == f.TPA }

// Capture records every ARP frame that arrives from outside at a port of the
// bridge namespace it runs in, in the order of arrival, from one packet
// socket bound to all of the namespace's interfaces and protocols.
type Capture struct {
	fd    int
	names map[int]string

	mu     sync.Mutex
	frames []Frame
	stop   chan struct{}
	done   chan struct{}
}

// StartCapture starts capturing in ns (the switch of a testutil.Topology)
// the frames that arrive at every interface but skip, such as the bridge
// itself; tb.Cleanup stops it.
func StartCapture(tb testing.TB, ns *testutil.NetNS, skip ...string) *Capture {
	tb.Helper()
	links, err := ns.Netlink().LinkList()
	if err != nil {
		tb.Fatalf("list links of %s: %v", ns.Name(), err)
	}
	c := &Capture{names: make(map[int]string), stop: make(chan struct{}), done: make(chan struct{})}
	for _, l := range links {
		if !slices.Contains(skip, l.Attrs().Name) {
			c.names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	err = ns.Do(func() error {
		// Only ETH_P_ALL sockets see the frames that arrive at a bridge
		// port: the bridge takes them before protocol handlers run.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		tb.Fatalf("open capture in %s: %v", ns.Name(), err)
	}
	go c.read()
	tb.Cleanup(c.Stop)
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer close(c.done)
	defer unix.Close(c.fd)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		at := time.Now()
		sll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || sll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		port, ok := c.names[sll.Ifindex]
		if !ok {
			continue
		}
		p := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.NoCopy)
		a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP)
		if !ok {
			continue
		}
		spa, ok1 := netip.AddrFromSlice(a.SourceProtAddress)
		tpa, ok2 := netip.AddrFromSlice(a.DstProtAddress)
		if !ok1 || !ok2 {
			continue
		}
		f := Frame{At: at, Port: port, Op: a.Operation, SHA: slices.Clone(net.HardwareAddr(a.SourceHwAddress)), SPA: spa, TPA: tpa}
		if a.Operation == layers.ARPReply && spa != tpa {
			f.ID = probeID(tpa)
		}
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	}
}

// Frames returns the frames captured so far.
func (c *Capture) Frames() []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.frames)
}

// Stop stops the capture; the frames stay.
func (c *Capture) Stop() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}
