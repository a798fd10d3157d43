package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netblocks/netblocks/ipam"
)

const (
	// defaultPrefix and defaultMaxAttempts are the defaults of Config.
	defaultPrefix      = "/netblocks/ipam/"
	defaultMaxAttempts = 64
	// maxTxnOps is how many compares, and separately how many writes, one
	// etcd transaction may hold: etcd's default --max-txn-ops.
	maxTxnOps = 128
	// scanPage is how many keys Scan asks etcd for at a time.
	scanPage = 256
	// minBackoff and maxBackoff bound the pause before a retry.
	minBackoff = time.Millisecond
	maxBackoff = 100 * time.Millisecond
)

// Config configures [New]. The zero value is ready to use.
type Config struct {
	// Prefix is put in front of every key, so that several users can share
	// one etcd cluster. Default "/netblocks/ipam/".
	Prefix string
	// MaxAttempts bounds how often Update runs its function when commits
	// fail because other writers changed what it read. Default 64; a
	// negative value is an error.
	MaxAttempts int
}

// New returns an [ipam.Store] that keeps its data in etcd under cfg.Prefix,
// through client. Store.Close does not close client.
func New(client *clientv3.Client, cfg Config) (ipam.Store, error) {
	if client == nil {
		return nil, errors.New("create etcd store: nil client")
	}
	if cfg.MaxAttempts < 0 {
		return nil, fmt.Errorf("create etcd store: negative MaxAttempts %d", cfg.MaxAttempts)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = defaultPrefix
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = defaultMaxAttempts
	}
	return &store{kv: client.KV, prefix: cfg.Prefix, maxAttempts: cfg.MaxAttempts}, nil
}

var _ ipam.Store = (*store)(nil)

type store struct {
	kv          clientv3.KV
	prefix      string
	maxAttempts int
	closed      atomic.Bool
}

func (s *store) Update(ctx context.Context, fn func(ipam.Txn) error) error {
	for attempt := 1; ; attempt++ {
		if err := s.check(ctx, "update"); err != nil {
			return err
		}
		t := s.newTxn(ctx, false)
		if err := fn(t); err != nil {
			return err
		}
		if t.err != nil {
			// fn ignored a failed read; its writes may rest on nothing.
			return fmt.Errorf("update: %w", t.err)
		}
		ok, err := t.commit()
		if err != nil {
			return fmt.Errorf("update: %w", err)
		}
		if ok {
			return nil
		}
		if attempt >= s.maxAttempts {
			return fmt.Errorf("update: commit failed in all %d attempts: keys read kept changing", attempt)
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return fmt.Errorf("update: %w", err)
		}
	}
}

func (s *store) View(ctx context.Context, fn func(ipam.Txn) error) error {
	if err := s.check(ctx, "view"); err != nil {
		return err
	}
	t := s.newTxn(ctx, true)
	if err := fn(t); err != nil {
		return err
	}
	if t.err != nil {
		return fmt.Errorf("view: %w", t.err)
	}
	return nil
}

func (s *store) Close() error {
	s.closed.Store(true)
	return nil
}

