// Package testutil is the privileged test harness shared by the tests of every
// netblocks package: it decides when a test may skip, builds network
// namespaces and topologies that carry real traffic, mounts private bpffs
// instances and checks hand-written Go structs against the BTF of the C
// structs they mirror.
//
// # Privileges and skips
//
// Tests that touch the kernel call [RequirePrivileged] (or [RequireFeature],
// which implies it). Without CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF in the
// effective set such a test skips with a reason, unless the environment
// variable named by [RequirePrivilegedEnv] is "1" (as in CI), in which case it
// fails: CI must prove the datapath works, not skip it.
//
// A test skips for a missing kernel feature only when a probe of package
// internal/kernel says so conclusively ([RequireFeature], [SkipOrFail]); that
// skip is allowed in CI too. Any other error fails the test, so a skip never
// hides a bug.
//
// # Namespaces and lifetime
//
// Everything a helper creates belongs to one test and is removed by
// testing.TB.Cleanup: named network namespaces from [NewNetNS] and
// [NewTopology], and bpffs mounts from [TempBPFFS]. Names are unique per test,
// so tests in different packages may run in parallel. Nothing is ever created
// in the initial network namespace, and nothing is pinned under /sys/fs/bpf.
//
// Code that must run inside a namespace goes through [NetNS.Do], which runs a
// function on a locked OS thread switched into the namespace and returns its
// error; assertions stay outside the function, on the test goroutine. Prefer
// [NetNS.Netlink], a netlink handle opened in the namespace, for link,
// address and route work.
//
// # Struct layouts
//
// [CheckLayout] and [RequireLayout] compare a Go struct that mirrors a C
// struct by hand with that struct's BTF, reporting every size and offset
// mismatch at once.
package testutil
