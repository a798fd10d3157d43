package kernel_test

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/netblocks/netblocks/internal/kernel"
)

// A block checks what it needs before loading anything, so its error names
// the missing feature rather than a verifier or attach failure.
func ExampleRequire() {
	if err := kernel.Require(kernel.TCX, kernel.LRUHash); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			fmt.Println("this kernel cannot run the block:", err)
			return
		}
		fmt.Println("could not probe the kernel:", err)
	}
}

// Print what the running kernel offers, as `go run ./internal/cmd/kernel-report` does.
func ExampleProbeAll() {
	fmt.Println(kernel.ProbeAll())
}
