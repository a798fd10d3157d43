// Package netlinksafe retries netlink dumps that the kernel interrupted, as
// containernetworking's netlinksafe does, for every block that reconciles
// kernel state against a dump.
package netlinksafe

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// MaxAttempts bounds the attempts of [Dump].
const MaxAttempts = 10

// Dump calls dump until it returns something other than
// netlink.ErrDumpInterrupted, at most MaxAttempts times. An interrupted dump
// (the table changed while it was read) may be incomplete: reconciling
// against it could delete live entries, so its partial result is never
// returned.
func Dump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range MaxAttempts {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	var zero T
	return zero, fmt.Errorf("retry interrupted netlink dump %d times: %w", MaxAttempts, err)
}
