package ipam

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// DefaultBoltPath is where OpenBolt("", ...) keeps its file, next to the
// lock file DefaultBoltPath + ".lock".
const DefaultBoltPath = "/var/lib/netblocks/ipam.db"

// BoltConfig configures [OpenBolt]. The zero value is ready to use.
type BoltConfig struct {
	// LockTimeout bounds how long a transaction waits for another process's
	// lock on the file. Zero (or less) means the default, 1 minute.
	LockTimeout time.Duration
}

const (
	boltLockTimeout = time.Minute
	// The bucket that holds every key.
	boltBucket = "ipam"
	// How long bolt.Open waits for bbolt's own flock on the data file. We
	// hold the lock file when we open it, so bbolt's lock is contended only
	// by a program that opens the file directly, or when the lock file was
	// removed under a running transaction; bbolt's lock then still keeps the
	// file consistent, and this bounds the wait.
	boltOpenTimeout = time.Second
	// Polling of the lock file: the first wait, and the longest.
	boltBackoffMin = 500 * time.Microsecond
	boltBackoffMax = 10 * time.Millisecond
)

// OpenBolt returns a [Store] backed by the bbolt file at path
// ([DefaultBoltPath] when empty). It creates the file, and its parent
// directory with mode 0700, if they are missing, and fails if path is a
// directory, cannot be written or is not a bbolt file.
//
// Everything is in one file, written with mode 0600 and fsync'd on every
// commit. The store is safe for several processes at once, such as CNI
// plugins invoked in parallel: the file is open only during a transaction,
// while the transaction holds a flock on the lock file path + ".lock"
// (exclusive for [Store.Update], shared for [Store.View]); a transaction that
// waits for it longer than cfg.LockTimeout fails with an error wrapping
// [os.ErrDeadlineExceeded]. Within one process, the transactions of one
// store wait for each other without polling the lock file; open one store
// per file and share it.
//
// A process killed (even by SIGKILL) during a transaction leaves the file as
// of the last commit, and the kernel releases its lock when it dies. Do not
// remove the lock file while the store may be in use.
func OpenBolt(path string, cfg BoltConfig) (Store, error) {
	if path == "" {
		path = DefaultBoltPath
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = boltLockTimeout
	}
	// Checked first, so that no lock file is left next to a directory.
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("open ipam store: %w", &fs.PathError{Op: "open", Path: path, Err: syscall.EISDIR})
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open ipam store: %w", err)
	}
	s := &boltStore{path: path, lockPath: path + ".lock", timeout: cfg.LockTimeout}
	// Create the file and the bucket, and check that the file is bbolt's.
	if err := s.Update(context.Background(), func(Txn) error { return nil }); err != nil {
		return nil, fmt.Errorf("open ipam store: %w", err)
	}
	return s, nil
}

var _ Store = (*boltStore)(nil)

type boltStore struct {
	path     string
	lockPath string
	timeout  time.Duration

	// mu orders the transactions of this process, so that they do not poll
	// for each other's flock: flock locks belong to an open file description,
	// so two transactions of one process exclude each other like two
	// processes do. It also guards closed.
	mu     sync.RWMutex
	closed bool
}

