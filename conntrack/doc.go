// Package conntrack tracks connections in a BPF map instead of the kernel's
// conntrack, as Cilium does: a [Table] over an LRU hash map of flows, the C
// header bpf/conntrack.h that any BPF program includes to track into it, and a
// standalone tc program ([Table.Attach]) that tracks every connection through
// an interface and never drops a packet.
//
// # What an entry holds
//
// One entry per connection, keyed by the tuple of its first packet ([Flow], the
// original direction). Each holds per-direction packet and byte counters, the
// TCP flags seen each way, a [State] (new, established, closing on FIN both
// ways or RST), an expiry from the state's timeout ([Timeouts]), a reverse-NAT
// index and a free field for the program that created it. TCP, UDP, ICMP and
// ICMPv6 (echo identifier as the port) are tracked, over IPv4 and IPv6; an ICMP
// error is matched through the packet it quotes to the flow it is about, and
// counted as related. Later IP fragments carry no ports and are not tracked.
//
// # Lifetime
//
// [New] creates the maps, or reopens them pinned under [Config.PinPath];
// [Open] opens a pinned table from another process. Entries expire by their
// timeout but stay in the map until [Table.GC] (or [Table.RunGC], which adapts
// its interval to how much it finds) deletes them, or until the LRU map evicts
// them to make room: a full table evicts its least recently used entries
// rather than refusing new flows. A pinned table and a pinned [Tracker] keep
// tracking while no process runs; a restarted process takes them over with
// [Open] and [OpenTracker].
//
// # Composing
//
// A program that includes bpf/conntrack.h calls ct_process (or ct_lookup and
// ct_create) on packets parsed with internal/bpf/include/nb_parse.h. Load it
// with [Table.MapReplacements] in its CollectionOptions, and it tracks into the
// same table as everything else; lbmap does this for reverse NAT.
//
// # Kernel requirements
//
// Linux 6.6 or later (the tracker attaches with TCX) with BTF; LRU hash maps
// and BPF atomics (5.12). Root, or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN.
// Errors from missing kernel features wrap ebpf.ErrNotSupported and name the
// feature.
//
// # Errors
//
// Lookups of flows that are not tracked return errors wrapping
// ebpf.ErrKeyNotExist. Bad configuration (negative or oversized MaxEntries,
// negative timeouts) is rejected by New before it creates anything; a pinned
// map of another layout or size gives an error wrapping
// ebpf.ErrMapIncompatible, and New never replaces a pinned map.
package conntrack
