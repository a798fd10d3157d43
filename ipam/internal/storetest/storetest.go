// Package storetest is the conformance suite for implementations of
// [ipam.Store]: every store in netblocks runs it from its tests.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/netblocks/netblocks/ipam"
)

// Run runs the conformance tests. open returns a fresh, empty store for one
// subtest; a second call within the same subtest (for the concurrency tests)
// must return another handle on the same data, or the same store.
func Run(t *testing.T, open func(t *testing.T) (first ipam.Store, another func() ipam.Store)) {
	ctx := context.Background()

	t.Run("GetPutDelete", func(t *testing.T) {
		s, _ := open(t)
		mustUpdate(t, s, func(tx ipam.Txn) error {
			if _, ok, err := tx.Get("a"); err != nil || ok {
				return fmt.Errorf("get of a missing key: ok=%v err=%v", ok, err)
			}
			if err := tx.Put("a", []byte("1")); err != nil {
				return err
			}
			if v, ok, err := tx.Get("a"); err != nil || !ok || string(v) != "1" {
				return fmt.Errorf("get after put in the same txn: %q %v %v", v, ok, err)
			}
			if err := tx.Put("empty", []byte{}); err != nil {
				return err
			}
			return tx.Delete("never-existed")
		})
		mustView(t, s, func(tx ipam.Txn) error {
			if v, ok, err := tx.Get("a"); err != nil || !ok || string(v) != "1" {
				return fmt.Errorf("get after commit: %q %v %v", v, ok, err)
			}
			if v, ok, err := tx.Get("empty"); err != nil || !ok || len(v) != 0 {
				return fmt.Errorf("get of an empty value: %q %v %v", v, ok, err)
			}
			return nil
		})
		mustUpdate(t, s, func(tx ipam.Txn) error {
			if err := tx.Delete("a"); err != nil {
				return err
			}
			if _, ok, err := tx.Get("a"); err != nil || ok {
				return fmt.Errorf("get after delete in the same txn: ok=%v err=%v", ok, err)
			}
			return nil
		})
		mustView(t, s, func(tx ipam.Txn) error {
			if _, ok, err := tx.Get("a"); err != nil || ok {
				return fmt.Errorf("get after committed delete: ok=%v err=%v", ok, err)
			}
			return nil
		})
	})

	t.Run("ErrorAborts", func(t *testing.T) {
		s, _ := open(t)
		boom := errors.New("boom")
		mustUpdate(t, s, func(tx ipam.Txn) error { return tx.Put("keep", []byte("x")) })
		err := s.Update(ctx, func(tx ipam.Txn) error {
			if err := tx.Put("a", []byte("1")); err != nil {
				return err
			}
			if err := tx.Delete("keep"); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Update returned %v, want the error of fn", err)
		}
		mustView(t, s, func(tx ipam.Txn) error {
			if _, ok, _ := tx.Get("a"); ok {
				return errors.New("a write of a failed transaction was kept")
			}
			if _, ok, _ := tx.Get("keep"); !ok {
				return errors.New("a delete of a failed transaction was kept")
			}
			return nil
		})
	})

	t.Run("ReadOnlyView", func(t *testing.T) {
		s, _ := open(t)
		err := s.View(ctx, func(tx ipam.Txn) error { return tx.Put("a", []byte("1")) })
		if !errors.Is(err, ipam.ErrReadOnly) {
			t.Fatalf("Put in View: %v, want ErrReadOnly", err)
		}
		err = s.View(ctx, func(tx ipam.Txn) error { return tx.Delete("a") })
		if !errors.Is(err, ipam.ErrReadOnly) {
			t.Fatalf("Delete in View: %v, want ErrReadOnly", err)
		}
	})

	t.Run("ScanOrderPrefixStart", func(t *testing.T) {
		s, _ := open(t)
		keys := []string{"p/c", "p/a", "q/a", "p/b", "o/z", "p/", "p/bb", "pa"}
		mustUpdate(t, s, func(tx ipam.Txn) error {
			for _, k := range keys {
				if err := tx.Put(k, []byte("v"+k)); err != nil {
					return err
				}
			}
			return nil
		})
		scan := func(tx ipam.Txn, prefix, start string, limit int) ([]string, error) {
			var got []string
			err := tx.Scan(prefix, start, func(k string, v []byte) bool {
				if string(v) != "v"+k {
					got = append(got, "BAD VALUE "+string(v))
				}
				got = append(got, k)
				return limit == 0 || len(got) < limit
			})
			return got, err
		}
		for _, tc := range []struct {
			prefix, start string
			limit         int
			want          []string
		}{
			{"p/", "", 0, []string{"p/", "p/a", "p/b", "p/bb", "p/c"}},
			{"p/", "p/b", 0, []string{"p/b", "p/bb", "p/c"}},
			{"p/", "p/ba", 0, []string{"p/bb", "p/c"}},
			{"p/", "a", 0, []string{"p/", "p/a", "p/b", "p/bb", "p/c"}},
			{"p/", "", 2, []string{"p/", "p/a"}},
			{"p/", "p/d", 0, nil},
			{"x/", "", 0, nil},
			{"", "", 0, []string{"o/z", "p/", "p/a", "p/b", "p/bb", "p/c", "pa", "q/a"}},
		} {
			var got []string
			mustView(t, s, func(tx ipam.Txn) error {
				var err error
				got, err = scan(tx, tc.prefix, tc.start, tc.limit)
				return err
			})
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Scan(%q, %q) limit %d (-want +got):\n%s", tc.prefix, tc.start, tc.limit, diff)
			}
		}
		// A scan in an update sees the transaction's own writes.
		mustUpdate(t, s, func(tx ipam.Txn) error {
			if err := tx.Put("p/ab", []byte("vp/ab")); err != nil {
				return err
			}
			if err := tx.Delete("p/b"); err != nil {
				return err
			}
			got, err := scan(tx, "p/", "p/a", 0)
			if err != nil {
				return err
			}
			if diff := cmp.Diff([]string{"p/a", "p/ab", "p/bb", "p/c"}, got); diff != "" {
				return fmt.Errorf("scan after writes in the same txn (-want +got):\n%s", diff)
			}
			return nil
		})
	})

	t.Run("ManyKeysScan", func(t *testing.T) {
		// More keys than one page of a paging store.
		s, _ := open(t)
		const n = 1500
		for lo := 0; lo < n; lo += 100 {
			mustUpdate(t, s, func(tx ipam.Txn) error {
				for i := lo; i < lo+100; i++ {
					if err := tx.Put(fmt.Sprintf("k/%05d", i), []byte(strconv.Itoa(i))); err != nil {
						return err
					}
				}
				return nil
			})
		}
		mustView(t, s, func(tx ipam.Txn) error {
			i := 7
			err := tx.Scan("k/", fmt.Sprintf("k/%05d", i), func(k string, v []byte) bool {
				if k != fmt.Sprintf("k/%05d", i) || string(v) != strconv.Itoa(i) {
					t.Errorf("scan: got %s=%s at position %d", k, v, i)
				}
				i++
				return true
			})
			if i != n {
				t.Errorf("scan saw up to %d, want %d", i, n)
			}
			return err
		})
	})

	t.Run("ConcurrentIncrements", func(t *testing.T) {
		// Many writers read-modify-write one counter; none may be lost.
		s, another := open(t)
		const writers, each = 4, 25
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := 0; w < writers; w++ {
			st := s
			if w > 0 {
				st = another()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					err := st.Update(ctx, func(tx ipam.Txn) error {
						v, _, err := tx.Get("counter")
						if err != nil {
							return err
						}
						n, _ := strconv.Atoi(string(v))
						return tx.Put("counter", []byte(strconv.Itoa(n+1)))
					})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		mustView(t, s, func(tx ipam.Txn) error {
			v, _, err := tx.Get("counter")
			if string(v) != strconv.Itoa(writers*each) {
				return fmt.Errorf("counter = %q after %d increments: lost updates", v, writers*each)
			}
			return err
		})
	})

	t.Run("ConcurrentClaims", func(t *testing.T) {
		// Writers claim keys that must not exist yet, guarded by Get: each
		// key is claimed once.
		s, another := open(t)
		const writers, keys = 4, 40
		var mu sync.Mutex
		claimed := map[string]int{}
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := 0; w < writers; w++ {
			st := s
			if w > 0 {
				st = another()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < keys; i++ {
					key := "claim/" + strconv.Itoa(i)
					var won bool
					err := st.Update(ctx, func(tx ipam.Txn) error {
						won = false
						if _, ok, err := tx.Get(key); err != nil || ok {
							return err
						}
						won = true
						return tx.Put(key, []byte(strconv.Itoa(w)))
					})
					if err != nil {
						errs <- err
						return
					}
					if won {
						mu.Lock()
						claimed[key]++
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for i := 0; i < keys; i++ {
			if n := claimed["claim/"+strconv.Itoa(i)]; n != 1 {
				t.Errorf("key %d claimed %d times, want once", i, n)
			}
		}
	})

	t.Run("ContextCanceled", func(t *testing.T) {
		s, _ := open(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		err := s.Update(cctx, func(tx ipam.Txn) error { return tx.Put("a", []byte("1")) })
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Update with a canceled context: %v, want context.Canceled", err)
		}
	})
}

func mustUpdate(t *testing.T, s ipam.Store, fn func(ipam.Txn) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func mustView(t *testing.T, s ipam.Store, fn func(ipam.Txn) error) {
	t.Helper()
	if err := s.View(context.Background(), fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}
