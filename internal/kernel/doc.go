// Package kernel reports which kernel features the netblocks building blocks
// depend on are present on the running kernel, and why one is missing.
//
// Other packages call [Probe] or [Require] to name what the kernel lacks in
// their errors; test helpers use the same probes to decide whether a test may
// skip. [ProbeAll] collects every probe into a [Report] that prints as a table,
// which is what the kernel-report command shows.
//
// # Error semantics
//
// A probe has three outcomes:
//
//	err == nil:                          the kernel has the feature.
//	errors.As(err, new(*FeatureError)):  the kernel conclusively lacks it; such
//	                                     errors also match
//	                                     errors.Is(err, ebpf.ErrNotSupported).
//	any other error:                     the probe could not decide, for
//	                                     example because the process lacks
//	                                     privileges (EPERM). It is never
//	                                     turned into a guess.
//
// Only nil and a [*FeatureError] are conclusive, as in cilium/ebpf's features
// package.
//
// # Privileges
//
// Most probes load tiny BPF programs or create BPF maps and so need CAP_BPF
// and CAP_NET_ADMIN (or root); the XDP link probe also creates a network
// namespace (CAP_SYS_ADMIN). Without them the probes return an inconclusive
// error wrapping EPERM. The package does not raise RLIMIT_MEMLOCK: on kernels
// older than 5.11 a low limit also shows up as an inconclusive EPERM.
//
// # Side effects
//
// Probes never change the host. The TCX probe asks to attach to an interface
// index that cannot exist and tells from the errno whether the kernel knows
// TCX; the XDP link probe attaches to lo inside a network namespace it
// creates on a locked OS thread and that dies with the thread; programs and
// links a probe creates are closed before it returns. The only outside
// effect is the kernel's own: looking up the "wireguard" generic netlink
// family lets the kernel auto-load the wireguard module if it is installed
// but not loaded, as any WireGuard tool would.
//
// # Caching
//
// This package keeps no state and every call probes again. The map and
// program type probes go through cilium/ebpf's features package, which caches
// conclusive results for the life of the process; the others (including BTF,
// which is parsed anew) are rerun each time, so callers that probe often
// should keep the result.
package kernel
