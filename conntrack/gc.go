package conntrack

import (
	"context"
	"fmt"
	"time"
)

// GC deletes the entries that expired before now, with batch lookups and
// batch deletes, and returns how many it deleted. Pass time.Now() for a real
// collection; a later time collects what will have expired by then.
//
// An entry that a packet refreshes between GC's read and its delete is
// deleted all the same; the connection's next packet creates it again.
func (t *Table) GC(now time.Time) (int, error) {
	clk, err := readClock()
	if err != nil {
		return 0, fmt.Errorf("conntrack: %w", err)
	}
	limit := clk.monotonic(now)
	return t.deleteWhere(func(e *ctEntry) bool { return e.Expires < limit })
}

// RunGC runs GC until ctx is done, then returns ctx's error. The first run is
// after Config.GCInterval; each run then sets the next interval from the share
// of the table it deleted, as Cilium does: over a quarter shortens the
// interval in proportion (down to GCMinInterval), under 5% lengthens it by half
// (up to GCMaxInterval). Errors are logged to Config.Logger and retried at the
// next run.
func (t *Table) RunGC(ctx context.Context) error {
	interval := t.cfg.GCInterval
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		start := time.Now()
		deleted, err := t.GC(start)
		if err != nil {
			t.logger.Error("conntrack GC failed", "error", err)
		}
		ratio := float64(deleted) / float64(t.cfg.MaxEntries)
		next := nextGCInterval(interval, ratio, t.cfg.GCMinInterval, t.cfg.GCMaxInterval)
		t.logger.Info("conntrack GC", "deleted", deleted, "ratio", ratio, "took", time.Since(start), "next", next)
		interval = next
		timer.Reset(interval)
	}
}

// nextGCInterval adapts the GC interval to the share of the table (ratio,
// 0..1) that the last run deleted.
func nextGCInterval(prev time.Duration, ratio float64, lo, hi time.Duration) time.Duration {
	next := prev
	switch {
	case ratio > 0.25:
		// Many expired: shorten in proportion, 25% → 0.75x, 90% or more → 0.1x.
		next = time.Duration(float64(prev) * (1 - min(ratio, 0.9)))
	case ratio < 0.05:
		next = time.Duration(float64(prev) * 1.5)
	}
	return min(max(next.Round(time.Second), lo), hi)
}
