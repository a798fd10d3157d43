package l2announce

import (
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"time"
)

// Defaults of [Config].
const (
	DefaultGratuitousCount    = 3
	DefaultGratuitousInterval = 100 * time.Millisecond
	DefaultMaxReplyRate       = 100
)

// Config configures a [Responder]. Its zero value announces on every
// Ethernet interface, with a [LocalElector].
type Config struct {
	// Interfaces are regular expressions (RE2) of the names of the
	// interfaces to announce on, matched anywhere in the name as Cilium's
	// L2 announcement policies match them: "^ens[0-9]+" selects ens3 and
	// ens192. Default (empty): every interface with an Ethernet address,
	// except loopback.
	Interfaces []string
	// Segment names the L2 segment behind the interface called iface: the
	// Segment of the [Key]s nodes compete for. Default: the interface's
	// name, so nodes must give the interfaces on one LAN the same name (or
	// map them to one Segment), or every node would answer there. Interfaces
	// of one node that share a segment are announced on together, under
	// one lease.
	Segment func(iface string) string
	// Eligible reports whether this node may announce key: the policy that
	// decides which nodes compete for which VIPs (Cilium's service and
	// node selectors). Default: every key.
	Eligible func(key Key) bool
	// Elector elects the node that answers for each Key. Default:
	// [LocalElector], which makes this node answer for every Key.
	Elector Elector

	// GratuitousCount is how many announcements (a gratuitous ARP request
	// and reply for IPv4, an unsolicited neighbour advertisement for IPv6)
	// the Responder sends on each interface when it takes a VIP over, or
	// when an interface of a held segment comes up. Default 3; negative:
	// none.
	GratuitousCount int
	// GratuitousInterval is the pause between those announcements.
	// Default 100ms.
	GratuitousInterval time.Duration
	// RefreshInterval, when positive, repeats one announcement of every
	// held VIP at this interval, so that switches whose forwarding entries
	// aged out and neighbours that missed a takeover learn the holder again.
	// Default 0: no refresh.
	RefreshInterval time.Duration
	// MaxReplyRate limits the replies per second to one requester (by
	// Ethernet source) on one interface; requests beyond it get no reply.
	// Default 100; negative: no limit.
	MaxReplyRate int

	// NetNS is the path of the network namespace whose interfaces the
	// Responder announces on, such as /var/run/netns/node1. Its sockets
	// are opened there, and it follows the interfaces there through a
	// netlink subscription bound to it; no thread of the caller changes
	// namespace. Default: the namespace of the calling process.
	NetNS string
	// Listen opens the connection on which the Responder reads and writes
	// Ethernet frames of etherType (0x0806 for ARP, 0x86dd for IPv6) on
	// ifi: whole frames, Ethernet header included, written to a
	// *github.com/mdlayher/packet.Addr, as mdlayher/packet's Raw sockets
	// read and write them. It runs in NetNS. Default: an AF_PACKET socket
	// that ignores the host's own outgoing frames, with, for IPv6, a BPF
	// filter that keeps only neighbour discovery.
	Listen func(ifi *net.Interface, etherType uint16) (net.PacketConn, error)

	// Logger receives takeovers, losses, conflicts and errors. Default: no
	// logging.
	Logger *slog.Logger
}

// withDefaults returns cfg with its defaults filled in and its interface
// patterns compiled, or an error naming an invalid field.
func (cfg Config) withDefaults() (Config, []*regexp.Regexp, error) {
	var patterns []*regexp.Regexp
	for _, p := range cfg.Interfaces {
		re, err := regexp.Compile(p)
		if err != nil {
			return cfg, nil, fmt.Errorf("compile interface pattern %q: %w", p, err)
		}
		patterns = append(patterns, re)
	}
	if cfg.Segment == nil {
		cfg.Segment = func(iface string) string { return iface }
	}
	if cfg.Eligible == nil {
		cfg.Eligible = func(Key) bool { return true }
	}
	if cfg.Elector == nil {
		cfg.Elector = LocalElector{}
	}
	switch {
	case cfg.GratuitousCount == 0:
		cfg.GratuitousCount = DefaultGratuitousCount
	case cfg.GratuitousCount < 0:
		cfg.GratuitousCount = 0
	}
	switch {
	case cfg.GratuitousInterval == 0:
		cfg.GratuitousInterval = DefaultGratuitousInterval
	case cfg.GratuitousInterval < 0:
		return cfg, nil, fmt.Errorf("check config: GratuitousInterval %v is negative", cfg.GratuitousInterval)
	}
	if cfg.RefreshInterval < 0 {
		return cfg, nil, fmt.Errorf("check config: RefreshInterval %v is negative", cfg.RefreshInterval)
	}
	if cfg.MaxReplyRate == 0 {
		cfg.MaxReplyRate = DefaultMaxReplyRate
	}
	if cfg.Listen == nil {
		cfg.Listen = listenPacket
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, patterns, nil
}
