package conntrack

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/netblocks/netblocks/internal/kernel"
)

// kernelError returns err naming the feature the kernel lacks, when err says
// something is not supported and a probe of fs confirms which.
func kernelError(err error, fs ...kernel.Feature) error {
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	for _, f := range fs {
		var fe *kernel.FeatureError
		if perr := kernel.Probe(f); errors.As(perr, &fe) {
			return fmt.Errorf("%w (%w)", fe, err)
		}
	}
	return err
}
