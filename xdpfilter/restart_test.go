package xdpfilter

import (
	"errors"
	"testing"

	"github.com/netblocks/netblocks/internal/testutil"
)

// TestTrafficRestartTakeover pins the maps and the attachment, releases
// every descriptor this process holds (as a process that exits does), checks
// that filtering goes on, then takes the filter over as a restarted process
// does and changes its rules.
func TestTrafficRestartTakeover(t *testing.T) {
	lab := newTrafficLab(t)
	srv := serveTCP(t, lab.node)
	for _, c := range []*testutil.Node{lab.a, lab.b} {
		if errs := reach(c, lab.node, srv, 3); errs != nil {
			t.Fatalf("no filter: client %v: %v", c.Addr.Addr(), errors.Join(errs...))
		}
	}
	dir := testutil.TempBPFFS(t) + "/xf"
	f, err := New(Config{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Add(hosts(lab.a)[0]); err != nil {
		t.Fatal(err)
	}
	if err := f.Add(hosts(lab.a)[1]); err != nil {
		t.Fatal(err)
	}
	var a *Attachment
	if err := lab.node.NS.Do(func() error {
		var err error
		a, err = f.Attach(lab.node.Index, Auto)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.Pin(dir); err != nil {
		t.Fatal(err)
	}
	// "Exit": nothing of the filter stays open in this process.
	if err := errors.Join(a.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	if errs := reach(lab.a, lab.node, srv, 1); len(errs) != 4 {
		t.Errorf("with no process holding the filter, A got through on %d of 4 probes", 4-len(errs))
	}
	if errs := reach(lab.b, lab.node, srv, 3); errs != nil {
		t.Errorf("with no process holding the filter, B was blocked: %v", errors.Join(errs...))
	}

	// "Restart": take the filter over and swap the roles of A and B.
	f2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	a2, err := OpenAttachment(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := f2.List(); len(got) != 2 || f2.Revision() != 2 {
		t.Fatalf("reopened filter has rules %v at revision %d, want A's two at 2", got, f2.Revision())
	}
	if err := f2.Replace(hosts(lab.b)); err != nil {
		t.Fatal(err)
	}
	if errs := reach(lab.a, lab.node, srv, 3); errs != nil {
		t.Errorf("after the new process's Replace, A was blocked: %v", errors.Join(errs...))
	}
	if errs := reach(lab.b, lab.node, srv, 1); len(errs) != 4 {
		t.Errorf("after the new process's Replace, B got through on %d of 4 probes", 4-len(errs))
	}
	// Unpin and close: the filter detaches.
	if err := errors.Join(a2.Unpin(), a2.Close()); err != nil {
		t.Fatal(err)
	}
	if errs := reach(lab.b, lab.node, srv, 3); errs != nil {
		t.Errorf("after detaching, B was still blocked: %v", errors.Join(errs...))
	}
}
