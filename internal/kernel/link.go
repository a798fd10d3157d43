package kernel

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Return values of the probe programs. They never see a packet: the TCX probe
// attaches nowhere and the XDP probe's lo lives in an empty namespace.
const (
	tcxPass = 0 // TCX_PASS
	xdpPass = 2 // XDP_PASS
)

// noSuchIfindex is an interface index no device can have: the kernel reads
// target_ifindex as an int, and interface indexes are positive.
const noSuchIfindex = ^uint32(0)

// xdpFlagsSKBMode is XDP_FLAGS_SKB_MODE: generic XDP, which every device
// supports.
const xdpFlagsSKBMode = 1 << 1

// probeTCX creates a TCX link for a sched_cls program on an interface that
// cannot exist. Since Linux 6.6 the kernel accepts BPF_TCX_INGRESS for a
// sched_cls program and only then looks the device up, failing with ENODEV;
// older kernels reject the attach type (or BPF_LINK_CREATE itself) with
// EINVAL. This is cilium/ebpf's own TCX probe (link/syscalls.go), except that
// errors other than EINVAL stay inconclusive instead of meaning "missing".
func probeTCX() (string, error) {
	prog, err := loadProbeProgram(ebpf.SchedCLS, tcxPass)
	if err != nil {
		return "", err
	}
	defer prog.Close()

	fd, err := linkCreate(prog, noSuchIfindex, ebpf.AttachTCXIngress, 0)
	switch {
	case err == nil:
		_ = unix.Close(fd)
		return "", fmt.Errorf("create tcx link: attached to nonexistent interface index %d", noSuchIfindex)
	case errors.Is(err, unix.ENODEV):
		return "", nil
	case errors.Is(err, unix.EINVAL):
		return "", lacks(fmt.Errorf("create tcx link: %w", err))
	default:
		return "", fmt.Errorf("create tcx link: %w", err)
	}
}

// probeXDPLink creates an XDP link in generic mode on lo of a temporary
// network namespace and closes it again.
//
// Unlike TCX, XDP needs a real device: bpf_xdp_link_attach answers EINVAL both
// for an unknown device and, before Linux 5.9, for the unknown BPF_XDP attach
// type, so a nonexistent interface index cannot tell them apart. On lo, which
// exists and accepts generic XDP, EINVAL can only mean the latter.
func probeXDPLink() (string, error) {
	prog, err := loadProbeProgram(ebpf.XDP, xdpPass)
	if err != nil {
		return "", err
	}
	defer prog.Close()

	err = inTempNetns(func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		fd, err := linkCreate(prog, uint32(lo.Index), ebpf.AttachXDP, xdpFlagsSKBMode)
		switch {
		case err == nil:
			return unix.Close(fd)
		case errors.Is(err, unix.EINVAL):
			return lacks(fmt.Errorf("create xdp link on lo: %w", err))
		default:
			return fmt.Errorf("create xdp link on lo: %w", err)
		}
	})
	return "", err
}

// loadProbeProgram loads a program of type t that returns ret. If the kernel
// doesn't know t, the error matches ebpf.ErrNotSupported.
func loadProbeProgram(t ebpf.ProgramType, ret int32) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:    t,
		License: "MIT",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, ret),
			asm.Return(),
		},
	}, ebpf.ProgramOptions{LogDisabled: true})
	if err != nil {
		return nil, fmt.Errorf("load %s program: %w", t, err)
	}
	return prog, nil
}

// linkCreateAttr is the head of union bpf_attr's link_create member, which
// is all these probes set. The kernel zero-fills the rest.
type linkCreateAttr struct {
	progFD        uint32
	targetIfindex uint32
	attachType    uint32
	flags         uint32
}

// linkCreate issues BPF_LINK_CREATE directly, so that the probes see the
// kernel's errno unaltered (cilium/ebpf's link package runs its own feature
// tests on failure and turns some errors into ErrNotSupported). It returns
// the new link's file descriptor.
func linkCreate(prog *ebpf.Program, ifindex uint32, at ebpf.AttachType, flags uint32) (int, error) {
	attr := linkCreateAttr{
		progFD:        uint32(prog.FD()),
		targetIfindex: ifindex,
		attachType:    uint32(at),
		flags:         flags,
	}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_LINK_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// inTempNetns runs fn on a locked OS thread inside a new network namespace
// and returns fn's error.
//
// The thread is never unlocked, so the Go runtime terminates it when the
// goroutine returns: no other goroutine ever runs in the namespace, nothing
// has to switch back, and the kernel destroys the namespace, with anything fn
// left in it, once the thread is gone.
func inTempNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("create network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
