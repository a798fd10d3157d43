package xdpfilter

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// AttachMode is how the filter attaches to an interface.
type AttachMode int

const (
	// Auto attaches in native (driver) mode, falling back to generic mode
	// when the driver has no XDP support; Attachment.Fallback says why.
	Auto AttachMode = iota
	// Native attaches in driver mode only: fastest, before any skb exists.
	Native
	// Generic attaches in generic (skb) mode, which works on any interface.
	Generic
)

func (m AttachMode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Native:
		return "native"
	case Generic:
		return "generic"
	}
	return fmt.Sprintf("AttachMode(%d)", int(m))
}

// pinLink is the file name of a pinned attachment.
const pinLink = "nb_xf_link"

// Attachment is the filter attached to one interface.
type Attachment struct {
	l        link.Link
	mode     AttachMode
	fallback error
}

// Attach loads the filter program into f's maps and attaches it to the
// interface with index ifindex, in the calling thread's network namespace.
func (f *Filter) Attach(ifindex int, mode AttachMode) (*Attachment, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("xdpfilter: attach: interface index %d is not valid", ifindex)
	}
	if mode < Auto || mode > Generic {
		return nil, fmt.Errorf("xdpfilter: attach: unknown mode %d", mode)
	}
	progs, err := f.loadProgram()
	if err != nil {
		return nil, err
	}
	defer progs.Close()

	a := &Attachment{mode: mode}
	if mode != Generic {
		a.l, err = link.AttachXDP(link.XDPOptions{Program: progs.NbXdpFilter, Interface: ifindex, Flags: link.XDPDriverMode})
		if err == nil {
			a.mode = Native
			return a, nil
		}
		if mode == Native {
			return nil, fmt.Errorf("xdpfilter: attach in native mode to interface %d: %w", ifindex, err)
		}
		a.fallback = fmt.Errorf("native mode unavailable on interface %d: %w", ifindex, err)
	}
	a.l, err = link.AttachXDP(link.XDPOptions{Program: progs.NbXdpFilter, Interface: ifindex, Flags: link.XDPGenericMode})
	if err != nil {
		return nil, fmt.Errorf("xdpfilter: attach in generic mode to interface %d: %w", ifindex, errors.Join(err, a.fallback))
	}
	a.mode = Generic
	return a, nil
}

// loadProgram loads the filter program onto f's maps.
func (f *Filter) loadProgram() (*xdpfilterPrograms, error) {
	spec, err := loadXdpfilter()
	if err != nil {
		return nil, fmt.Errorf("xdpfilter: %w", err)
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range f.maps {
		spec.Maps[name].MaxEntries = m.MaxEntries()
		repl[name] = m
	}
	var progs xdpfilterPrograms
	if err := spec.LoadAndAssign(&progs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return nil, fmt.Errorf("xdpfilter: load program: %w", err)
	}
	return &progs, nil
}

// Mode is the mode the filter attached in: Native or Generic.
func (a *Attachment) Mode() AttachMode { return a.mode }

// Fallback says why Auto fell back to generic mode, or is nil.
func (a *Attachment) Fallback() error { return a.fallback }

// Pin pins the attachment in dir, a directory on a bpffs, so the filter
// stays attached after Close and after the process exits; pin the Filter's
// maps too (Config.PinPath) to change its rules from the next process.
func (a *Attachment) Pin(dir string) error {
	if err := a.l.Pin(filepath.Join(dir, pinLink)); err != nil {
		return fmt.Errorf("xdpfilter: pin attachment: %w", err)
	}
	return nil
}

// Unpin removes the pin: the filter detaches when the attachment is closed.
func (a *Attachment) Unpin() error { return a.l.Unpin() }

// OpenAttachment takes over an attachment pinned in dir: filtering never
// stopped meanwhile. Its Mode is unknown (Auto) unless you know it.
func OpenAttachment(dir string) (*Attachment, error) {
	l, err := link.LoadPinnedLink(filepath.Join(dir, pinLink), nil)
	if err != nil {
		return nil, fmt.Errorf("xdpfilter: open pinned attachment: %w", err)
	}
	return &Attachment{l: l, mode: Auto}, nil
}

// Close releases the attachment: detached unless pinned.
func (a *Attachment) Close() error { return a.l.Close() }
