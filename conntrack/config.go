package conntrack

import (
	"fmt"
	"log/slog"
	"time"
)

// Defaults of Config.
const (
	DefaultMaxEntries = 262144
	// MaxMaxEntries is the largest table New accepts. The kernel preallocates
	// an LRU map: at about 150 bytes an entry, this is some 2.5 GiB.
	MaxMaxEntries = 1 << 24

	DefaultTCPEstablished = 6 * time.Hour
	DefaultTCPSyn         = 60 * time.Second
	DefaultTCPClosing     = 10 * time.Second
	DefaultNonTCP         = 60 * time.Second

	DefaultGCInterval    = 5 * time.Minute
	DefaultGCMinInterval = 10 * time.Second
	DefaultGCMaxInterval = 12 * time.Hour
)

// Config configures a Table. The zero value is a working table of
// DefaultMaxEntries entries with the default timeouts, not pinned.
type Config struct {
	// MaxEntries is the table's size: when it is full, the least recently
	// used entries make room for new flows. Default DefaultMaxEntries; at most
	// MaxMaxEntries. With PinPath set and maps already pinned there, zero
	// means the pinned table's size.
	MaxEntries int

	// Timeouts are the lifetimes of an entry in each state; zero fields take
	// the defaults, or, when New reopens a pinned table, the values stored in
	// it.
	Timeouts Timeouts

	// PinPath, if set, is a directory on a bpffs where the table's maps are
	// pinned (created if missing). Maps already pinned there are reused, after
	// a check that they have this table's layout and size: New never replaces
	// a pinned map, it fails instead.
	PinPath string

	// GCInterval is the first interval of RunGC; default 5 minutes. RunGC
	// then shortens it when a run deletes many entries (down to
	// GCMinInterval, default 10 s) and lengthens it when few (up to
	// GCMaxInterval, default 12 h).
	GCInterval, GCMinInterval, GCMaxInterval time.Duration

	// Logger receives RunGC's reports; nil discards them.
	Logger *slog.Logger
}

// Timeouts are how long an entry lives after its last packet, by state.
type Timeouts struct {
	TCPEstablished time.Duration // default 6 h
	TCPSyn         time.Duration // a TCP connection not yet established; default 60 s
	TCPClosing     time.Duration // default 10 s
	NonTCP         time.Duration // UDP, ICMP and the rest; default 60 s
}

// withDefaults fills zero fields with the defaults and rejects bad values.
func (t Timeouts) withDefaults() (Timeouts, error) {
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"TCPEstablished", &t.TCPEstablished, DefaultTCPEstablished},
		{"TCPSyn", &t.TCPSyn, DefaultTCPSyn},
		{"TCPClosing", &t.TCPClosing, DefaultTCPClosing},
		{"NonTCP", &t.NonTCP, DefaultNonTCP},
	} {
		switch {
		case *f.v < 0:
			return t, fmt.Errorf("conntrack: timeout %s is negative (%v)", f.name, *f.v)
		case *f.v == 0:
			*f.v = f.def
		case *f.v < time.Second:
			return t, fmt.Errorf("conntrack: timeout %s of %v is under the 1 s minimum", f.name, *f.v)
		}
	}
	return t, nil
}

func (t Timeouts) config() ctConfig {
	return ctConfig{
		TCPEstablished: uint64(t.TCPEstablished),
		TCPSyn:         uint64(t.TCPSyn),
		TCPClosing:     uint64(t.TCPClosing),
		NonTCP:         uint64(t.NonTCP),
	}
}

func (c ctConfig) timeouts() Timeouts {
	t, _ := Timeouts{
		TCPEstablished: time.Duration(c.TCPEstablished),
		TCPSyn:         time.Duration(c.TCPSyn),
		TCPClosing:     time.Duration(c.TCPClosing),
		NonTCP:         time.Duration(c.NonTCP),
	}.withDefaults()
	return t
}

// withDefaults resolves c's defaults and rejects bad values.
func (c Config) withDefaults() (Config, error) {
	var err error
	switch {
	case c.MaxEntries < 0:
		return c, fmt.Errorf("conntrack: MaxEntries %d is negative", c.MaxEntries)
	case c.MaxEntries > MaxMaxEntries:
		return c, fmt.Errorf("conntrack: MaxEntries %d is over the limit of %d", c.MaxEntries, MaxMaxEntries)
	case c.MaxEntries == 0 && c.PinPath == "":
		c.MaxEntries = DefaultMaxEntries
	}
	if c.Timeouts, err = c.Timeouts.withDefaults(); err != nil {
		return c, err
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"GCInterval", &c.GCInterval, DefaultGCInterval},
		{"GCMinInterval", &c.GCMinInterval, DefaultGCMinInterval},
		{"GCMaxInterval", &c.GCMaxInterval, DefaultGCMaxInterval},
	} {
		if *d.v < 0 {
			return c, fmt.Errorf("conntrack: %s is negative (%v)", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.GCMinInterval > c.GCMaxInterval {
		return c, fmt.Errorf("conntrack: GCMinInterval %v is above GCMaxInterval %v", c.GCMinInterval, c.GCMaxInterval)
	}
	c.GCInterval = min(max(c.GCInterval, c.GCMinInterval), c.GCMaxInterval)
	return c, nil
}
