package kernel

import "github.com/cilium/ebpf"

// FeatureError reports that the running kernel conclusively lacks a
// [Feature]. It matches errors.Is(err, ebpf.ErrNotSupported).
type FeatureError struct {
	// Feature is the missing feature.
	Feature Feature
	// Err is the probe's cause, for example the errno the kernel returned.
	// It may be nil.
	Err error
}

// Error names the feature and what it is, followed by the cause, as in
// "kernel lacks TCX (tc BPF links, Linux 6.6+): <cause>".
func (e *FeatureError) Error() string {
	s := "kernel lacks " + e.Feature.String()
	if d := e.Feature.description(); d != "" {
		s += " (" + d + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the probe's cause.
func (e *FeatureError) Unwrap() error {
	return e.Err
}

// Is reports whether target is [ebpf.ErrNotSupported], so that every
// FeatureError matches it even when its cause doesn't.
func (e *FeatureError) Is(target error) bool {
	return target == ebpf.ErrNotSupported
}
