package xdpfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
)

// Filter is the prefilter's rule set and counters, in BPF maps that the XDP
// program (Filter.Attach) reads. Its methods are safe for concurrent use.
type Filter struct {
	cfg  Config
	maps map[string]*ebpf.Map

	mu       sync.Mutex
	active   uint32                  // the buffer packets use
	revision uint64                  // bumped by every change
	rules    map[netip.Prefix]uint32 // the active set: rule -> id
	stale    map[netip.Prefix]uint32 // what the inactive buffer still holds
	ids      map[uint32]netip.Prefix // ids in use by either buffer
	nextID   uint32
}

// mapSizes are the sizes New gives each map.
func (c Config) mapSizes() map[string]int {
	sizes := map[string]int{"nb_xf_config": 0, "nb_xf_stats": 0, "nb_xf_sample": 0, "nb_xf_events": 0, "nb_xf_hits": c.maxRuleIDs()}
	for buf := uint32(0); buf < 2; buf++ {
		sizes[mapName(exact4, buf)] = c.MaxExact
		sizes[mapName(exact6, buf)] = c.MaxExact
		sizes[mapName(lpm4, buf)] = c.MaxPrefixes
		sizes[mapName(lpm6, buf)] = c.MaxPrefixes
	}
	return sizes
}

// New creates a filter with no rules, or with cfg.PinPath set, opens the
// filter pinned there (see Open) or creates and pins one. Reopening keeps the
// pinned rules; zero sizes in cfg take the pinned ones, other sizes must match,
// and so must the mode (a filter's mode is never changed by a restart). It
// does not attach the filter: see Attach.
func New(cfg Config) (*Filter, error) {
	asked := cfg // zero sizes: the pinned filter's, if there is one
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.PinPath != "" {
		if _, err := os.Stat(filepath.Join(cfg.PinPath, "nb_xf_config")); err == nil {
			f, err := Open(cfg.PinPath)
			if err != nil {
				return nil, err
			}
			if (asked.MaxExact != 0 && f.cfg.MaxExact != asked.MaxExact) || (asked.MaxPrefixes != 0 && f.cfg.MaxPrefixes != asked.MaxPrefixes) {
				f.Close()
				return nil, fmt.Errorf("xdpfilter: the filter pinned at %s holds %d exact and %d prefix rules per family, not %d and %d: %w",
					cfg.PinPath, f.cfg.MaxExact, f.cfg.MaxPrefixes, cfg.MaxExact, cfg.MaxPrefixes, ebpf.ErrMapIncompatible)
			}
			// Never flip a running filter's mode by accident (a zero Config says Deny).
			if f.cfg.Mode != cfg.Mode {
				f.Close()
				return nil, fmt.Errorf("xdpfilter: the filter pinned at %s is in %v mode, Config.Mode says %v: use Open to take it over as it is", cfg.PinPath, f.cfg.Mode, cfg.Mode)
			}
			if err := f.configure(cfg.Mode, cfg.SampleRate); err != nil {
				f.Close()
				return nil, err
			}
			return f, nil
		}
		if err := os.MkdirAll(cfg.PinPath, 0o700); err != nil {
			return nil, fmt.Errorf("xdpfilter: create pin directory: %w", err)
		}
	}
	spec, err := loadXdpfilter()
	if err != nil {
		return nil, fmt.Errorf("xdpfilter: %w", err)
	}
	f := newFilter(cfg)
	for name, size := range cfg.mapSizes() {
		ms := spec.Maps[name].Copy()
		if size > 0 {
			ms.MaxEntries = uint32(size)
		}
		m, err := ebpf.NewMap(ms)
		if err == nil && cfg.PinPath != "" {
			err = m.Pin(filepath.Join(cfg.PinPath, name))
		}
		if err != nil {
			if m != nil {
				m.Close()
			}
			f.unpinAndClose()
			return nil, fmt.Errorf("xdpfilter: create map %s: %w", name, err)
		}
		f.maps[name] = m
	}
	if err := f.configure(cfg.Mode, cfg.SampleRate); err != nil {
		f.unpinAndClose()
		return nil, err
	}
	return f, nil
}

func newFilter(cfg Config) *Filter {
	return &Filter{cfg: cfg, maps: map[string]*ebpf.Map{}, rules: map[netip.Prefix]uint32{},
		stale: map[netip.Prefix]uint32{}, ids: map[uint32]netip.Prefix{}}
}

// Open takes over the filter pinned in dir by New with Config.PinPath: its
// rules, mode and counters, as a restarted process does. The attached
// program, if pinned too (Attachment.Pin), never stopped filtering.
func Open(dir string) (*Filter, error) {
	spec, err := loadXdpfilter()
	if err != nil {
		return nil, fmt.Errorf("xdpfilter: %w", err)
	}
	f := newFilter(Config{})
	for name, ms := range spec.Maps {
		if name == ".rodata" || name == ".bss" {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("xdpfilter: open pinned filter: %w", err)
		}
		f.maps[name] = m
		if m.Type() != ms.Type || m.KeySize() != ms.KeySize || m.ValueSize() != ms.ValueSize {
			f.Close()
			return nil, fmt.Errorf("xdpfilter: map pinned at %s is %s with key %d and value %d bytes, want %s with %d and %d: %w",
				filepath.Join(dir, name), m.Type(), m.KeySize(), m.ValueSize(), ms.Type, ms.KeySize, ms.ValueSize, ebpf.ErrMapIncompatible)
		}
	}
	var c xfConfig
	if err := f.maps["nb_xf_config"].Lookup(uint32(0), &c); err != nil {
		f.Close()
		return nil, fmt.Errorf("xdpfilter: read config: %w", err)
	}
	f.cfg = Config{Mode: Mode(c.Mode), SampleRate: int(c.Sample), PinPath: dir,
		MaxExact: int(f.maps[mapName(exact4, 0)].MaxEntries()), MaxPrefixes: int(f.maps[mapName(lpm4, 0)].MaxEntries())}
	f.active, f.revision = c.Active, c.Revision
	for buf, into := range map[uint32]map[netip.Prefix]uint32{f.active: f.rules, 1 - f.active: f.stale} {
		if err := f.readBuffer(buf, into); err != nil {
			f.Close()
			return nil, err
		}
	}
	for p, id := range f.rules {
		f.ids[id] = p
		f.nextID = max(f.nextID, id)
	}
	for p, id := range f.stale {
		f.ids[id] = p
		f.nextID = max(f.nextID, id)
	}
	return f, nil
}

