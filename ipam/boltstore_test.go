package ipam_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/ipam"
	"github.com/netblocks/netblocks/ipam/internal/storetest"
)

func openBolt(t testing.TB, path string, cfg ipam.BoltConfig) ipam.Store {
	t.Helper()
	s, err := ipam.OpenBolt(path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBoltStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (ipam.Store, func() ipam.Store) {
		path := filepath.Join(t.TempDir(), "ipam.db")
		return openBolt(t, path, ipam.BoltConfig{}), func() ipam.Store {
			return openBolt(t, path, ipam.BoltConfig{})
		}
	})
}

func TestBoltCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "ipam.db")
	openBolt(t, path, ipam.BoltConfig{})
	for _, tc := range []struct {
		path string
		mode fs.FileMode
	}{
		{dir, fs.ModeDir | 0o700},
		{path, 0o600},
		{path + ".lock", 0o600},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tc.mode {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode(), tc.mode)
		}
	}
}

func TestBoltBadPath(t *testing.T) {
	dir := t.TempDir()
	garbage := bytes.Repeat([]byte("not a bbolt file\n"), 1000)
	for _, tc := range []struct {
		name    string
		path    string
		content []byte // of a file at path, if not nil
		want    error  // if not nil
	}{
		{name: "Directory", path: dir, want: syscall.EISDIR},
		{name: "Garbage", path: filepath.Join(dir, "garbage"), content: garbage, want: bolt.ErrInvalid},
		{name: "ShortGarbage", path: filepath.Join(dir, "short"), content: []byte("x"), want: bolt.ErrInvalid},
		{name: "UnderFile", path: filepath.Join(dir, "garbage", "ipam.db"), want: syscall.ENOTDIR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.content != nil {
				if err := os.WriteFile(tc.path, tc.content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s, err := ipam.OpenBolt(tc.path, ipam.BoltConfig{})
			if err == nil {
				s.Close()
				t.Fatal("OpenBolt succeeded")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tc.path) && !strings.Contains(err.Error(), filepath.Dir(tc.path)) {
				t.Errorf("error %q does not name the path", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %q is not %q", err, tc.want)
			}
			if tc.content != nil {
				if b, _ := os.ReadFile(tc.path); !bytes.Equal(b, tc.content) {
					t.Error("OpenBolt changed the file")
				}
			}
		})
	}
	if _, err := os.Stat(dir + ".lock"); err == nil {
		t.Error("OpenBolt on a directory left a lock file next to it")
	}
}

func TestBoltClosed(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), "ipam.db"), ipam.BoltConfig{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	nop := func(ipam.Txn) error { return nil }
	if err := s.Update(context.Background(), nop); !errors.Is(err, ipam.ErrStoreClosed) {
		t.Errorf("Update after Close: %v, want ErrStoreClosed", err)
	}
	if err := s.View(context.Background(), nop); !errors.Is(err, ipam.ErrStoreClosed) {
		t.Errorf("View after Close: %v, want ErrStoreClosed", err)
	}
}

// Values from Get and Scan stay valid after the transaction, when bbolt has
// unmapped the file.
func TestBoltValuesOutliveTxn(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), "ipam.db"), ipam.BoltConfig{})
	ctx := context.Background()
	if err := s.Update(ctx, func(tx ipam.Txn) error { return tx.Put("k", []byte("value")) }); err != nil {
		t.Fatal(err)
	}
	var got, scanned []byte
	err := s.View(ctx, func(tx ipam.Txn) error {
		var err error
		got, _, err = tx.Get("k")
		if err != nil {
			return err
		}
		return tx.Scan("", "", func(_ string, v []byte) bool { scanned = v; return false })
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx ipam.Txn) error { return tx.Put("k", []byte("other")) }); err != nil {
		t.Fatal(err)
	}
	if string(got) != "value" || string(scanned) != "value" {
		t.Errorf("after the transaction: Get %q, Scan %q, want %q", got, scanned, "value")
	}
}

