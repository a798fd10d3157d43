package kernel

import "fmt"

// Feature is a kernel capability a netblocks block depends on.
type Feature int

// The features [Probe] knows. Each one's comment says what its probe checks.
const (
	// BTF is kernel BTF type information, loaded by btf.LoadKernelSpec from
	// /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF).
	BTF Feature = iota + 1
	// TCX is tc BPF links (BPF_TCX_INGRESS/EGRESS), Linux 6.6.
	TCX
	// XDPLink is XDP attached through a bpf_link, Linux 5.9.
	XDPLink
	// LRUHash is BPF_MAP_TYPE_LRU_HASH, Linux 4.10.
	LRUHash
	// LPMTrie is BPF_MAP_TYPE_LPM_TRIE, Linux 4.11.
	LPMTrie
	// RingBuf is BPF_MAP_TYPE_RINGBUF, Linux 5.8.
	RingBuf
	// CgroupSockAddr is BPF_PROG_TYPE_CGROUP_SOCK_ADDR programs (Linux 4.17)
	// together with a mounted cgroup v2 hierarchy to attach them to.
	CgroupSockAddr
	// WireGuard is the kernel's wireguard module, seen as the generic netlink
	// family "wireguard" (Linux 5.6, CONFIG_WIREGUARD).
	WireGuard
)

// Features returns every [Feature] in declaration order. The slice is new on
// each call.
func Features() []Feature {
	return []Feature{BTF, TCX, XDPLink, LRUHash, LPMTrie, RingBuf, CgroupSockAddr, WireGuard}
}

// String returns the feature's short name, such as "TCX" or
// "WireGuard module", or "Feature(N)" for a value this package doesn't know.
func (f Feature) String() string {
	switch f {
	case BTF:
		return "BTF"
	case TCX:
		return "TCX"
	case XDPLink:
		return "XDP link"
	case LRUHash:
		return "LRU hash map"
	case LPMTrie:
		return "LPM trie map"
	case RingBuf:
		return "ring buffer"
	case CgroupSockAddr:
		return "cgroup v2 sock_addr hooks"
	case WireGuard:
		return "WireGuard module"
	}
	return fmt.Sprintf("Feature(%d)", int(f))
}

// description says what the feature is and which kernel brought it, for
// error messages. It is empty for an unknown feature.
func (f Feature) description() string {
	switch f {
	case BTF:
		return "kernel type information at /sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF"
	case TCX:
		return "tc BPF links, Linux 6.6+"
	case XDPLink:
		return "XDP attached through a bpf_link, Linux 5.9+"
	case LRUHash:
		return "BPF_MAP_TYPE_LRU_HASH, Linux 4.10+"
	case LPMTrie:
		return "BPF_MAP_TYPE_LPM_TRIE, Linux 4.11+"
	case RingBuf:
		return "BPF_MAP_TYPE_RINGBUF, Linux 5.8+"
	case CgroupSockAddr:
		return "BPF_PROG_TYPE_CGROUP_SOCK_ADDR programs on a mounted cgroup v2 hierarchy, Linux 4.17+"
	case WireGuard:
		return `generic netlink family "wireguard", Linux 5.6+ with CONFIG_WIREGUARD`
	}
	return ""
}
