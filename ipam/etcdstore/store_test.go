package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netblocks/netblocks/internal/etcdtest"
	"github.com/netblocks/netblocks/ipam"
	"github.com/netblocks/netblocks/ipam/etcdstore"
	"github.com/netblocks/netblocks/ipam/internal/storetest"
)

var prefixes atomic.Int64

// uniquePrefix returns a key prefix no other test of this process uses.
func uniquePrefix() string {
	return fmt.Sprintf("/test/%d/", prefixes.Add(1))
}

func newStore(t *testing.T, c *clientv3.Client, cfg etcdstore.Config) ipam.Store {
	t.Helper()
	s, err := etcdstore.New(c, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	start := time.Now()
	c := etcdtest.Start(t)
	t.Logf("embedded etcd ready in %v", time.Since(start))

	storetest.Run(t, func(t *testing.T) (ipam.Store, func() ipam.Store) {
		cfg := etcdstore.Config{Prefix: uniquePrefix()}
		another := func() ipam.Store {
			return newStore(t, etcdtest.Connect(t, c.Endpoints()...), cfg)
		}
		return newStore(t, c, cfg), another
	})
}

func put(t *testing.T, s ipam.Store, key, value string) {
	t.Helper()
	if err := s.Update(context.Background(), func(tx ipam.Txn) error {
		return tx.Put(key, []byte(value))
	}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func get(t *testing.T, s ipam.Store, key string) (string, bool) {
	t.Helper()
	var v []byte
	var ok bool
	if err := s.View(context.Background(), func(tx ipam.Txn) error {
		var err error
		v, ok, err = tx.Get(key)
		return err
	}); err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return string(v), ok
}

func TestStore(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t)
	c2 := etcdtest.Connect(t, c.Endpoints()...)

	t.Run("LostRaceRetried", func(t *testing.T) {
		cfg := etcdstore.Config{Prefix: uniquePrefix()}
		s1, s2 := newStore(t, c, cfg), newStore(t, c2, cfg)
		put(t, s1, "k", "1")

		read := make(chan struct{})
		proceed := make(chan struct{})
		var seen []string
		done := make(chan error, 1)
		go func() {
			done <- s1.Update(ctx, func(tx ipam.Txn) error {
				v, _, err := tx.Get("k")
				if err != nil {
					return err
				}
				seen = append(seen, string(v))
				if len(seen) == 1 {
					close(read)
					<-proceed
				}
				return tx.Put("k", append(v, '+'))
			})
		}()
		<-read
		put(t, s2, "k", "2")
		close(proceed)
		if err := <-done; err != nil {
			t.Fatalf("Update: %v", err)
		}
		if diff := cmp.Diff([]string{"1", "2"}, seen); diff != "" {
			t.Errorf("values fn read in each attempt (-want +got):\n%s", diff)
		}
		if v, _ := get(t, s1, "k"); v != "2+" {
			t.Errorf("k = %q after the retried update, want %q", v, "2+")
		}
	})

	t.Run("MaxAttempts", func(t *testing.T) {
		prefix := uniquePrefix()
		s1 := newStore(t, c, etcdstore.Config{Prefix: prefix, MaxAttempts: 3})
		s2 := newStore(t, c2, etcdstore.Config{Prefix: prefix})
		attempts := 0
		err := s1.Update(ctx, func(tx ipam.Txn) error {
			attempts++
			if _, _, err := tx.Get("k"); err != nil {
				return err
			}
			// A competing writer commits during every attempt.
			if err := s2.Update(ctx, func(tx ipam.Txn) error {
				return tx.Put("k", []byte(strconv.Itoa(attempts)))
			}); err != nil {
				return err
			}
			return tx.Put("k", []byte("never"))
		})
		if err == nil || !strings.Contains(err.Error(), "3 attempts") {
			t.Errorf("Update = %v, want an error about 3 attempts", err)
		}
		if attempts != 3 {
			t.Errorf("fn ran %d times, want 3", attempts)
		}
		if v, _ := get(t, s1, "k"); v != "3" {
			t.Errorf("k = %q, want the competing writer's %q", v, "3")
		}
	})

	t.Run("TooManyOps", func(t *testing.T) {
		s := newStore(t, c, etcdstore.Config{Prefix: uniquePrefix()})
		for _, tc := range []struct {
			name          string
			reads, writes int
			want          string // in the error; empty: success
		}{
			{"128Writes", 0, 128, ""},
			{"128Reads", 128, 1, ""},
			{"129Writes", 0, 129, "129 written"},
			{"129Reads", 129, 1, "129 keys read"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				prefix := tc.name + "/"
				err := s.Update(ctx, func(tx ipam.Txn) error {
					for i := range tc.reads {
						if _, _, err := tx.Get(fmt.Sprintf("%sr%03d", prefix, i)); err != nil {
							return err
						}
					}
					for i := range tc.writes {
						if err := tx.Put(fmt.Sprintf("%sw%03d", prefix, i), nil); err != nil {
							return err
						}
					}
					return nil
				})
				n := 0
				if err := s.View(ctx, func(tx ipam.Txn) error {
					return tx.Scan(prefix, "", func(string, []byte) bool { n++; return true })
				}); err != nil {
					t.Fatal(err)
				}
				if tc.want == "" {
					if err != nil || n != tc.writes {
						t.Errorf("Update = %v and wrote %d keys, want success and %d", err, n, tc.writes)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "128") {
					t.Errorf("Update = %v, want an error containing %q and the limit", err, tc.want)
				}
				if n != 0 {
					t.Errorf("a failed update wrote %d keys", n)
				}
			})
		}
	})

	t.Run("PrefixIsolation", func(t *testing.T) {
		a := newStore(t, c, etcdstore.Config{Prefix: uniquePrefix()})
		b := newStore(t, c, etcdstore.Config{Prefix: uniquePrefix()})
		put(t, a, "k", "a")
		put(t, a, "only-a", "a")
		put(t, b, "k", "b")
		if v, _ := get(t, a, "k"); v != "a" {
			t.Errorf("k in a = %q, want %q", v, "a")
		}
		if v, ok := get(t, b, "only-a"); ok {
			t.Errorf("b sees a's key only-a = %q", v)
		}
		var keys []string
		if err := b.View(ctx, func(tx ipam.Txn) error {
			return tx.Scan("", "", func(k string, _ []byte) bool { keys = append(keys, k); return true })
		}); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"k"}, keys); diff != "" {
			t.Errorf("keys of b (-want +got):\n%s", diff)
		}
	})

	t.Run("DefaultPrefix", func(t *testing.T) {
		s := newStore(t, c, etcdstore.Config{})
		put(t, s, "k", "v")
		resp, err := c.Get(ctx, "/netblocks/ipam/k")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
			t.Errorf("etcd holds %v under /netblocks/ipam/k, want v", resp.Kvs)
		}
	})

	t.Run("Snapshot", func(t *testing.T) {
		// Reads after the first see its revision, not later commits.
		cfg := etcdstore.Config{Prefix: uniquePrefix()}
		s1, s2 := newStore(t, c, cfg), newStore(t, c2, cfg)
		put(t, s1, "a", "1")
		put(t, s1, "b", "1")
		var got []string
		err := s1.View(ctx, func(tx ipam.Txn) error {
			if _, _, err := tx.Get("a"); err != nil {
				return err
			}
			if err := s2.Update(ctx, func(tx ipam.Txn) error {
				if err := tx.Put("b", []byte("2")); err != nil {
					return err
				}
				return tx.Put("c", []byte("2"))
			}); err != nil {
				return err
			}
			v, _, err := tx.Get("b")
			got = append(got, "b="+string(v))
			if err != nil {
				return err
			}
			return tx.Scan("", "", func(k string, v []byte) bool {
				got = append(got, k+"="+string(v))
				return true
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"b=1", "a=1", "b=1"}, got); diff != "" {
			t.Errorf("reads after a concurrent commit (-want +got):\n%s", diff)
		}
	})

	t.Run("Close", func(t *testing.T) {
		s, err := etcdstore.New(c, etcdstore.Config{Prefix: uniquePrefix()})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		noop := func(ipam.Txn) error { return nil }
		if err := s.Update(ctx, noop); !errors.Is(err, ipam.ErrStoreClosed) {
			t.Errorf("Update after Close = %v, want ErrStoreClosed", err)
		}
		if err := s.View(ctx, noop); !errors.Is(err, ipam.ErrStoreClosed) {
			t.Errorf("View after Close = %v, want ErrStoreClosed", err)
		}
		// The client is the caller's and still works.
		if _, err := c.Get(ctx, "x"); err != nil {
			t.Errorf("client after Close of the store: %v", err)
		}
	})

	t.Run("CanceledRead", func(t *testing.T) {
		s := newStore(t, c, etcdstore.Config{Prefix: uniquePrefix()})
		cctx, cancel := context.WithCancel(ctx)
		err := s.Update(cctx, func(tx ipam.Txn) error {
			cancel()
			_, _, err := tx.Get("k")
			return err
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Get with a canceled context: %v, want context.Canceled", err)
		}
	})

	t.Run("BadConfig", func(t *testing.T) {
		if _, err := etcdstore.New(c, etcdstore.Config{MaxAttempts: -1}); err == nil {
			t.Error("New accepted a negative MaxAttempts")
		}
		if _, err := etcdstore.New(nil, etcdstore.Config{}); err == nil {
			t.Error("New accepted a nil client")
		}
	})
}
