package conntrack

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"

	"github.com/netblocks/netblocks/internal/kernel"
)

// Names of the maps, as in bpf/conntrack.h and as pinned.
const (
	mapCT     = "nb_ct"
	mapConfig = "nb_ct_config"
	mapStats  = "nb_ct_stats"
)

var mapNames = [...]string{mapCT, mapConfig, mapStats}

// Table is a connection-tracking table: the BPF maps that the tracker program,
// and any program that includes bpf/conntrack.h, read and write. Its methods
// are safe for concurrent use; they see the table as the datapath changes it.
type Table struct {
	ct, config, stats *ebpf.Map
	cfg               Config
	logger            *slog.Logger
}

// New creates a table, or with cfg.PinPath set opens the maps pinned there
// (creating and pinning what is missing). On error nothing it created is left
// behind.
func New(cfg Config) (*Table, error) {
	timeouts := cfg.Timeouts // zero fields: what the pinned table has, else the defaults
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	spec, err := loadTracker()
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	if cfg.PinPath != "" {
		if err := os.MkdirAll(cfg.PinPath, 0o700); err != nil {
			return nil, fmt.Errorf("conntrack: create pin directory: %w", err)
		}
		if cfg.MaxEntries == 0 {
			cfg.MaxEntries = DefaultMaxEntries
			if m, err := ebpf.LoadPinnedMap(filepath.Join(cfg.PinPath, mapCT), nil); err == nil {
				cfg.MaxEntries = int(m.MaxEntries())
				m.Close()
			}
		}
	}

	t := &Table{cfg: cfg, logger: cfg.Logger}
	if t.logger == nil {
		t.logger = slog.New(slog.DiscardHandler)
	}
	var created []string // pins this call made, to undo on error
	fail := func(err error) (*Table, error) {
		t.closeMaps()
		for _, p := range created {
			os.Remove(p)
		}
		return nil, err
	}
	for _, name := range mapNames {
		ms := spec.Maps[name].Copy()
		if name == mapCT {
			ms.MaxEntries = uint32(cfg.MaxEntries)
		}
		var opts ebpf.MapOptions
		if cfg.PinPath != "" {
			ms.Pinning = ebpf.PinByName
			opts.PinPath = cfg.PinPath
			if _, err := os.Stat(filepath.Join(cfg.PinPath, name)); errors.Is(err, os.ErrNotExist) {
				created = append(created, filepath.Join(cfg.PinPath, name))
			}
		}
		m, err := ebpf.NewMapWithOptions(ms, opts)
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fail(fmt.Errorf("conntrack: map pinned at %s does not match this table (%s %d entries, key %d bytes, value %d bytes): %w",
				filepath.Join(cfg.PinPath, name), ms.Type, ms.MaxEntries, ms.KeySize, ms.ValueSize, err))
		}
		if err != nil {
			return fail(fmt.Errorf("conntrack: create map %s: %w", name, kernelError(err, kernel.LRUHash)))
		}
		*t.mapField(name) = m
	}
	// A reopened table keeps its stored timeouts where cfg leaves them zero.
	var stored ctConfig
	if err := t.config.Lookup(uint32(0), &stored); err != nil {
		return fail(fmt.Errorf("conntrack: read timeouts: %w", err))
	}
	if err := t.SetTimeouts(mergeTimeouts(timeouts, stored)); err != nil {
		return fail(err)
	}
	return t, nil
}

// mergeTimeouts fills the zero fields of want from stored (nanoseconds, 0 for
// unset), before the defaults fill the rest.
func mergeTimeouts(want Timeouts, stored ctConfig) Timeouts {
	for _, f := range []struct {
		v      *time.Duration
		stored uint64
	}{
		{&want.TCPEstablished, stored.TCPEstablished},
		{&want.TCPSyn, stored.TCPSyn},
		{&want.TCPClosing, stored.TCPClosing},
		{&want.NonTCP, stored.NonTCP},
	} {
		if *f.v == 0 {
			*f.v = time.Duration(f.stored)
		}
	}
	return want
}

