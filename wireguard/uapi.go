package wireguard

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// The cross-platform userspace API of WireGuard
// (https://www.wireguard.com/xplatform/), spoken in process with the embedded
// device: "key=value" lines, keys in hexadecimal.

// encodeChange returns the body of a "set=1" operation that applies c.
func encodeChange(c devChange) string {
	var sb strings.Builder
	line := func(key, value string) {
		sb.WriteString(key)
		sb.WriteByte('=')
		sb.WriteString(value)
		sb.WriteByte('\n')
	}
	if c.privateKey != nil {
		line("private_key", c.privateKey.hex())
	}
	if c.listenPort != 0 {
		line("listen_port", strconv.Itoa(int(c.listenPort)))
	}
	for _, p := range c.peers {
		line("public_key", p.publicKey.hex())
		if p.remove {
			line("remove", "true")
			continue
		}
		if p.keepaliveOnly {
			line("update_only", "true")
			line("persistent_keepalive_interval", strconv.Itoa(int(p.keepalive/time.Second)))
			continue
		}
		if p.endpoint.IsValid() {
			line("endpoint", p.endpoint.String())
		}
		line("persistent_keepalive_interval", strconv.Itoa(int(p.keepalive/time.Second)))
		line("replace_allowed_ips", "true")
		for _, ip := range p.allowedIPs {
			line("allowed_ip", ip.String())
		}
	}
	return sb.String()
}

// parseState parses the answer to a "get=1" operation. A final "errno=0" line
// and blank lines are allowed (wireguard-go's IpcGetOperation leaves them
// out); any other errno is an error.
func parseState(r io.Reader) (devState, error) {
	var p stateParser
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if text == "" {
			continue
		}
		key, value, ok := strings.Cut(text, "=")
		if !ok {
			return devState{}, fmt.Errorf("parse UAPI line %d: no '=' in %q", n, text)
		}
		if err := p.line(key, value); err != nil {
			return devState{}, fmt.Errorf("parse UAPI line %d (%s): %w", n, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return devState{}, fmt.Errorf("read UAPI answer: %w", err)
	}
	p.finishPeer()
	return p.s, nil
}

// stateParser accumulates a devState line by line.
type stateParser struct {
	s devState
	// peer is the index in s.peers of the peer being parsed, once started
	// (after the first public_key line); sec and nsec are its handshake
	// time so far.
	peer      int
	started   bool
	sec, nsec int64
}

// finishPeer completes the peer being parsed.
func (p *stateParser) finishPeer() {
	if p.started && (p.sec != 0 || p.nsec != 0) {
		p.s.peers[p.peer].lastHandshake = time.Unix(p.sec, p.nsec)
	}
	p.sec, p.nsec = 0, 0
}

// line applies one "key=value" line.
func (p *stateParser) line(key, value string) error {
	if key == "errno" {
		if value != "0" {
			return fmt.Errorf("device answered errno %s", value)
		}
		return nil
	}
	if key == "public_key" {
		p.finishPeer()
		k, err := parseHexKey(value)
		if err != nil {
			return err
		}
		p.s.peers = append(p.s.peers, peerState{publicKey: k})
		p.peer, p.started = len(p.s.peers)-1, true
		return nil
	}

	var err error
	if !p.started {
		switch key {
		case "private_key":
			p.s.privateKey, err = parseHexKey(value)
		case "listen_port":
			var port uint64
			port, err = strconv.ParseUint(value, 10, 16)
			p.s.listenPort = uint16(port)
		}
		return err // fwmark and anything newer: ignored
	}

	peer := &p.s.peers[p.peer]
	switch key {
	case "endpoint":
		peer.endpoint, err = netip.ParseAddrPort(value)
	case "persistent_keepalive_interval":
		var secs uint64
		secs, err = strconv.ParseUint(value, 10, 16)
		peer.keepalive = time.Duration(secs) * time.Second
	case "allowed_ip":
		var ip netip.Prefix
		ip, err = netip.ParsePrefix(value)
		peer.allowedIPs = append(peer.allowedIPs, ip)
	case "rx_bytes":
		peer.rxBytes, err = strconv.ParseUint(value, 10, 64)
	case "tx_bytes":
		peer.txBytes, err = strconv.ParseUint(value, 10, 64)
	case "last_handshake_time_sec":
		p.sec, err = strconv.ParseInt(value, 10, 64)
	case "last_handshake_time_nsec":
		p.nsec, err = strconv.ParseInt(value, 10, 64)
	}
	return err // preshared_key, protocol_version and anything newer: ignored
}

// parseHexKey parses a key in hexadecimal.
func parseHexKey(s string) (Key, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return Key{}, fmt.Errorf("key is not hexadecimal: %w", err)
	}
	if len(b) != KeyLen {
		return Key{}, fmt.Errorf("key is %d bytes long, not %d", len(b), KeyLen)
	}
	return Key(b), nil
}