func (s *boltStore) Update(ctx context.Context, fn func(Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	deadline := time.Now().Add(s.timeout)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("update %s: %w", s.path, ErrStoreClosed)
	}
	unlock, err := s.lock(ctx, unix.LOCK_EX, deadline)
	if err != nil {
		return err
	}
	defer unlock()

	db, err := s.open(false)
	if err != nil {
		return err
	}
	// Once the commit is on disk, a failure to unmap or close the file
	// loses nothing, and reporting it would make the caller think the
	// transaction failed.
	defer db.Close()
	var fnErr error
	err = db.Update(func(btx *bolt.Tx) error {
		b, err := btx.CreateBucketIfNotExists([]byte(boltBucket))
		if err != nil {
			return fmt.Errorf("create bucket: %w", err)
		}
		fnErr = fn(&boltTxn{b: b})
		return fnErr
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("update %s: %w", s.path, err)
	}
	return nil
}

func (s *boltStore) View(ctx context.Context, fn func(Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	deadline := time.Now().Add(s.timeout)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("view %s: %w", s.path, ErrStoreClosed)
	}
	unlock, err := s.lock(ctx, unix.LOCK_SH, deadline)
	if err != nil {
		return err
	}
	defer unlock()

	// A read-only open can neither create the file nor initialize an empty
	// one (left by a crash while OpenBolt created it): both hold no keys.
	fi, err := os.Stat(s.path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && fi.Size() == 0) {
		return fn(&boltTxn{readOnly: true})
	}
	if err != nil {
		return fmt.Errorf("view %s: %w", s.path, err)
	}
	db, err := s.open(true)
	if err != nil {
		return err
	}
	defer db.Close() // nothing to lose in a read-only close
	var fnErr error
	err = db.View(func(btx *bolt.Tx) error {
		// A read-only transaction cannot create the bucket; without it the
		// store is empty.
		fnErr = fn(&boltTxn{b: btx.Bucket([]byte(boltBucket)), readOnly: true})
		return fnErr
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("view %s: %w", s.path, err)
	}
	return nil
}

func (s *boltStore) Close() error {
	// Waits for the transactions of this store to end.
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// open opens the bbolt file; the caller holds the lock file.
func (s *boltStore) open(readOnly bool) (*bolt.DB, error) {
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{
		Timeout:  boltOpenTimeout,
		ReadOnly: readOnly,
		// NoSync and NoFreelistSync stay false: every commit is fsync'd,
		// and an open need not scan the file to rebuild the freelist.
	})
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, fmt.Errorf("open %s: %w", s.path, err)
	}
	return db, nil
}

// lock takes a flock of kind how (unix.LOCK_EX or unix.LOCK_SH) on the lock
// file, waiting until deadline or the end of ctx, and returns the function
// that releases it.
func (s *boltStore) lock(ctx context.Context, how int, deadline time.Time) (unlock func(), err error) {
	f, err := os.OpenFile(s.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	// Closing the only descriptor of the open file releases the lock. Go
	// opens files with O_CLOEXEC, so no child process inherits it.
	unlock = func() { f.Close() }
	var timer *time.Timer
	wait := boltBackoffMin
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("lock %s: %w", s.lockPath, err)
		}
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == nil:
			return unlock, nil
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EWOULDBLOCK):
			return nil, fmt.Errorf("lock %s: %w", s.lockPath, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("lock %s: another process held it for %v: %w", s.lockPath, s.timeout, os.ErrDeadlineExceeded)
		}
		// Jitter keeps waiting processes from polling in step.
		d := min(wait/2+rand.N(wait/2+1), left)
		if timer == nil {
			timer = time.NewTimer(d)
			defer timer.Stop()
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lock %s: %w", s.lockPath, ctx.Err())
		case <-timer.C:
		}
		wait = min(2*wait, boltBackoffMax)
	}
}

// boltTxn is a Txn on the bucket of a bbolt transaction.
type boltTxn struct {
	b        *bolt.Bucket // nil: no bucket yet, in a View
	readOnly bool
}

func (t *boltTxn) Get(key string) ([]byte, bool, error) {
	if t.b == nil {
		return nil, false, nil
	}
	k := []byte(key)
	// Bucket.Get cannot tell an empty value from a missing key.
	if ck, v := t.b.Cursor().Seek(k); bytes.Equal(ck, k) {
		// A copy: bbolt's memory map goes away with the transaction.
		return append([]byte{}, v...), true, nil
	}
	return nil, false, nil
}

func (t *boltTxn) Put(key string, value []byte) error {
	if t.readOnly {
		return fmt.Errorf("put %q: %w", key, ErrReadOnly)
	}
	if value == nil {
		value = []byte{}
	}
	// bbolt keeps value until the commit; Txn.Put's contract lets it.
	if err := t.b.Put([]byte(key), value); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

func (t *boltTxn) Delete(key string) error {
	if t.readOnly {
		return fmt.Errorf("delete %q: %w", key, ErrReadOnly)
	}
	if err := t.b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return nil
}

func (t *boltTxn) Scan(prefix, start string, fn func(string, []byte) bool) error {
	if t.b == nil {
		return nil
	}
	start = max(start, prefix)
	p := []byte(prefix)
	c := t.b.Cursor()
	for k, v := c.Seek([]byte(start)); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if !fn(string(k), append([]byte{}, v...)) {
			return nil
		}
	}
	return nil
}