// readBuffer reads the rules of buffer buf.
func (f *Filter) readBuffer(buf uint32, into map[netip.Prefix]uint32) error {
	var id uint32
	var (
		a4 [4]byte
		a6 [16]byte
		k4 xfLPM4Key
		k6 xfLPM6Key
	)
	for k, add := range map[kind]func() netip.Prefix{
		exact4: func() netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4(a4), 32) },
		exact6: func() netip.Prefix { return netip.PrefixFrom(netip.AddrFrom16(a6), 128) },
		lpm4:   func() netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4(k4.Addr), int(k4.Prefixlen)) },
		lpm6:   func() netip.Prefix { return netip.PrefixFrom(netip.AddrFrom16(k6.Addr), int(k6.Prefixlen)) },
	} {
		var keyPtr any = map[kind]any{exact4: &a4, exact6: &a6, lpm4: &k4, lpm6: &k6}[k]
		it := f.maps[mapName(k, buf)].Iterate()
		for it.Next(keyPtr, &id) {
			into[add()] = id
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("xdpfilter: read rules: %w", err)
		}
	}
	return nil
}

// configure writes the mode and sample rate (and the active buffer and
// revision as they are).
func (f *Filter) configure(mode Mode, sample int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfg.Mode, f.cfg.SampleRate = mode, sample
	return f.writeConfig(f.active, f.revision)
}

// writeConfig writes the config with the given active buffer and revision:
// one map update, the switch of Replace.
func (f *Filter) writeConfig(active uint32, revision uint64) error {
	c := xfConfig{Active: active, Mode: uint32(f.cfg.Mode), Sample: uint32(f.cfg.SampleRate), Revision: revision}
	if err := f.maps["nb_xf_config"].Put(uint32(0), c); err != nil {
		return fmt.Errorf("xdpfilter: write config: %w", err)
	}
	return nil
}

// Mode is the filter's mode.
func (f *Filter) Mode() Mode { return f.cfg.Mode }

// Revision counts the changes to the rules: each Add, Remove and Replace
// that changed something bumps it by one. Kept in the pinned config.
func (f *Filter) Revision() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.revision
}

// List returns the rules in force, sorted.
func (f *Filter) List() []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]netip.Prefix, 0, len(f.rules))
	for p := range f.rules {
		out = append(out, p)
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Close releases the filter's maps. Pinned maps, and maps an attached
// program uses, stay.
func (f *Filter) Close() error {
	var errs []error
	for _, m := range f.maps {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

func (f *Filter) unpinAndClose() {
	for _, m := range f.maps {
		m.Unpin()
	}
	f.Close()
}

// validate checks rules for a call: valid, no host bits, no zone, and with
// oneFamily, all of one family.
func validate(rules []netip.Prefix, oneFamily bool) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(rules))
	for _, p := range rules {
		switch {
		case !p.IsValid():
			return nil, fmt.Errorf("xdpfilter: rule %v is not a valid prefix", p)
		case p.Addr().Zone() != "":
			return nil, fmt.Errorf("xdpfilter: rule %v has a zone", p)
		case p.Addr().Is4In6():
			return nil, fmt.Errorf("xdpfilter: rule %v is an IPv4-mapped IPv6 prefix: write it as IPv4", p)
		case p.Masked() != p:
			return nil, fmt.Errorf("xdpfilter: rule %v has host bits set (did you mean %v?)", p, p.Masked())
		case oneFamily && len(out) > 0 && p.Addr().Is4() != out[0].Addr().Is4():
			return nil, fmt.Errorf("xdpfilter: rules %v and %v are of different families: one family per call", out[0], p)
		}
		out = append(out, p)
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out), nil
}

// capacity checks that rules fit the maps.
func (f *Filter) capacity(rules map[netip.Prefix]uint32) error {
	var n [4]int
	for p := range rules {
		n[kindOf(p)]++
	}
	for k, name := range []string{"exact IPv4", "exact IPv6", "IPv4 prefix", "IPv6 prefix"} {
		limit := f.cfg.MaxExact
		if kind(k) >= lpm4 {
			limit = f.cfg.MaxPrefixes
		}
		if n[k] > limit {
			return fmt.Errorf("xdpfilter: %d %s rules: more than the maps hold (%d)", n[k], name, limit)
		}
	}
	return nil
}

// allocID reserves a free rule id for p. Its counters are reset by the
// caller (assignIDs), in one batch for all new ids.
func (f *Filter) allocID(p netip.Prefix) (uint32, error) {
	limit := uint32(f.cfg.maxRuleIDs())
	for range limit {
		f.nextID++
		if f.nextID >= limit {
			f.nextID = 1
		}
		if _, used := f.ids[f.nextID]; used {
			continue
		}
		f.ids[f.nextID] = p
		return f.nextID, nil
	}
	return 0, errors.New("xdpfilter: no rule id left")
}
