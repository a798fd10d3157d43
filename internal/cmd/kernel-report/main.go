// Command kernel-report prints which kernel features netblocks depends on
// the running kernel has, as a table.
//
// It exits with status 1 if a probe could not decide (for example, when run
// without the privileges to load BPF programs); a missing feature is reported
// but is not a failure.
//
//	go run ./internal/cmd/kernel-report
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/netblocks/netblocks/internal/kernel"
)

func main() {
	r := kernel.ProbeAll()
	fmt.Println(r)

	status := 0
	for _, res := range r.Results {
		var fe *kernel.FeatureError
		if res.Err != nil && !errors.As(res.Err, &fe) {
			fmt.Fprintf(os.Stderr, "kernel-report: %v\n", res.Err)
			status = 1
		}
	}
	os.Exit(status)
}
