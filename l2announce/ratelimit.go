package l2announce

import (
	"net"
	"sync"
	"time"
)

// maxRequesters bounds how many requesters a limiter counts apart in one
// window; requesters beyond it share one count, so a flood from spoofed
// addresses costs bounded memory and gets a bounded number of replies.
const maxRequesters = 4096

// limiter limits replies per requester (Ethernet source) in fixed windows of
// a second. It is safe for concurrent use.
type limiter struct {
	rate int // Replies per requester per second; 0 or less: no limit.

	mu       sync.Mutex
	window   time.Time
	counts   map[[6]byte]int
	overflow int
}

func newLimiter(rate int) *limiter {
	return &limiter{rate: rate, counts: make(map[[6]byte]int)}
}

// allow reports whether a reply to requester may be sent at now, and counts
// it if so.
func (l *limiter) allow(now time.Time, requester net.HardwareAddr) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()

	if now.Sub(l.window) >= time.Second || now.Before(l.window) {
		l.window = now
		clear(l.counts)
		l.overflow = 0
	}
	var key [6]byte
	copy(key[:], requester)
	n, ok := l.counts[key]
	if !ok && len(l.counts) >= maxRequesters {
		if l.overflow >= l.rate {
			return false
		}
		l.overflow++
		return true
	}
	if n >= l.rate {
		return false
	}
	l.counts[key] = n + 1
	return true
}
