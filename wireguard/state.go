package wireguard

import (
	"net/netip"
	"time"
)

// The backends speak these types: the configuration a device has, and a
// change to it. They mirror wgctrl's wgtypes with net/netip values.

// devState is what a device reports about itself.
type devState struct {
	privateKey Key
	listenPort uint16
	peers      []peerState
}

// peerState is one peer as the device reports it.
type peerState struct {
	publicKey     Key
	endpoint      netip.AddrPort // invalid: none known
	keepalive     time.Duration
	allowedIPs    []netip.Prefix
	rxBytes       uint64
	txBytes       uint64
	lastHandshake time.Time // zero: none yet
}

// devChange is a change to a device. Zero fields change nothing.
type devChange struct {
	privateKey *Key
	listenPort uint16
	peers      []peerChange
}

// peerChange adds, updates or removes one peer. An update replaces the peer's
// keepalive and allowed IPs, and its endpoint when one is given; with
// keepaliveOnly, it sets the keepalive of an existing peer and nothing else.
type peerChange struct {
	publicKey     Key
	remove        bool
	keepaliveOnly bool
	endpoint      netip.AddrPort // invalid: leave as is
	keepalive     time.Duration
	allowedIPs    []netip.Prefix
}
