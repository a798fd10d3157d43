package etcdelect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netblocks/netblocks/l2announce"
)

// errLeaseLost ends a session whose etcd lease expired or was revoked.
var errLeaseLost = errors.New("etcd lease lost")

// campaign is one Key's campaign: a series of sessions.
type campaign struct {
	e         *Elector
	key       l2announce.Key
	hold      func(time.Time)
	log       *slog.Logger
	holderKey string
	prefix    string
}

// session is one etcd lease's life in a campaign: the candidacy and, if it
// wins, the holding of the Key, both attached to the lease.
type session struct {
	c     *campaign
	ctx   context.Context
	lease clientv3.LeaseID

	// What the candidate has seen of the Key, from its watch.
	holder     string    // The holder's name; "" if none.
	holderRev  int64     // Mod revision of the holder key; 0 if none.
	seenRev    int64     // Revision of the last change of the holder key applied.
	changedAt  time.Time // When this node saw the holder key change last.
	candidates map[string]bool
	notBefore  time.Time // No attempt to acquire before this.

	// Set while this node holds the Key.
	myRev    int64     // Mod revision of this node's last write of the holder key.
	until    time.Time // This node answers until then.
	reported bool      // hold was told until, not yet told it ended.
	renewAt  time.Time
}

// session runs one lease's session until ctx is done or something fails,
// and returns why it ended. On return the node no longer answers and the
// lease is revoked (best effort: it expires otherwise).
func (c *campaign) session(ctx context.Context) error {
	cfg := &c.e.cfg
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	rctx, rcancel := context.WithTimeout(ctx, cfg.RenewDeadline)
	g, err := c.e.client.Grant(rctx, c.e.ttl)
	rcancel()
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	s := &session{c: c, ctx: ctx, lease: g.ID, candidates: make(map[string]bool)}
	defer s.end()

	// The candidacy lives as long as the lease, which the client keeps
	// alive in the background; a holder also renews it itself, timed.
	kaCh, err := c.e.client.KeepAlive(ctx, s.lease)
	if err != nil {
		return fmt.Errorf("keep lease alive: %w", err)
	}
	rctx, rcancel = context.WithTimeout(ctx, cfg.RenewDeadline)
	defer rcancel()
	if _, err := c.e.client.Put(rctx, c.e.candidateKey(c.key), cfg.Name, clientv3.WithLease(s.lease)); err != nil {
		return fmt.Errorf("register candidacy: %w", err)
	}
	resp, err := c.e.client.Get(rctx, c.prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read lease: %w", err)
	}
	now := time.Now()
	s.changedAt = now
	for _, kv := range resp.Kvs {
		s.apply(mvccpb.PUT, kv, kv.ModRevision, now)
	}
	s.seenRev = resp.Header.Revision
	if s.holder == "" {
		// A free Key: candidates that start together (a new VIP) see
		// each other before the first of them acquires.
		s.notBefore = now.Add(cfg.RankDelay)
	}
	watch := c.e.client.Watch(clientv3.WithRequireLeader(ctx), c.prefix,
		clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))

	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-kaCh:
			if !ok {
				return fmt.Errorf("keep lease alive: %w", errLeaseLost)
			}
		case wr, ok := <-watch:
			if !ok {
				return errors.New("watch lease: watch closed")
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("watch lease: %w", err)
			}
			now := time.Now()
			for _, ev := range wr.Events {
				s.apply(ev.Type, ev.Kv, ev.Kv.ModRevision, now)
			}
		case <-timer.C:
		}
		next, err := s.step()
		if err != nil {
			return err
		}
		timer.Reset(time.Until(next))
	}
}

// apply records a change of a key of the campaign's Key, made at revision
// rev and seen at now. Changes of the holder key older than one already
// applied (a watch event behind a transaction's answer) are ignored.
func (s *session) apply(typ mvccpb.Event_EventType, kv *mvccpb.KeyValue, rev int64, now time.Time) {
	c := s.c
	k := string(kv.Key)
	if name, ok := strings.CutPrefix(k, c.prefix+candidatesInfix); ok {
		if n, err := url.PathUnescape(name); err == nil {
			name = n
		}
		if typ == mvccpb.DELETE {
			delete(s.candidates, name)
		} else {
			s.candidates[name] = true
		}
		return
	}
	if k != c.holderKey || rev <= s.seenRev {
		return
	}
	s.seenRev = rev
	if typ == mvccpb.DELETE {
		s.holder, s.holderRev = "", 0
	} else {
		s.holder, s.holderRev = string(kv.Value), rev
	}
	s.changedAt = now
	if s.myRev != 0 {
		// Newer than this node's last write: someone else wrote or
		// deleted the holder key.
		s.lose("the lease was taken or deleted")
	}
}

// step does what is due (renew the lease held, or try to acquire it) and
// returns when it should be called next.
func (s *session) step() (time.Time, error) {
	cfg := &s.c.e.cfg
	now := time.Now()
	if s.myRev != 0 {
		if now.Before(s.renewAt) {
			return s.renewAt, nil
		}
		err := s.renew()
		return s.renewAt, err
	}
	at := s.attemptAt()
	if now.Before(at) {
		return at, nil
	}
	err := s.acquire()
	if s.myRev != 0 {
		return s.renewAt, err
	}
	return time.Now().Add(cfg.RetryPeriod), err
}

