package conntrack

import (
	"testing"

	"github.com/netblocks/netblocks/internal/testutil"
)

// TestLayout checks the Go mirrors against the C structs' BTF.
func TestLayout(t *testing.T) {
	spec, err := loadTracker()
	if err != nil {
		t.Fatal(err)
	}
	testutil.RequireLayout(t, spec.Types, "ct_tuple", ctTuple{})
	testutil.RequireLayout(t, spec.Types, "ct_entry", ctEntry{})
	testutil.RequireLayout(t, spec.Types, "ct_config", ctConfig{})
}

func TestAttachSmoke(t *testing.T) {
	testutil.RequirePrivileged(t)
	tbl, err := New(Config{MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	ns := testutil.NewNetNS(t)
	err = ns.Do(func() error {
		tr, err := tbl.Attach(1)
		if err != nil {
			return err
		}
		return tr.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}
