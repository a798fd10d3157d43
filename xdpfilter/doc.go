// Package xdpfilter is an XDP prefilter: it drops traffic by the CIDR of its
// source address on the NIC, before the kernel allocates anything for it, as
// Cilium's prefilter does. A [Filter] holds the rules; [Filter.Attach] puts
// the program on an interface.
//
// # Rules and modes
//
// Rules are netip.Prefix values, IPv4 or IPv6. A host rule (/32, /128) goes
// into an exact-match hash map, far cheaper than a trie and holding millions;
// shorter prefixes go into an LPM trie. The most specific match wins, and a
// host rule is the most specific there is. In [Deny] mode a frame whose source
// matches a rule is dropped; in [AllowOnly] mode IP frames whose source matches
// no rule are dropped. Non-IP frames (ARP, LLDP) always pass. VLAN-tagged
// (802.1Q, QinQ) IP is classified by its inner header. A frame too short to
// parse (its Ethernet header, VLAN tags or IP header cut off, or an IP header
// that contradicts itself) passes in Deny mode and is dropped in AllowOnly
// mode: an allow-list admits nothing it cannot read.
//
// # Changes
//
// [Filter.Add] and [Filter.Remove] change the set in force rule by rule.
// [Filter.Replace] swaps the whole set atomically: the rules live in two
// buffers of maps, Replace fills the inactive one and switches with a single
// map write, so a packet is classified by the old set or by the new one, never
// a mix; if anything fails before the switch, the old set stays in force.
// Every change bumps [Filter.Revision]. Bad input (host bits set, mixed
// families in one Add or Remove, more rules than the maps hold) is refused
// before anything changes.
//
// # Counters and events
//
// [Filter.Stats] has totals of passed and dropped frames (per CPU, summed);
// [Filter.Hits] counts matches per rule. With [Config.SampleRate] set,
// [Filter.Events] reads drop events (source, rule, count) sampled into a ring
// buffer.
//
// # Lifetime
//
// With [Config.PinPath], the maps are pinned on a bpffs; with
// [Attachment.Pin], so is the attachment: filtering goes on while no process
// runs, and a restarted process takes the filter over with [Open] and
// [OpenAttachment] without a gap.
//
// # Kernel requirements
//
// XDP links (Linux 5.9), BTF, LPM tries, ring buffers (5.8). Native mode
// needs driver support (veth, most physical NICs); [Auto] falls back to
// generic mode and says why ([Attachment.Fallback]). Root, or CAP_BPF and
// CAP_NET_ADMIN.
package xdpfilter
