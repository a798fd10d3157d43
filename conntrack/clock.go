package conntrack

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// clock converts between the kernel's CLOCK_MONOTONIC nanoseconds, which the
// BPF side stamps entries with (bpf_ktime_get_ns), and wall-clock time. It is
// read once per operation, so all entries of one dump share one conversion.
type clock struct {
	now  time.Time // wall time when read
	mono int64     // CLOCK_MONOTONIC at the same moment, in ns
}

func readClock() (clock, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return clock{}, fmt.Errorf("read monotonic clock: %w", err)
	}
	return clock{now: time.Now(), mono: ts.Nano()}, nil
}

// wall converts a monotonic timestamp to wall time.
func (c clock) wall(mono uint64) time.Time {
	return c.now.Add(time.Duration(int64(mono) - c.mono))
}

// monotonic converts wall time to a monotonic timestamp (0 if before boot).
func (c clock) monotonic(t time.Time) uint64 {
	v := c.mono + int64(t.Sub(c.now))
	if v < 0 {
		return 0
	}
	return uint64(v)
}
