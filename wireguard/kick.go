package wireguard

import "time"

// kickDelay is how long a device waits, after SetPeers has put a peer in the
// place of another, for a handshake with it before it sends one itself.
const kickDelay = 500 * time.Millisecond

// kickKeepalive is the keepalive interval a peer is given for a moment to
// make the device handshake with it at once.
const kickKeepalive = time.Second

// kicker handshakes with peers that replaced others, when no handshake came
// by itself. A node that rotated its key had its handshakes rejected until
// this device learned the new key, and WireGuard retries a handshake only 5 s
// after the last; sending one from here, as soon as the key is known, closes
// the gap. It waits first, because the other node is likely to send one at
// once if it has traffic: two handshakes that cross fail both, and WireGuard
// tries again only 5 s later.
//
// Its methods are called with the device's mu held.
type kicker struct {
	d       *Device
	pending map[Key]*kick
}

// kick is one scheduled handshake.
type kick struct {
	timer *time.Timer
}

// update schedules a kick for each of replacements, and cancels those of
// peers no longer in want.
func (k *kicker) update(want []Peer, replacements []Key) {
	if k.pending == nil {
		k.pending = map[Key]*kick{}
	}
	wanted := make(map[Key]bool, len(want))
	for _, p := range want {
		wanted[p.PublicKey] = true
	}
	for key, kk := range k.pending {
		if !wanted[key] {
			kk.timer.Stop()
			delete(k.pending, key)
		}
	}
	for _, key := range replacements {
		if kk := k.pending[key]; kk != nil {
			kk.timer.Stop()
		}
		kk := &kick{}
		kk.timer = time.AfterFunc(kickDelay, func() { k.fire(key, kk) })
		k.pending[key] = kk
	}
}

// stop cancels every scheduled kick.
func (k *kicker) stop() {
	for key, kk := range k.pending {
		kk.timer.Stop()
		delete(k.pending, key)
	}
}

// fire sends a handshake to the peer with key if kk is still its pending
// kick and the peer is still there, has had no handshake, has an endpoint and
// no keepalive (which sends handshakes by itself). It gives the peer a
// keepalive, which WireGuard answers by sending a keepalive, and so a
// handshake, at once, and takes it away again.
func (k *kicker) fire(key Key, kk *kick) {
	d := k.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if k.pending[key] != kk {
		return // cancelled or replaced, or the device closed, while this waited for mu
	}
	delete(k.pending, key)

	s, err := d.be.state()
	if err != nil {
		d.log.Warn("handshake with replacing peer", "peer", key, "error", err)
		return
	}
	i := -1
	for j, p := range s.peers {
		if p.publicKey == key {
			i = j
		}
	}
	if i < 0 || !s.peers[i].lastHandshake.IsZero() || s.peers[i].keepalive != 0 || !s.peers[i].endpoint.IsValid() {
		return
	}
	for _, keepalive := range []time.Duration{kickKeepalive, 0} {
		c := devChange{peers: []peerChange{{publicKey: key, keepaliveOnly: true, keepalive: keepalive}}}
		if err := d.be.configure(c); err != nil {
			d.log.Warn("handshake with replacing peer", "peer", key, "error", err)
			return
		}
	}
	d.log.Info("sent handshake to peer that replaced another", "peer", key)
}
