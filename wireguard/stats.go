package wireguard

import (
	"net/netip"
	"slices"
	"time"
)

// PeerStats is what a device knows about one peer.
type PeerStats struct {
	// PublicKey identifies the peer.
	PublicKey Key
	// Endpoint is where the device sends the peer's packets: the one
	// configured, or the address the peer's packets last came from. Zero
	// if neither.
	Endpoint netip.AddrPort
	// AllowedIPs are the peer's allowed IPs, sorted.
	AllowedIPs []netip.Prefix
	// RxBytes and TxBytes count the bytes received from and sent to the
	// peer, WireGuard's headers and handshakes included, since the peer was
	// added.
	RxBytes, TxBytes uint64
	// LastHandshake is when the last handshake with the peer completed; zero
	// if none has.
	LastHandshake time.Time
}

// Stats returns the device's peers and their counters, sorted by public key.
func (d *Device) Stats() ([]PeerStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.be == nil {
		return nil, errClosed("get stats")
	}
	s, err := d.be.state()
	if err != nil {
		return nil, err
	}
	out := make([]PeerStats, 0, len(s.peers))
	for _, p := range s.peers {
		out = append(out, PeerStats{
			PublicKey:     p.publicKey,
			Endpoint:      p.endpoint,
			AllowedIPs:    sortPrefixes(slices.Clone(p.allowedIPs)),
			RxBytes:       p.rxBytes,
			TxBytes:       p.txBytes,
			LastHandshake: p.lastHandshake,
		})
	}
	slices.SortFunc(out, func(a, b PeerStats) int { return slices.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return out, nil
}
