package l2announce

import (
	"net"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := newLimiter(2)
	now := time.Now()
	mac := func(i int) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)} }

	for i, want := range []bool{true, true, false, false} {
		if got := l.allow(now, mac(0)); got != want {
			t.Errorf("request %d: allow = %v, want %v", i, got, want)
		}
	}
	if !l.allow(now, mac(1)) {
		t.Error("another requester refused")
	}
	if !l.allow(now.Add(time.Second), mac(0)) {
		t.Error("refused in the next window")
	}

	// Spoofed requesters beyond maxRequesters share one count.
	now = now.Add(time.Hour)
	for i := range maxRequesters {
		l.allow(now, mac(i))
	}
	allowed := 0
	for i := range 1000 {
		if l.allow(now, mac(maxRequesters+i)) {
			allowed++
		}
	}
	if allowed != 2 {
		t.Errorf("%d of 1000 untracked requesters answered, want 2", allowed)
	}
	if len(l.counts) > maxRequesters {
		t.Errorf("%d requesters tracked", len(l.counts))
	}

	if u := newLimiter(-1); !u.allow(now, mac(0)) || !u.allow(now, mac(0)) {
		t.Error("a limiter without a rate refused")
	}
}
