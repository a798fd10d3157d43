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
