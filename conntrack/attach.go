package conntrack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/netblocks/netblocks/internal/kernel"
)

// Pin names of a Tracker's links.
const (
	pinIngress = "nb_ct_ingress"
	pinEgress  = "nb_ct_egress"
)

// Tracker is the standalone tracker attached to tc ingress and egress of one
// interface: it tracks every connection through it into a Table and passes
// every packet on unchanged (it returns TCX_NEXT, so programs after it, and
// the stack, decide the packet's fate).
type Tracker struct {
	ingress, egress link.Link
}

// Attach loads the tracker program into t and attaches it to tc ingress and
// egress of the interface with index ifindex, in the calling thread's network
// namespace, with TCX (Linux 6.6). If either attachment fails, neither stays.
func (t *Table) Attach(ifindex int) (*Tracker, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("conntrack: attach: interface index %d is not valid", ifindex)
	}
	progs, err := t.loadPrograms()
	if err != nil {
		return nil, err
	}
	// The links hold the programs; our descriptors can go.
	defer progs.Close()

	in, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: progs.NbCtIngress, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, fmt.Errorf("conntrack: attach to ingress of interface %d: %w", ifindex, kernelError(err, kernel.TCX))
	}
	out, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: progs.NbCtEgress, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		in.Close()
		return nil, fmt.Errorf("conntrack: attach to egress of interface %d: %w", ifindex, kernelError(err, kernel.TCX))
	}
	return &Tracker{ingress: in, egress: out}, nil
}

// loadPrograms loads the tracker programs onto t's maps.
func (t *Table) loadPrograms() (*trackerPrograms, error) {
	spec, err := loadTracker()
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	repl, err := t.MapReplacements(spec)
	if err != nil {
		return nil, err
	}
	var progs trackerPrograms
	if err := spec.LoadAndAssign(&progs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return nil, fmt.Errorf("conntrack: load tracker: %w", err)
	}
	return &progs, nil
}

// OpenTracker takes over a tracker pinned in dir by Tracker.Pin, as a
// restarted process does: tracking never stopped meanwhile.
func OpenTracker(dir string) (*Tracker, error) {
	in, err := link.LoadPinnedLink(filepath.Join(dir, pinIngress), nil)
	if err != nil {
		return nil, fmt.Errorf("conntrack: open pinned tracker: %w", err)
	}
	out, err := link.LoadPinnedLink(filepath.Join(dir, pinEgress), nil)
	if err != nil {
		in.Close()
		return nil, fmt.Errorf("conntrack: open pinned tracker: %w", err)
	}
	return &Tracker{ingress: in, egress: out}, nil
}

// Pin pins the tracker's links in dir, a directory on a bpffs, so the tracker
// stays attached after Close and after the process exits. Pin the Table too,
// to read what it tracks from the next process.
func (tr *Tracker) Pin(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("conntrack: create pin directory: %w", err)
	}
	if err := tr.ingress.Pin(filepath.Join(dir, pinIngress)); err != nil {
		return fmt.Errorf("conntrack: pin tracker: %w", err)
	}
	if err := tr.egress.Pin(filepath.Join(dir, pinEgress)); err != nil {
		tr.ingress.Unpin()
		return fmt.Errorf("conntrack: pin tracker: %w", err)
	}
	return nil
}

// Unpin removes the tracker's pins: it is detached when it is closed.
func (tr *Tracker) Unpin() error {
	return errors.Join(tr.ingress.Unpin(), tr.egress.Unpin())
}

// Close releases the tracker. An unpinned tracker is detached; a pinned one
// keeps tracking.
func (tr *Tracker) Close() error {
	return errors.Join(tr.ingress.Close(), tr.egress.Close())
}
