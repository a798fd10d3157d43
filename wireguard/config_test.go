package wireguard

import (
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "nb_wg0" || cfg.ListenPort != 51871 || cfg.MTU != 1420 || cfg.UnderlayMTU != 1500 ||
		cfg.Backend != Auto || cfg.RouteProtocol != 79 || cfg.Logger == nil {
		t.Errorf("defaults: %+v", cfg)
	}

	for _, tc := range []struct {
		cfg  Config
		mtu  int
		port uint16
	}{
		{Config{UnderlayMTU: 9000}, 8920, 51871},
		{Config{UnderlayMTU: 9000, MTU: 1280}, 1280, 51871},
		{Config{MTU: 1380, ListenPort: 51820}, 1380, 51820},
	} {
		cfg, err := tc.cfg.withDefaults()
		if err != nil {
			t.Errorf("%+v: %v", tc.cfg, err)
			continue
		}
		if cfg.MTU != tc.mtu || cfg.ListenPort != tc.port {
			t.Errorf("%+v: MTU %d, port %d; want %d, %d", tc.cfg, cfg.MTU, cfg.ListenPort, tc.mtu, tc.port)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		err string
	}{
		{Config{Name: "sixteen-bytes-xx"}, `"sixteen-bytes-xx" is longer than 15 bytes`},
		{Config{Name: "wg/0"}, "contains '/'"},
		{Config{Name: "wg%d"}, "'%'"},
		{Config{MTU: -1}, "MTU -1 is negative"},
		{Config{MTU: 60}, "MTU 60 is below the minimum of 68"},
		{Config{MTU: 70000}, "above the maximum"},
		{Config{UnderlayMTU: 100}, "underlay MTU 100 leaves 20 for the tunnel"},
		{Config{UnderlayMTU: -5}, "underlay MTU -5 is negative"},
		{Config{Backend: 7}, "unknown Backend(7)"},
		{Config{RouteProtocol: 4}, "route protocol 4 is reserved"},
	} {
		_, err := tc.cfg.withDefaults()
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%+v: error %v, want one containing %q", tc.cfg, err, tc.err)
		}
	}
}

func TestBackendString(t *testing.T) {
	for b, want := range map[Backend]string{Auto: "auto", Kernel: "kernel", Embedded: "embedded", 9: "Backend(9)"} {
		if got := b.String(); got != want {
			t.Errorf("Backend(%d).String() = %q, want %q", int(b), got, want)
		}
	}
}
