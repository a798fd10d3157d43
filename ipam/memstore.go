package ipam

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// NewMemoryStore returns a [Store] that keeps everything in memory, for tests
// and for allocators whose state need not survive the process. Transactions
// run one at a time.
func NewMemoryStore() Store {
	return &memStore{data: map[string][]byte{}}
}

var _ Store = (*memStore)(nil)

type memStore struct {
	mu     sync.RWMutex
	data   map[string][]byte
	keys   []string // sorted keys of data, valid when !dirty
	dirty  bool
	closed bool
}

func (s *memStore) Update(ctx context.Context, fn func(Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStoreClosed
	}
	tx := &memTxn{s: s, writes: map[string][]byte{}}
	if err := fn(tx); err != nil {
		return err
	}
	for k, v := range tx.writes {
		_, existed := s.data[k]
		if v == nil {
			if existed {
				delete(s.data, k)
				s.dirty = true
			}
			continue
		}
		s.data[k] = v
		if !existed {
			s.dirty = true
		}
	}
	return nil
}

func (s *memStore) View(ctx context.Context, fn func(Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// The sorted key list is rebuilt under the write lock, so a View takes it.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStoreClosed
	}
	return fn(&memTxn{s: s, readOnly: true})
}

func (s *memStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.data = nil
	s.keys = nil
	return nil
}

// sorted returns the store's keys in order; the caller holds s.mu.
func (s *memStore) sorted() []string {
	if s.dirty || s.keys == nil {
		s.keys = s.keys[:0]
		for k := range s.data {
			s.keys = append(s.keys, k)
		}
		slices.Sort(s.keys)
		s.dirty = false
	}
	return s.keys
}

type memTxn struct {
	s        *memStore
	writes   map[string][]byte // nil value: deleted
	readOnly bool
}

func (t *memTxn) Get(key string) ([]byte, bool, error) {
	if v, ok := t.writes[key]; ok {
		return v, v != nil, nil
	}
	v, ok := t.s.data[key]
	return v, ok, nil
}

func (t *memTxn) Put(key string, value []byte) error {
	if t.readOnly {
		return fmt.Errorf("put %q: %w", key, ErrReadOnly)
	}
	if value == nil {
		value = []byte{}
	}
	t.writes[key] = value
	return nil
}

func (t *memTxn) Delete(key string) error {
	if t.readOnly {
		return fmt.Errorf("delete %q: %w", key, ErrReadOnly)
	}
	t.writes[key] = nil
	return nil
}

func (t *memTxn) Scan(prefix, start string, fn func(string, []byte) bool) error {
	if start < prefix {
		start = prefix
	}
	keys := t.s.sorted()
	// The transaction's own writes, merged into the committed keys.
	var own []string
	for k := range t.writes {
		if strings.HasPrefix(k, prefix) && k >= start {
			own = append(own, k)
		}
	}
	slices.Sort(own)
	i, _ := slices.BinarySearch(keys, start)
	j := 0
	for {
		var k string
		switch {
		case i < len(keys) && strings.HasPrefix(keys[i], prefix) && (j >= len(own) || keys[i] <= own[j]):
			k = keys[i]
			if j < len(own) && own[j] == k {
				j++
			}
			i++
		case j < len(own):
			k = own[j]
			j++
		default:
			return nil
		}
		v, ok, _ := t.Get(k)
		if !ok {
			continue
		}
		if !fn(k, v) {
			return nil
		}
	}
}
