package etcdelect

import (
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Defaults of [Config]: the seed values of Cilium's L2 announcements.
const (
	DefaultLeaseDuration = 3 * time.Second
	DefaultRenewDeadline = time.Second
	DefaultRetryPeriod   = 200 * time.Millisecond
	DefaultPrefix        = "/netblocks/l2announce/"
)

// Config configures an [Elector]. Its zero value has Cilium's timing and
// names the node by its host name.
type Config struct {
	// Name identifies this node among the candidates; every node needs a
	// different one. Default: the host name.
	Name string
	// Prefix is where the leases live in etcd. Default DefaultPrefix.
	Prefix string

	// LeaseDuration is how long a holder that stopped renewing keeps its
	// lease: candidates take a lease over once they have seen no renewal
	// for this long, and etcd deletes it after this long (rounded up to
	// whole seconds, or etcd's minimum TTL if that is longer). Default 3s.
	LeaseDuration time.Duration
	// RenewDeadline is how long after the start of its last successful
	// renewal a holder keeps answering: it must be shorter than
	// LeaseDuration, and the difference is the margin that keeps two
	// nodes from answering at once (see the package documentation).
	// Default 1s.
	RenewDeadline time.Duration
	// RetryPeriod is the interval of renewals, and of a candidate's
	// attempts to acquire. It must be shorter than RenewDeadline. Default
	// 200ms.
	RetryPeriod time.Duration
	// RankDelay is how long a candidate waits, per candidate ranked before
	// it, before it tries to acquire a free lease (see "Spreading VIPs" in
	// the package documentation). Default: RetryPeriod; negative: no
	// delay, first come first served.
	RankDelay time.Duration

	// Logger receives acquisitions, losses and errors. Default: no
	// logging.
	Logger *slog.Logger
}

// withDefaults returns cfg with its defaults filled in, or an error naming
// an invalid field.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return cfg, fmt.Errorf("get host name for Config.Name: %w", err)
		}
		cfg.Name = h
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.RenewDeadline == 0 {
		cfg.RenewDeadline = DefaultRenewDeadline
	}
	if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = DefaultRetryPeriod
	}
	switch {
	case cfg.RankDelay == 0:
		cfg.RankDelay = cfg.RetryPeriod
	case cfg.RankDelay < 0:
		cfg.RankDelay = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryPeriod <= 0 || cfg.RenewDeadline <= cfg.RetryPeriod || cfg.LeaseDuration <= cfg.RenewDeadline {
		return cfg, fmt.Errorf("check config: need 0 < RetryPeriod (%v) < RenewDeadline (%v) < LeaseDuration (%v)",
			cfg.RetryPeriod, cfg.RenewDeadline, cfg.LeaseDuration)
	}
	return cfg, nil
}