// attemptAt returns when this candidate should try to acquire the Key: a
// free one after its rank's delay, one whose holder has not renewed for
// LeaseDuration after that and its rank's delay (the stale holder does not
// count in the ranking).
func (s *session) attemptAt() time.Time {
	cfg := &s.c.e.cfg
	var others []string
	for name := range s.candidates {
		if name != s.holder {
			others = append(others, name)
		}
	}
	delay := time.Duration(rank(s.c.key, cfg.Name, others)) * cfg.RankDelay
	at := s.changedAt
	if s.holder != "" {
		at = at.Add(cfg.LeaseDuration)
	}
	if at.Before(s.notBefore) {
		at = s.notBefore
	}
	at = at.Add(delay)
	return at
}

// acquire tries to write this node's name into the holder key, on condition
// that nobody changed it since the watch saw it: free, or held by a node that
// has not renewed for LeaseDuration.
func (s *session) acquire() error {
	c := s.c
	cfg := &c.e.cfg
	ctx, cancel := context.WithTimeout(s.ctx, cfg.RenewDeadline)
	defer cancel()

	// The lease is renewed first, so that the holding counts from now.
	start := time.Now()
	if _, err := c.e.client.KeepAliveOnce(ctx, s.lease); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("renew lease: %w", errLeaseLost)
		}
		c.log.Debug("cannot renew lease before acquiring", "error", err)
		return nil
	}
	resp, err := c.e.client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(c.holderKey), "=", s.holderRev)).
		Then(clientv3.OpPut(c.holderKey, cfg.Name, clientv3.WithLease(s.lease))).
		Else(clientv3.OpGet(c.holderKey)).
		Commit()
	if err != nil {
		c.log.Debug("cannot acquire lease", "error", err)
		return nil
	}
	if !resp.Succeeded {
		// The watch is behind: catch up from the answer.
		now := time.Now()
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			s.apply(mvccpb.PUT, kvs[0], kvs[0].ModRevision, now)
		} else if s.holderRev != 0 {
			s.apply(mvccpb.DELETE, &mvccpb.KeyValue{Key: []byte(c.holderKey)}, resp.Header.Revision, now)
		}
		return nil
	}
	prev := s.holder
	s.myRev = resp.Header.Revision
	s.holder, s.holderRev, s.seenRev = cfg.Name, s.myRev, s.myRev
	s.renewAt = start.Add(cfg.RetryPeriod)
	c.log.Info("acquired lease", "previous", prev, "revision", s.myRev)
	s.extend(start.Add(cfg.RenewDeadline))
	return nil
}

// renew renews the etcd lease and rewrites the holder key, on condition that
// it is still this node's last write; if both succeed, the node answers
// until RenewDeadline after the renewal started.
func (s *session) renew() error {
	c := s.c
	cfg := &c.e.cfg
	ctx, cancel := context.WithTimeout(s.ctx, cfg.RenewDeadline)
	defer cancel()

	start := time.Now()
	s.renewAt = start.Add(cfg.RetryPeriod)
	_, err := c.e.client.KeepAliveOnce(ctx, s.lease)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.lose("the etcd lease expired")
		return fmt.Errorf("renew lease: %w", errLeaseLost)
	}
	if err == nil {
		var resp *clientv3.TxnResponse
		resp, err = c.e.client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(c.holderKey), "=", s.myRev)).
			Then(clientv3.OpPut(c.holderKey, cfg.Name, clientv3.WithLease(s.lease))).
			Commit()
		if err == nil && !resp.Succeeded {
			s.lose("the lease was taken or deleted")
			return nil
		}
		if err == nil {
			s.myRev = resp.Header.Revision
			s.holderRev, s.seenRev = s.myRev, s.myRev
			s.extend(start.Add(cfg.RenewDeadline))
			return nil
		}
	}
	if s.reported && !time.Now().Before(s.until) {
		c.log.Warn("renew deadline passed, not answering", "error", err)
		s.reported = false
		s.hold(time.Time{})
	} else {
		c.log.Debug("cannot renew lease", "error", err)
	}
	return nil
}

// extend lets the node answer until until.
func (s *session) extend(until time.Time) {
	s.until = until
	if time.Now().Before(until) {
		s.reported = true
		s.hold(until)
	}
}

// lose makes this node a candidate again, not answering from now on.
func (s *session) lose(why string) {
	if s.myRev == 0 {
		return
	}
	s.c.log.Info("lost lease", "reason", why)
	s.myRev = 0
	s.until = time.Time{}
	if s.reported {
		s.reported = false
		s.hold(time.Time{})
	}
}

// end stops answering, then revokes the lease, which deletes the holder key
// (if this node holds it) and the candidacy in one revision, so that the
// next candidate acquires at once.
func (s *session) end() {
	if s.reported {
		s.reported = false
		s.hold(time.Time{})
	}
	s.myRev = 0
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), s.c.e.cfg.RenewDeadline)
	defer cancel()
	if _, err := s.c.e.client.Revoke(ctx, s.lease); err != nil {
		s.c.log.Debug("cannot revoke lease; it will expire", "error", err)
	}
}

// hold tells the campaign's caller until when it may answer.
func (s *session) hold(until time.Time) { s.c.hold(until) }