// Open opens a table pinned in dir by New with Config.PinPath, checking that
// the pinned maps have the layout this version of the package uses. It returns
// an error wrapping os.ErrNotExist when nothing is pinned there. Timeouts are
// the ones stored in the table; GC settings are the defaults.
func Open(dir string) (*Table, error) {
	spec, err := loadTracker()
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	t := &Table{logger: slog.New(slog.DiscardHandler)}
	for _, name := range mapNames {
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			t.closeMaps()
			return nil, fmt.Errorf("conntrack: open pinned map: %w", err)
		}
		ms := spec.Maps[name]
		if m.Type() != ms.Type || m.KeySize() != ms.KeySize || m.ValueSize() != ms.ValueSize ||
			(name != mapCT && m.MaxEntries() != ms.MaxEntries) {
			t.closeMaps()
			m.Close()
			return nil, fmt.Errorf("conntrack: map pinned at %s is %s with key %d and value %d bytes, want %s with %d and %d: %w",
				path, m.Type(), m.KeySize(), m.ValueSize(), ms.Type, ms.KeySize, ms.ValueSize, ebpf.ErrMapIncompatible)
		}
		*t.mapField(name) = m
	}
	var c ctConfig
	if err := t.config.Lookup(uint32(0), &c); err != nil {
		t.closeMaps()
		return nil, fmt.Errorf("conntrack: read timeouts: %w", err)
	}
	t.cfg, err = Config{MaxEntries: int(t.ct.MaxEntries()), Timeouts: c.timeouts(), PinPath: dir}.withDefaults()
	if err != nil {
		t.closeMaps()
		return nil, err
	}
	return t, nil
}

// mapField returns the field that holds the map called name.
func (t *Table) mapField(name string) **ebpf.Map {
	switch name {
	case mapCT:
		return &t.ct
	case mapConfig:
		return &t.config
	}
	return &t.stats
}

// MaxEntries is the table's size.
func (t *Table) MaxEntries() int { return t.cfg.MaxEntries }

// Timeouts returns the timeouts in force.
func (t *Table) Timeouts() Timeouts { return t.cfg.Timeouts }

// SetTimeouts changes the timeouts; zero fields take the defaults. Packets
// after the call get expiries from the new values; existing entries keep
// theirs until their next packet.
func (t *Table) SetTimeouts(to Timeouts) error {
	to, err := to.withDefaults()
	if err != nil {
		return err
	}
	if err := t.config.Put(uint32(0), to.config()); err != nil {
		return fmt.Errorf("conntrack: write timeouts: %w", err)
	}
	t.cfg.Timeouts = to
	return nil
}

// MapReplacements adapts spec, a collection whose programs include
// bpf/conntrack.h, to this table, and returns the maps to pass as its
// CollectionOptions.MapReplacements, so that its programs track into this
// table.
func (t *Table) MapReplacements(spec *ebpf.CollectionSpec) (map[string]*ebpf.Map, error) {
	repl := map[string]*ebpf.Map{}
	for _, name := range mapNames {
		m := *t.mapField(name)
		ms, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("conntrack: collection has no map %s: does it include conntrack.h?", name)
		}
		ms.MaxEntries = m.MaxEntries()
		repl[name] = m
	}
	return repl, nil
}

// Pin pins the table's maps in dir, a directory on a bpffs.
func (t *Table) Pin(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("conntrack: create pin directory: %w", err)
	}
	var done []*ebpf.Map
	for _, name := range mapNames {
		m := *t.mapField(name)
		if err := m.Pin(filepath.Join(dir, name)); err != nil {
			for _, d := range done {
				d.Unpin()
			}
			return fmt.Errorf("conntrack: pin %s: %w", name, err)
		}
		done = append(done, m)
	}
	t.cfg.PinPath = dir
	return nil
}

// Unpin removes the table's pins. The maps live on while this Table, or an
// attached program, still uses them.
func (t *Table) Unpin() error {
	var errs []error
	for _, name := range mapNames {
		if err := (*t.mapField(name)).Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("conntrack: unpin %s: %w", name, err))
		}
	}
	t.cfg.PinPath = ""
	return errors.Join(errs...)
}

// Close releases the table's file descriptors. Pinned maps, and maps an
// attached program uses, stay in the kernel.
func (t *Table) Close() error {
	return t.closeMaps()
}

func (t *Table) closeMaps() error {
	var errs []error
	for _, m := range []*ebpf.Map{t.ct, t.config, t.stats} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}