// check returns why a transaction must not start.
func (s *store) check(ctx context.Context, op string) error {
	if s.closed.Load() {
		return fmt.Errorf("%s: %w", op, ipam.ErrStoreClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func (s *store) newTxn(ctx context.Context, readOnly bool) *txn {
	t := &txn{s: s, ctx: ctx, readOnly: readOnly, gets: map[string]read{}}
	if !readOnly {
		t.writes = map[string][]byte{}
	}
	return t
}

// backoff returns a random pause before attempt+1, growing with attempt.
func backoff(attempt int) time.Duration {
	d := maxBackoff
	if attempt < 8 {
		d = min(minBackoff<<attempt, maxBackoff)
	}
	return d/2 + rand.N(d/2)
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// A read is what Get saw of a key in etcd.
type read struct {
	value  []byte
	ok     bool
	modRev int64 // 0 if the key did not exist
}

// A txn is one attempt of an Update, or a View. It reads etcd at one
// revision, fixed by its first read, and buffers its writes.
type txn struct {
	s        *store
	ctx      context.Context
	readOnly bool
	rev      int64             // revision of all reads; 0 before the first
	gets     map[string]read   // keys read with Get, guarded at commit
	writes   map[string][]byte // buffered writes; nil value: delete
	err      error             // first failed read
}

var _ ipam.Txn = (*txn)(nil)

func (t *txn) Get(key string) ([]byte, bool, error) {
	if v, ok := t.writes[key]; ok {
		return v, v != nil, nil
	}
	if r, ok := t.gets[key]; ok {
		return r.value, r.ok, nil
	}
	resp, err := t.s.kv.Get(t.ctx, t.s.prefix+key, t.revOpts()...)
	if err != nil {
		return nil, false, t.fail(fmt.Errorf("get %q: %w", key, err))
	}
	t.fixRev(resp.Header.Revision)
	var r read
	if len(resp.Kvs) > 0 {
		kv := resp.Kvs[0]
		r = read{value: nonNil(kv.Value), ok: true, modRev: kv.ModRevision}
	}
	t.gets[key] = r
	return r.value, r.ok, nil
}

func (t *txn) Put(key string, value []byte) error {
	if t.readOnly {
		return fmt.Errorf("put %q: %w", key, ipam.ErrReadOnly)
	}
	t.writes[key] = nonNil(value)
	return nil
}

func (t *txn) Delete(key string) error {
	if t.readOnly {
		return fmt.Errorf("delete %q: %w", key, ipam.ErrReadOnly)
	}
	t.writes[key] = nil
	return nil
}

func (t *txn) Scan(prefix, start string, fn func(string, []byte) bool) error {
	start = max(start, prefix)

	// The transaction's own writes in the range, merged into etcd's keys.
	var own []string
	for k := range t.writes {
		if strings.HasPrefix(k, prefix) && k >= start {
			own = append(own, k)
		}
	}
	slices.Sort(own)
	// emitOwn reports the own writes before key (all of them if key is
	// empty) and whether to go on.
	emitOwn := func(key string) bool {
		for ; len(own) > 0 && (key == "" || own[0] < key); own = own[1:] {
			if v := t.writes[own[0]]; v != nil && !fn(own[0], v) {
				return false
			}
		}
		return true
	}

	from := t.s.prefix + start
	end := clientv3.GetPrefixRangeEnd(t.s.prefix + prefix)
	for {
		opts := append(t.revOpts(), clientv3.WithRange(end), clientv3.WithLimit(scanPage),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		resp, err := t.s.kv.Get(t.ctx, from, opts...)
		if err != nil {
			return t.fail(fmt.Errorf("scan %q: %w", prefix, err))
		}
		t.fixRev(resp.Header.Revision)
		for _, kv := range resp.Kvs {
			key := strings.TrimPrefix(string(kv.Key), t.s.prefix)
			if !emitOwn(key) {
				return nil
			}
			if len(own) > 0 && own[0] == key {
				// Overwritten or deleted by this transaction.
				v := t.writes[key]
				own = own[1:]
				if v != nil && !fn(key, v) {
					return nil
				}
				continue
			}
			if !fn(key, nonNil(kv.Value)) {
				return nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	emitOwn("")
	return nil
}

// revOpts returns the options that make a read see the transaction's
// revision.
func (t *txn) revOpts() []clientv3.OpOption {
	if t.rev == 0 {
		return nil
	}
	return []clientv3.OpOption{clientv3.WithRev(t.rev)}
}

// fixRev makes rev the revision of all further reads, if it is the first.
func (t *txn) fixRev(rev int64) {
	if t.rev == 0 {
		t.rev = rev
	}
}

// fail records the first failed read and returns err.
func (t *txn) fail(err error) error {
	if t.err == nil {
		t.err = err
	}
	return err
}

// commit writes the buffered writes if no key read with Get has changed
// since, and reports whether it did.
func (t *txn) commit() (bool, error) {
	if len(t.writes) == 0 {
		return true, nil
	}
	if len(t.gets) > maxTxnOps || len(t.writes) > maxTxnOps {
		return false, fmt.Errorf("commit transaction: %d keys read and %d written, etcd allows %d of each",
			len(t.gets), len(t.writes), maxTxnOps)
	}
	cmps := make([]clientv3.Cmp, 0, len(t.gets))
	for k, r := range t.gets {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(t.s.prefix+k), "=", r.modRev))
	}
	ops := make([]clientv3.Op, 0, len(t.writes))
	for k, v := range t.writes {
		if v == nil {
			ops = append(ops, clientv3.OpDelete(t.s.prefix+k))
		} else {
			ops = append(ops, clientv3.OpPut(t.s.prefix+k, string(v)))
		}
	}
	resp, err := t.s.kv.Txn(t.ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("commit transaction: %w", err)
	}
	return resp.Succeeded, nil
}

// nonNil returns v, or an empty slice if v is nil: etcd returns empty values
// as nil, and a nil value in writes means a delete.
func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}
