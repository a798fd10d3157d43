package wireguard

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// maxKeepalive is the longest persistent keepalive interval WireGuard takes:
// the protocol carries it in seconds, in 16 bits.
const maxKeepalive = 65535 * time.Second

// Peer is another node, as [Device.SetPeers] takes it.
type Peer struct {
	// PublicKey is the peer's public key, the one it publishes. Required.
	PublicKey Key

	// Endpoint is the peer's address and UDP port on the underlay. Zero
	// means unknown: the device learns it from the peer's first handshake
	// and cannot send to the peer before. Once the device knows an
	// endpoint, SetPeers with a zero Endpoint keeps it.
	Endpoint netip.AddrPort

	// AllowedIPs are the addresses the peer may send from through the
	// tunnel, and that are sent to it: its pod CIDRs, and optionally its
	// node address. SetPeers routes each through the device, except one
	// that contains a peer's Endpoint (routing it would send WireGuard's own
	// packets into the tunnel); such an allowed IP still admits the peer's
	// packets from that address. Prefixes must not have host bits set, and
	// no prefix may be given to two peers.
	AllowedIPs []netip.Prefix

	// PersistentKeepalive, if not zero, has the device send an empty packet
	// to the peer this often when nothing else goes, to hold NAT and
	// firewall state open, and makes the device handshake with the peer as
	// soon as it is configured. WireGuard counts whole seconds: 1 s to
	// 65535 s, fractions dropped.
	PersistentKeepalive time.Duration
}

// checkPeers returns peers checked and normalized (IPv4-mapped endpoints
// unmapped, allowed IPs sorted and deduplicated, keepalives truncated to whole
// seconds), or an error naming the first problem. own is the device's public
// key.
func checkPeers(peers []Peer, own Key) ([]Peer, error) {
	out := make([]Peer, 0, len(peers))
	byKey := make(map[Key]int, len(peers))
	owner := map[netip.Prefix]Key{}
	for i, p := range peers {
		switch {
		case p.PublicKey.IsZero():
			return nil, fmt.Errorf("check peers: peer %d has no public key", i)
		case p.PublicKey == own:
			return nil, fmt.Errorf("check peers: peer %d has this device's own public key %s", i, own)
		}
		if j, dup := byKey[p.PublicKey]; dup {
			return nil, fmt.Errorf("check peers: peers %d and %d have the same public key %s", j, i, p.PublicKey)
		}
		byKey[p.PublicKey] = i

		if p.Endpoint.IsValid() {
			addr := p.Endpoint.Addr().Unmap()
			switch {
			case p.Endpoint.Port() == 0:
				return nil, fmt.Errorf("check peers: endpoint %s of peer %s has no port", p.Endpoint, p.PublicKey)
			case addr.Zone() != "":
				return nil, fmt.Errorf("check peers: endpoint %s of peer %s has a zone", p.Endpoint, p.PublicKey)
			case addr.IsUnspecified(), addr.IsMulticast():
				return nil, fmt.Errorf("check peers: endpoint %s of peer %s is not a unicast address", p.Endpoint, p.PublicKey)
			}
			p.Endpoint = netip.AddrPortFrom(addr, p.Endpoint.Port())
		}

		switch {
		case p.PersistentKeepalive < 0:
			return nil, fmt.Errorf("check peers: keepalive %v of peer %s is negative", p.PersistentKeepalive, p.PublicKey)
		case p.PersistentKeepalive > 0 && p.PersistentKeepalive < time.Second:
			return nil, fmt.Errorf("check peers: keepalive %v of peer %s is below WireGuard's 1 s resolution", p.PersistentKeepalive, p.PublicKey)
		case p.PersistentKeepalive > maxKeepalive:
			return nil, fmt.Errorf("check peers: keepalive %v of peer %s is above WireGuard's maximum of %v", p.PersistentKeepalive, p.PublicKey, maxKeepalive)
		}
		p.PersistentKeepalive = p.PersistentKeepalive.Truncate(time.Second)

		ips := make([]netip.Prefix, 0, len(p.AllowedIPs))
		for _, ip := range p.AllowedIPs {
			switch {
			case !ip.IsValid():
				return nil, fmt.Errorf("check peers: peer %s has an invalid allowed IP", p.PublicKey)
			case ip.Addr().Is4In6():
				return nil, fmt.Errorf("check peers: allowed IP %s of peer %s is IPv4-mapped; use the IPv4 form", ip, p.PublicKey)
			case ip.Addr().Zone() != "":
				return nil, fmt.Errorf("check peers: allowed IP %s of peer %s has a zone", ip, p.PublicKey)
			case ip != ip.Masked():
				return nil, fmt.Errorf("check peers: allowed IP %s of peer %s has host bits set (%s?)", ip, p.PublicKey, ip.Masked())
			}
			if other, taken := owner[ip]; taken && other != p.PublicKey {
				return nil, fmt.Errorf("check peers: allowed IP %s is given to two peers, %s and %s", ip, other, p.PublicKey)
			}
			owner[ip] = p.PublicKey
			ips = append(ips, ip)
		}
		p.AllowedIPs = sortPrefixes(ips)
		out = append(out, p)
	}
	return out, nil
}

