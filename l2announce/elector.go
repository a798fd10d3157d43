package l2announce

import (
	"context"
	"time"
)

// An Elector decides which node holds each [Key], and so which node answers
// for a VIP on a segment. [LocalElector] makes every node the holder; package
// l2announce/etcdelect elects one node per Key through etcd.
type Elector interface {
	// Campaign competes for key until ctx is done, then gives the lease up
	// (if it holds it) and returns ctx's error. It may return earlier with
	// another error, after which the caller may campaign again.
	//
	// Campaign reports the node's right to answer for key through hold,
	// called from one goroutine at a time: hold(until) with a non-zero time
	// means the node may answer until that moment (it calls hold again to
	// extend it); hold(time.Time{}) means it may not answer from now on.
	// The holder keeps answering only while the current time is before the
	// last until, so an Elector whose goroutine stalls still stops the
	// answers in time. If it held key, Campaign calls hold(time.Time{})
	// before it releases the lease and before it returns. hold must not
	// block.
	Campaign(ctx context.Context, key Key, hold func(until time.Time)) error
}

// forever is how long a [LocalElector] lets its node answer: long enough never
// to end while a process runs.
const forever = 100 * 365 * 24 * time.Hour

// LocalElector is the [Elector] of a single node: the node holds every Key it
// campaigns for, at once and until the campaign ends. Its zero value is ready
// to use. On a LAN with more than one node announcing the same VIPs, use an
// elector that elects one node per Key, such as package l2announce/etcdelect.
type LocalElector struct{}

var _ Elector = LocalElector{}

// Campaign holds key until ctx is done and returns ctx's error.
func (LocalElector) Campaign(ctx context.Context, key Key, hold func(until time.Time)) error {
	hold(time.Now().Add(forever))
	<-ctx.Done()
	hold(time.Time{})
	return ctx.Err()
}
