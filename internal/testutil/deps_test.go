package testutil

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBlocksStayIndependent checks that importing one block does not pull
// in the heavy dependencies that only its sub-packages or the examples may
// use: etcd and gRPC (ipam/etcdstore, l2announce/etcdelect) and the CNI
// libraries.
func TestBlocksStayIndependent(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("listing dependencies needs the go command: %v", err)
	}
	forbidden := []string{"go.etcd.io/etcd", "google.golang.org/grpc", "github.com/containernetworking/"}
	for _, block := range []string{"conntrack", "lbmap", "xdpfilter", "vxlan", "wireguard", "l2announce", "ipam"} {
		pkg := "github.com/netblocks/netblocks/" + block
		out, err := exec.Command(goTool, "list", "-deps", pkg).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("package %s depends on %s", block, dep)
				}
			}
		}
	}
}