// A file without the bucket, or no file at all, is an empty store.
func TestBoltMissingBucket(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ipam.db")
	s := openBolt(t, path, ipam.BoltConfig{})
	for _, tc := range []struct {
		name   string
		damage func() error
	}{
		{"NoBucket", func() error {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				return err
			}
			defer db.Close()
			return db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("ipam")) })
		}},
		{"NoFile", func() error { return os.Remove(path) }},
		{"EmptyFile", func() error { return os.Truncate(path, 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Update(ctx, func(tx ipam.Txn) error { return tx.Put("k", []byte("v")) }); err != nil {
				t.Fatal(err)
			}
			if err := tc.damage(); err != nil {
				t.Fatal(err)
			}
			err := s.View(ctx, func(tx ipam.Txn) error {
				if _, ok, err := tx.Get("k"); err != nil || ok {
					return fmt.Errorf("get: ok=%v err=%v, want a missing key", ok, err)
				}
				return tx.Scan("", "", func(k string, _ []byte) bool {
					t.Errorf("scan saw %q", k)
					return true
				})
			})
			if err != nil {
				t.Fatalf("View: %v", err)
			}
			if err := s.Update(ctx, func(tx ipam.Txn) error { return tx.Put("k", []byte("v")) }); err != nil {
				t.Fatalf("Update: %v", err)
			}
		})
	}
}

func TestBoltLockTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	const timeout = 100 * time.Millisecond
	s := openBolt(t, path, ipam.BoltConfig{LockTimeout: timeout})
	slow := openBolt(t, path, ipam.BoltConfig{}) // waits a minute
	nop := func(ipam.Txn) error { return nil }
	update := func(ctx context.Context, s ipam.Store) error { return s.Update(ctx, nop) }
	view := func(ctx context.Context, s ipam.Store) error { return s.View(ctx, nop) }
	for _, tc := range []struct {
		name     string
		hold     int // flock of the "other process"
		run      func(context.Context, ipam.Store) error
		succeeds bool
	}{
		{"ExclusiveBlocksUpdate", unix.LOCK_EX, update, false},
		{"ExclusiveBlocksView", unix.LOCK_EX, view, false},
		{"SharedBlocksUpdate", unix.LOCK_SH, update, false},
		{"SharedAllowsView", unix.LOCK_SH, view, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.OpenFile(path+".lock", os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := unix.Flock(int(f.Fd()), tc.hold); err != nil {
				t.Fatal(err)
			}

			start := time.Now()
			err = tc.run(context.Background(), s)
			if tc.succeeds {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if elapsed := time.Since(start); elapsed < timeout {
				t.Errorf("gave up after %v, want %v", elapsed, timeout)
			}
			if err == nil || !strings.Contains(err.Error(), path+".lock") || !strings.Contains(err.Error(), "another process") {
				t.Fatalf("error %q does not name the lock file and its holder", err)
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("error %q is not os.ErrDeadlineExceeded", err)
			}

			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(20*time.Millisecond, cancel)
			start = time.Now()
			err = tc.run(ctx, slow)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("with a canceled context: %v, want context.Canceled", err)
			}
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("took %v to notice the canceled context", elapsed)
			}
		})
	}
}

const childEnv = "NETBLOCKS_BOLT_CHILD_PATH"

// Processes increment one counter through their own stores; none of the
// increments may be lost.
func TestBoltCrossProcess(t *testing.T) {
	const procs, each = 3, 200
	if path := os.Getenv(childEnv); path != "" {
		s := openBolt(t, path, ipam.BoltConfig{})
		for range each {
			if err := increment(s); err != nil {
				t.Fatal(err)
			}
		}
		return
	}

	path := filepath.Join(t.TempDir(), "ipam.db")
	s := openBolt(t, path, ipam.BoltConfig{})
	errs := make(chan error, procs)
	for range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBoltCrossProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"="+path)
		go func() {
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = fmt.Errorf("child: %w\n%s", err, out)
			}
			errs <- err
		}()
	}
	for range procs {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	err := s.View(context.Background(), func(tx ipam.Txn) error {
		v, _, err := tx.Get("counter")
		if string(v) != strconv.Itoa(procs*each) {
			t.Errorf("counter = %q after %d increments in %d processes", v, procs*each, procs)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func increment(s ipam.Store) error {
	return s.Update(context.Background(), func(tx ipam.Txn) error {
		v, _, err := tx.Get("counter")
		if err != nil {
			return err
		}
		n, _ := strconv.Atoi(string(v))
		return tx.Put("counter", []byte(strconv.Itoa(n+1)))
	})
}

// BenchmarkBoltUpdate measures one committed transaction: taking the lock,
// opening the file, writing a small key, fsync and closing.
func BenchmarkBoltUpdate(b *testing.B) {
	s := openBolt(b, filepath.Join(b.TempDir(), "ipam.db"), ipam.BoltConfig{})
	value := []byte("10.0.0.1")
	for b.Loop() {
		err := s.Update(context.Background(), func(tx ipam.Txn) error { return tx.Put("key", value) })
		if err != nil {
			b.Fatal(err)
		}
	}
}
