package etcdelect

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netblocks/netblocks/l2announce"
)

// Elector is an [l2announce.Elector] on etcd: for each Key, at most one
// node among those that campaign holds it.
type Elector struct {
	client *clientv3.Client
	cfg    Config
	log    *slog.Logger
	ttl    int64 // Seconds.
}

var _ l2announce.Elector = (*Elector)(nil)

// New returns an Elector that keeps its leases in etcd through client, or an
// error naming an invalid field of cfg. The client stays the caller's: close
// it after every campaign has ended.
func New(client *clientv3.Client, cfg Config) (*Elector, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Elector{
		client: client,
		cfg:    cfg,
		log:    cfg.Logger.With("node", cfg.Name),
		ttl:    int64(math.Ceil(cfg.LeaseDuration.Seconds())),
	}, nil
}

// Name returns the name this Elector campaigns under.
func (e *Elector) Name() string { return e.cfg.Name }

// Campaign competes for key until ctx is done, as [l2announce.Elector]
// requires, and returns ctx's error. Errors from etcd do not end it: it
// logs them and starts over after RetryPeriod, never answering longer than
// RenewDeadline after its last successful renewal.
func (e *Elector) Campaign(ctx context.Context, key l2announce.Key, hold func(until time.Time)) error {
	c := &campaign{
		e:         e,
		key:       key,
		hold:      hold,
		log:       e.log.With("key", key.String()),
		holderKey: e.holderKey(key),
		prefix:    e.keyPrefix(key),
	}
	for {
		err := c.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Warn("campaign session ended, starting another", "error", err, "delay", e.cfg.RetryPeriod)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(e.cfg.RetryPeriod):
		}
	}
}

// Holder returns the name of the node that holds key, as etcd records it,
// or an error wrapping os.ErrNotExist if none does. A holder that stopped
// renewing is still returned until another node takes the lease over or
// etcd deletes it.
func (e *Elector) Holder(ctx context.Context, key l2announce.Key) (string, error) {
	resp, err := e.client.Get(ctx, e.holderKey(key))
	if err != nil {
		return "", fmt.Errorf("get holder of %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("get holder of %s: %w", key, os.ErrNotExist)
	}
	return string(resp.Kvs[0].Value), nil
}

// Candidates returns the names of the nodes that campaign for key, sorted,
// as etcd records them: a node that died stays until its etcd lease
// expires.
func (e *Elector) Candidates(ctx context.Context, key l2announce.Key) ([]string, error) {
	prefix := e.keyPrefix(key) + candidatesInfix
	resp, err := e.client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("get candidates for %s: %w", key, err)
	}
	names := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), prefix)
		if n, err := url.PathUnescape(name); err == nil {
			name = n
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names, nil
}

// Key layout, under Prefix, for one Key:
//
//	<segment>/<vip>/holder              the holder's name, with its lease
//	<segment>/<vip>/candidates/<name>   one per candidate, with its lease
//
// Segment and name are path-escaped.
const (
	holderSuffix    = "holder"
	candidatesInfix = "candidates/"
)

func (e *Elector) keyPrefix(key l2announce.Key) string {
	return e.cfg.Prefix + url.PathEscape(key.Segment) + "/" + key.VIP.String() + "/"
}

func (e *Elector) holderKey(key l2announce.Key) string {
	return e.keyPrefix(key) + holderSuffix
}

func (e *Elector) candidateKey(key l2announce.Key) string {
	return e.keyPrefix(key) + candidatesInfix + url.PathEscape(e.cfg.Name)
}
