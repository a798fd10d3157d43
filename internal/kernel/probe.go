package kernel

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Probe reports whether the running kernel has f: nil if it does; a
// [*FeatureError] (which matches errors.Is(err, ebpf.ErrNotSupported)) if the
// kernel conclusively lacks it; any other error if the probe itself could not
// decide, for example EPERM when the process is not privileged. An unknown
// Feature value is such an other error.
func Probe(f Feature) error {
	_, err := probe(f)
	return err
}

// Require probes each feature in turn and returns nil if the kernel has them
// all. Otherwise it returns errors.Join of the errors [Probe] returned: a
// [*FeatureError] per missing feature and, as they are, the errors of probes
// that could not decide.
func Require(fs ...Feature) error {
	var errs []error
	for _, f := range fs {
		if err := Probe(f); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// probe runs the probe for f and classifies its outcome as [Probe] documents.
// detail describes what was found when the kernel has f; it may be empty.
func probe(f Feature) (detail string, err error) {
	var fn func() (string, error)
	switch f {
	case BTF:
		fn = probeBTF
	case TCX:
		fn = probeTCX
	case XDPLink:
		fn = probeXDPLink
	case LRUHash:
		fn = func() (string, error) { return "", features.HaveMapType(ebpf.LRUHash) }
	case LPMTrie:
		fn = func() (string, error) { return "", features.HaveMapType(ebpf.LPMTrie) }
	case RingBuf:
		fn = func() (string, error) { return "", features.HaveMapType(ebpf.RingBuf) }
	case CgroupSockAddr:
		fn = probeCgroupSockAddr
	case WireGuard:
		fn = probeWireGuard
	default:
		return "", fmt.Errorf("probe %s: unknown feature", f)
	}

	detail, err = fn()
	if err != nil {
		return "", classify(f, err)
	}
	return detail, nil
}

// classify turns the non-nil error of f's probe into what [Probe] returns: a
// [*FeatureError] if err is conclusive (marked by lacks, or matching
// ebpf.ErrNotSupported as cilium/ebpf's probes do), else err with the
// feature's name.
func classify(f Feature, err error) error {
	var lack *lackError
	switch {
	case errors.As(err, &lack):
		return &FeatureError{Feature: f, Err: lack.err}
	case errors.Is(err, ebpf.ErrNotSupported):
		return &FeatureError{Feature: f, Err: err}
	default:
		return fmt.Errorf("probe %s: %w", f, err)
	}
}

// lackError marks a probe's cause as conclusive: the kernel lacks the
// feature. Probes return it, unwrapped, where the cause is a plain errno and
// doesn't already match ebpf.ErrNotSupported.
type lackError struct {
	err error
}

// lacks marks err as the cause of a conclusive "the kernel lacks it".
func lacks(err error) error {
	return &lackError{err: err}
}

func (e *lackError) Error() string { return e.err.Error() }

func (e *lackError) Unwrap() error { return e.err }

// vmlinuxBTF is where the kernel exposes its own BTF.
const vmlinuxBTF = "/sys/kernel/btf/vmlinux"

// probeBTF loads the kernel's BTF the way netblocks' loaders do. cilium/ebpf
// falls back to vmlinux files on disk when vmlinuxBTF is absent, and wraps
// ebpf.ErrNotSupported when it finds none.
func probeBTF() (string, error) {
	if _, err := btf.LoadKernelSpec(); err != nil {
		return "", fmt.Errorf("load kernel BTF: %w", err)
	}
	if _, err := os.Stat(vmlinuxBTF); err != nil {
		return "vmlinux file on disk", nil
	}
	return vmlinuxBTF, nil
}

// probeCgroupSockAddr checks that the kernel loads cgroup sock_addr programs
// and that a cgroup v2 hierarchy is mounted to attach them to.
func probeCgroupSockAddr() (string, error) {
	if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil {
		return "", err
	}
	path, found, err := findCgroup2(mountinfoPath)
	if err != nil {
		return "", err
	}
	if !found {
		return "", lacks(errNoCgroup2())
	}
	return path, nil
}

// wireGuardFamily is the generic netlink family the wireguard module
// registers.
const wireGuardFamily = "wireguard"

// probeWireGuard looks up the wireguard generic netlink family. The kernel
// answers ENOENT when no module registered it; before answering, it tries to
// auto-load the module (request_module "net-pf-16-proto-16-family-wireguard"),
// as any WireGuard tool's lookup would.
func probeWireGuard() (string, error) {
	h, err := netlink.NewHandle(unix.NETLINK_GENERIC)
	if err != nil {
		return "", fmt.Errorf("open generic netlink socket: %w", err)
	}
	defer h.Close()

	fam, err := h.GenlFamilyGet(wireGuardFamily)
	if errors.Is(err, unix.ENOENT) {
		return "", lacks(fmt.Errorf("get generic netlink family %q: %w", wireGuardFamily, err))
	}
	if err != nil {
		return "", fmt.Errorf("get generic netlink family %q: %w", wireGuardFamily, err)
	}
	return fmt.Sprintf("generic netlink family %d, version %d", fam.ID, fam.Version), nil
}
