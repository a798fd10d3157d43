package etcdelect_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestL2AnnounceDoesNotImportEtcd checks that importing package l2announce
// alone does not pull in etcd or gRPC, which is why this package is separate.
func TestL2AnnounceDoesNotImportEtcd(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("cannot list dependencies without the go command: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/netblocks/netblocks/l2announce").Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps: %v\n%s", err, stderr)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "go.etcd.io/etcd") || strings.Contains(pkg, "google.golang.org/grpc") {
			t.Errorf("package l2announce depends on %s", pkg)
		}
	}
}
