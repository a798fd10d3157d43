package ipam_test

import (
	"testing"

	"github.com/netblocks/netblocks/ipam"
	"github.com/netblocks/netblocks/ipam/internal/storetest"
)

func TestMemoryStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (ipam.Store, func() ipam.Store) {
		s := ipam.NewMemoryStore()
		t.Cleanup(func() { s.Close() })
		return s, func() ipam.Store { return s }
	})
}