// sortPrefixes sorts ps (IPv4 first, then by address and length) and removes
// duplicates, in place.
func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, comparePrefixes)
	return slices.Compact(ps)
}

// plan is how SetPeers gets from the device's peers to the wanted ones.
type plan struct {
	// change adds, updates and removes peers, touching only those that
	// differ, so that the others keep their sessions and counters.
	change devChange
	// replacements are the peers change adds in the place of one it
	// removes (the same endpoint, or an allowed IP in common): nodes that
	// rotated their keys, most likely. Only those with an endpoint and no
	// keepalive are listed.
	replacements []Key
	// added, updated and removed count the peers change adds, updates and
	// removes.
	added, updated, removed int
}

// planChange returns the plan that turns the peers of cur into want (as
// checkPeers returns it).
func planChange(cur devState, want []Peer) plan {
	var pl plan
	have := make(map[Key]peerState, len(cur.peers))
	for _, p := range cur.peers {
		have[p.publicKey] = p
	}
	wanted := make(map[Key]bool, len(want))
	for _, p := range want {
		wanted[p.PublicKey] = true
	}

	// Removals first: an allowed IP moving from a leaving peer to a new one
	// must not be taken away from the new one.
	leftEndpoints := map[netip.AddrPort]bool{}
	leftIPs := map[netip.Prefix]bool{}
	for _, p := range cur.peers {
		if wanted[p.publicKey] {
			continue
		}
		pl.change.peers = append(pl.change.peers, peerChange{publicKey: p.publicKey, remove: true})
		pl.removed++
		if p.endpoint.IsValid() {
			leftEndpoints[p.endpoint] = true
		}
		for _, ip := range p.allowedIPs {
			leftIPs[ip] = true
		}
	}
	replaces := func(p Peer) bool {
		if leftEndpoints[p.Endpoint] {
			return true
		}
		for _, ip := range p.AllowedIPs {
			if leftIPs[ip] {
				return true
			}
		}
		return false
	}

	for _, p := range want {
		old, exists := have[p.PublicKey]
		if exists && samePeer(old, p) {
			continue
		}
		pl.change.peers = append(pl.change.peers, peerChange{
			publicKey:  p.PublicKey,
			endpoint:   p.Endpoint,
			keepalive:  p.PersistentKeepalive,
			allowedIPs: p.AllowedIPs,
		})
		if exists {
			pl.updated++
			continue
		}
		pl.added++
		if p.Endpoint.IsValid() && p.PersistentKeepalive == 0 && replaces(p) {
			pl.replacements = append(pl.replacements, p.PublicKey)
		}
	}
	return pl
}

// samePeer reports whether the device's peer have is configured as want (a
// zero endpoint in want matches any).
func samePeer(have peerState, want Peer) bool {
	return (!want.Endpoint.IsValid() || have.endpoint == want.Endpoint) &&
		have.keepalive == want.PersistentKeepalive &&
		slices.Equal(sortPrefixes(slices.Clone(have.allowedIPs)), want.AllowedIPs)
}

// peersOf returns the peers of s as SetPeers takes them, to restore them.
func peersOf(s devState) []Peer {
	out := make([]Peer, 0, len(s.peers))
	for _, p := range s.peers {
		out = append(out, Peer{
			PublicKey:           p.publicKey,
			Endpoint:            p.endpoint,
			AllowedIPs:          sortPrefixes(slices.Clone(p.allowedIPs)),
			PersistentKeepalive: p.keepalive,
		})
	}
	return out
}
