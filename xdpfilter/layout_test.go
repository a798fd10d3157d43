package xdpfilter

import (
	"testing"

	"github.com/netblocks/netblocks/internal/testutil"
)

func TestLayout(t *testing.T) {
	spec, err := loadXdpfilter()
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]any{
		"xf_config": xfConfig{}, "xf_lpm4_key": xfLPM4Key{}, "xf_lpm6_key": xfLPM6Key{}, "xf_event": xfEvent{},
	} {
		testutil.RequireLayout(t, spec.Types, name, v)
	}
}
