package kernel

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"golang.org/x/sys/unix"
)

// Result is the outcome of one feature's probe.
type Result struct {
	// Feature is the probed feature.
	Feature Feature
	// Err is what [Probe] returned for Feature: nil if the kernel has it, a
	// [*FeatureError] if it lacks it, another error if the probe could not
	// decide.
	Err error
	// Detail says what the probe found when the kernel has the feature, such
	// as the cgroup v2 mount point or the WireGuard generic netlink family
	// ID. It is often empty.
	Detail string
}

// Report is the outcome of every probe on the running kernel.
type Report struct {
	// Release is the kernel release, as uname -r prints it.
	Release string
	// Results holds one Result per feature, in the order of [Features].
	Results []Result
}

// ProbeAll probes every feature in [Features] and reports the outcomes. It
// never fails as a whole: each probe's error is in its Result.
func ProbeAll() Report {
	r := Report{Release: kernelRelease()}
	for _, f := range Features() {
		detail, err := probe(f)
		r.Results = append(r.Results, Result{Feature: f, Err: err, Detail: detail})
	}
	return r
}

// kernelRelease returns uname's release string, or a description of why it
// is unknown.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Sprintf("unknown (uname: %s)", err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

// String formats r as an aligned table: a "kernel <release>" line, then one
// line per result saying "yes" (with the detail, if any), "no: <cause>" for
// a [*FeatureError], or "unknown: <error>" when the probe could not decide.
// There is no trailing newline.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kernel %s\n", r.Release)
	w := tabwriter.NewWriter(&b, 0, 0, 3, ' ', 0)
	for _, res := range r.Results {
		fmt.Fprintf(w, "%s\t%s\n", res.Feature, res.status())
	}
	w.Flush()
	return strings.TrimSuffix(b.String(), "\n")
}

// status is the second column of res's line in [Report.String].
func (res Result) status() string {
	var fe *FeatureError
	switch {
	case res.Err == nil && res.Detail == "":
		return "yes"
	case res.Err == nil:
		return "yes (" + res.Detail + ")"
	case errors.As(res.Err, &fe) && fe.Err == nil:
		return "no"
	case errors.As(res.Err, &fe):
		return "no: " + oneLine(fe.Err.Error())
	default:
		return "unknown: " + oneLine(res.Err.Error())
	}
}

// oneLine keeps a multi-line error message (errors.Join, verifier logs) on
// its table row.
func oneLine(s string) string {
	return strings.ReplaceAll(s, "\n", "; ")
}
