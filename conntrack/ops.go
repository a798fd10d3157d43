package conntrack

import (
	"errors"
	"fmt"
	"iter"

	"github.com/cilium/ebpf"
)

// batchSize is how many entries one batch syscall moves.
const batchSize = 4096

// Lookup returns the entry of the connection f belongs to: f may be given in
// the original or the reply direction (the entry's Flow says which is
// original). It returns an error wrapping ebpf.ErrKeyNotExist when the
// connection is not tracked.
func (t *Table) Lookup(f Flow) (Entry, error) {
	if err := f.validate(); err != nil {
		return Entry{}, fmt.Errorf("conntrack: look up: %w", err)
	}
	clk, err := readClock()
	if err != nil {
		return Entry{}, fmt.Errorf("conntrack: %w", err)
	}
	for _, k := range []ctTuple{f.key(), f.Reverse().key()} {
		var v ctEntry
		err := t.ct.Lookup(&k, &v)
		if err == nil {
			return v.entry(k, clk), nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return Entry{}, fmt.Errorf("conntrack: look up %v: %w", f, err)
		}
	}
	return Entry{}, fmt.Errorf("conntrack: look up %v: %w", f, ebpf.ErrKeyNotExist)
}

// Delete removes the entry of the connection f belongs to (in either
// direction). It returns an error wrapping ebpf.ErrKeyNotExist when there is
// none.
func (t *Table) Delete(f Flow) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("conntrack: delete: %w", err)
	}
	for _, k := range []ctTuple{f.key(), f.Reverse().key()} {
		err := t.ct.Delete(&k)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("conntrack: delete %v: %w", f, err)
		}
	}
	return fmt.Errorf("conntrack: delete %v: %w", f, ebpf.ErrKeyNotExist)
}

// Iterate returns every entry, read with batch lookups. Entries that the
// datapath adds or removes during the walk may or may not be seen. An error
// ends the sequence as its last element.
func (t *Table) Iterate() iter.Seq2[Entry, error] {
	return func(yield func(Entry, error) bool) {
		clk, err := readClock()
		if err != nil {
			yield(Entry{}, fmt.Errorf("conntrack: %w", err))
			return
		}
		stopped := false
		err = t.walk(func(keys []ctTuple, vals []ctEntry) bool {
			for i := range keys {
				if !yield(vals[i].entry(keys[i], clk), nil) {
					stopped = true
					return false
				}
			}
			return true
		})
		if err != nil && !stopped {
			yield(Entry{}, err)
		}
	}
}

// walk reads the CT map with batch lookups, calling fn with each batch until
// fn returns false. The slices are reused for the next batch.
func (t *Table) walk(fn func(keys []ctTuple, vals []ctEntry) bool) error {
	keys := make([]ctTuple, batchSize)
	vals := make([]ctEntry, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := t.ct.BatchLookup(&cursor, keys, vals, nil)
		done := errors.Is(err, ebpf.ErrKeyNotExist)
		if err != nil && !done {
			return fmt.Errorf("conntrack: batch lookup: %w", err)
		}
		if n > 0 && !fn(keys[:n], vals[:n]) {
			return nil
		}
		if done {
			return nil
		}
	}
}

// deleteKeys removes keys with batch deletes. Keys already gone (evicted, or
// removed by someone else meanwhile) are skipped. It returns how many it
// removed.
func (t *Table) deleteKeys(keys []ctTuple) (int, error) {
	deleted := 0
	for len(keys) > 0 {
		n, err := t.ct.BatchDelete(keys, nil)
		deleted += n
		switch {
		case err == nil:
			return deleted, nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			keys = keys[n+1:] // the kernel stopped at a key that is gone
		default:
			return deleted, fmt.Errorf("conntrack: batch delete: %w", err)
		}
	}
	return deleted, nil
}

// deleteWhere walks the table and deletes, batch by batch, the entries for
// which del is true. It returns how many it deleted.
func (t *Table) deleteWhere(del func(*ctEntry) bool) (int, error) {
	var (
		doomed  = make([]ctTuple, 0, batchSize)
		deleted int
		derr    error
	)
	err := t.walk(func(keys []ctTuple, vals []ctEntry) bool {
		doomed = doomed[:0]
		for i := range keys {
			if del(&vals[i]) {
				doomed = append(doomed, keys[i])
			}
		}
		n, err := t.deleteKeys(doomed)
		deleted += n
		derr = err
		return err == nil
	})
	return deleted, errors.Join(err, derr)
}

// Flush removes every entry and returns how many it removed.
func (t *Table) Flush() (int, error) {
	return t.deleteWhere(func(*ctEntry) bool { return true })
}

// Len counts the entries, expired ones included until GC removes them.
func (t *Table) Len() (int, error) {
	n := 0
	err := t.walk(func(keys []ctTuple, _ []ctEntry) bool {
		n += len(keys)
		return true
	})
	return n, err
}

// Stats are the datapath's counters since the table was created, summed over
// CPUs: what each packet the tracker saw came to.
type Stats struct {
	New          uint64 // packets that created an entry
	Established  uint64 // packets in the original direction of a tracked flow
	Reply        uint64 // packets in the reply direction
	Related      uint64 // ICMP errors about a tracked flow
	Untracked    uint64 // packets that could not be tracked (not IP, later fragments, malformed, unmatched ICMP errors)
	CreateFailed uint64 // entries the map refused to create
}

// Stats reads the datapath's counters.
func (t *Table) Stats() (Stats, error) {
	var s Stats
	for idx, field := range map[uint32]*uint64{
		statNew: &s.New, statEstablished: &s.Established, statReply: &s.Reply,
		statRelated: &s.Related, statUntracked: &s.Untracked, statCreateFailed: &s.CreateFailed,
	} {
		var perCPU []uint64
		if err := t.stats.Lookup(idx, &perCPU); err != nil {
			return Stats{}, fmt.Errorf("conntrack: read stats: %w", err)
		}
		for _, v := range perCPU {
			*field += v
		}
	}
	return s, nil
}
