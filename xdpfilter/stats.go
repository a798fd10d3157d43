package xdpfilter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf/ringbuf"
)

// Stats are the filter's totals since its maps were created, summed over CPUs.
type Stats struct {
	Passed      uint64 // frames passed
	Dropped     uint64 // frames dropped
	PassedNonIP uint64 // of the passed: not IP (ARP, LLDP, ...)
	Short       uint64 // frames too short to parse: passed in Deny mode, dropped in AllowOnly
	Matched     uint64 // IP frames whose source matched a rule
	EventsLost  uint64 // drop events the ring buffer had no room for
}

// Stats reads the totals.
func (f *Filter) Stats() (Stats, error) {
	var s Stats
	for idx, p := range map[uint32]*uint64{statPassed: &s.Passed, statDropped: &s.Dropped, statPassedNonIP: &s.PassedNonIP,
		statShort: &s.Short, statMatched: &s.Matched, statEventsLost: &s.EventsLost} {
		var perCPU []uint64
		if err := f.maps["nb_xf_stats"].Lookup(idx, &perCPU); err != nil {
			return Stats{}, fmt.Errorf("xdpfilter: read stats: %w", err)
		}
		for _, v := range perCPU {
			*p += v
		}
	}
	return s, nil
}

// Hits returns how many frames each rule in force matched, summed over CPUs.
// A rule's count survives Replace as long as the rule stays in the set.
func (f *Filter) Hits() (map[netip.Prefix]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[netip.Prefix]uint64, len(f.rules))
	var perCPU []uint64
	for p, id := range f.rules {
		if err := f.maps["nb_xf_hits"].Lookup(id, &perCPU); err != nil {
			return nil, fmt.Errorf("xdpfilter: read hits of %v: %w", p, err)
		}
		var n uint64
		for _, v := range perCPU {
			n += v
		}
		out[p] = n
	}
	return out, nil
}

// DropReason is why a frame was dropped.
type DropReason uint8

const (
	DropMatch   DropReason = 1 // Deny mode: the source matched a rule
	DropNoMatch DropReason = 2 // AllowOnly mode: the source matched no rule
	DropShort   DropReason = 3 // AllowOnly mode: too short to parse
)

func (r DropReason) String() string {
	switch r {
	case DropMatch:
		return "match"
	case DropNoMatch:
		return "no match"
	case DropShort:
		return "too short"
	}
	return fmt.Sprintf("DropReason(%d)", uint8(r))
}

// DropEvent reports drops, sampled: one event per Config.SampleRate drops
// on a CPU.
type DropEvent struct {
	Source netip.Addr   // the dropped frame's source; invalid for DropShort
	Rule   netip.Prefix // the rule it matched, if the rule is still known
	Count  uint32       // drops this event stands for
	Reason DropReason
}

// Events reads drop events.
type Events struct {
	r *ringbuf.Reader
	f *Filter
}

// Events starts reading the drop events; there are some only with
// Config.SampleRate set. Close it when done. One reader at a time.
func (f *Filter) Events() (*Events, error) {
	r, err := ringbuf.NewReader(f.maps["nb_xf_events"])
	if err != nil {
		return nil, fmt.Errorf("xdpfilter: read drop events: %w", err)
	}
	return &Events{r: r, f: f}, nil
}

// Read waits for the next event. It returns an error wrapping os.ErrClosed
// once Close is called.
func (e *Events) Read() (DropEvent, error) {
	rec, err := e.r.Read()
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return DropEvent{}, fmt.Errorf("xdpfilter: read drop event: %w", os.ErrClosed)
		}
		return DropEvent{}, fmt.Errorf("xdpfilter: read drop event: %w", err)
	}
	var raw xfEvent // checked against the C struct by TestLayout
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return DropEvent{}, fmt.Errorf("xdpfilter: decode drop event of %d bytes: %w", len(rec.RawSample), err)
	}
	ev := DropEvent{Count: raw.Count, Reason: DropReason(raw.Reason)}
	switch raw.Family {
	case 4:
		ev.Source = netip.AddrFrom4([4]byte(raw.Addr[:4]))
	case 6:
		ev.Source = netip.AddrFrom16(raw.Addr)
	}
	if raw.Rule != 0 {
		e.f.mu.Lock()
		ev.Rule = e.f.ids[raw.Rule]
		e.f.mu.Unlock()
	}
	return ev, nil
}

// Close stops reading; a blocked Read returns.
func (e *Events) Close() error { return e.r.Close() }
