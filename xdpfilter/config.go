package xdpfilter

import "fmt"

// Mode is what the filter does with IP traffic.
type Mode uint32

const (
	// Deny drops IP traffic whose source matches a rule.
	Deny Mode = 0
	// AllowOnly drops IP traffic whose source matches no rule.
	AllowOnly Mode = 1
)

func (m Mode) String() string {
	switch m {
	case Deny:
		return "deny"
	case AllowOnly:
		return "allow-only"
	}
	return fmt.Sprintf("Mode(%d)", uint32(m))
}

// Defaults of Config.
const (
	DefaultMaxPrefixes = 16384
	DefaultMaxExact    = 65536
)

// Config configures a Filter. The zero value is a deny-mode filter with the
// default sizes, not pinned, without drop events.
type Config struct {
	Mode Mode
	// MaxPrefixes is how many prefix rules (shorter than /32 or /128) each
	// family holds, in an LPM trie. Default 16384.
	MaxPrefixes int
	// MaxExact is how many exact rules (/32 and /128) each family holds, in
	// a hash map, far cheaper per lookup; it holds millions if asked to.
	// Default 65536.
	//
	// Memory: the rule maps take memory only as rules are added, but the
	// per-rule hit counters are a per-CPU array of 4 x (MaxPrefixes +
	// MaxExact) counters, allocated up front: 8 bytes each, per CPU (about
	// 2.6 MB per CPU with the defaults).
	MaxExact int
	// PinPath, if set, is a directory on a bpffs where the maps are pinned,
	// and reused if pinned already (Open takes a pinned filter over).
	PinPath string
	// SampleRate, if set, reports one drop event in every SampleRate drops
	// (see Filter.Events). 0: none.
	SampleRate int
}

// Limits of Config.
const (
	maxPrefixesLimit = 1 << 22
	maxExactLimit    = 1 << 24
)

func (c Config) withDefaults() (Config, error) {
	switch {
	case c.Mode > AllowOnly:
		return c, fmt.Errorf("xdpfilter: unknown mode %d", c.Mode)
	case c.MaxPrefixes < 0 || c.MaxPrefixes > maxPrefixesLimit:
		return c, fmt.Errorf("xdpfilter: MaxPrefixes %d is out of range (0 to %d)", c.MaxPrefixes, maxPrefixesLimit)
	case c.MaxExact < 0 || c.MaxExact > maxExactLimit:
		return c, fmt.Errorf("xdpfilter: MaxExact %d is out of range (0 to %d)", c.MaxExact, maxExactLimit)
	case c.SampleRate < 0:
		return c, fmt.Errorf("xdpfilter: SampleRate %d is negative", c.SampleRate)
	}
	if c.MaxPrefixes == 0 {
		c.MaxPrefixes = DefaultMaxPrefixes
	}
	if c.MaxExact == 0 {
		c.MaxExact = DefaultMaxExact
	}
	return c, nil
}

// maxRuleIDs is the size of the per-rule counters: room for two full sets
// (the active one and a Replace's new one) of both families.
func (c Config) maxRuleIDs() int { return 4*(c.MaxPrefixes+c.MaxExact) + 1 }
