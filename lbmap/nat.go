package lbmap

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/conntrack"
)

// NATEntry is a connection the uplink datapath SNATed to a backend on
// another node.
type NATEntry struct {
	// Flow is the connection after DNAT, before SNAT: client to backend. It
	// is the key of the connection's conntrack entry.
	Flow conntrack.Flow
	// SNAT is the node address and NAT port the backend sees as the client.
	SNAT netip.AddrPort
}

// NATEntries returns the NAT table's connections. Entries that the datapath
// adds or removes during the walk may or may not be seen.
func (t *Table) NATEntries() ([]NATEntry, error) {
	var (
		k   lbNATKey
		v   lbNAT
		out []NATEntry
	)
	it := t.maps[mapNAT].Iterate()
	for it.Next(&k, &v) {
		if v.Flags&natFlagReverse != 0 {
			continue
		}
		src, dst := natKeyFlow(k)
		out = append(out, NATEntry{
			Flow: conntrack.Flow{Src: src, Dst: dst, Proto: conntrack.Protocol(k.Proto)},
			SNAT: netip.AddrPortFrom(addrFrom16(v.Addr, k.Family), uint16(v.Port[0])<<8|uint16(v.Port[1])),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("lbmap: read NAT table: %w", err)
	}
	return out, nil
}

// natMinAge is how old a NAT entry must be before GCNAT may delete it.
const natMinAge = 2 * time.Second

// GCNAT deletes the NAT entries of connections whose conntrack entry is gone
// or expired at now, which frees their NAT ports, and reverse entries left
// without a forward one. Entries younger than 2 s are left alone. It returns how many connections it reclaimed. Run
// it after the conntrack table's GC, periodically: a full NAT table drops new
// connections to remote backends (Stats.DropNATFull).
func (t *Table) GCNAT(now time.Time) (int, error) {
	var (
		k        lbNATKey
		v        lbNAT
		del      []lbNATKey
		fwd      = map[lbNATKey]bool{}
		reverses = map[lbNATKey]lbNATKey{} // reverse key -> the forward key it belongs to
		n        int
	)
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("lbmap: read clock: %w", err)
	}
	// Entries younger than this may belong to a connection whose other
	// entry, or conntrack entry, the datapath is writing right now.
	young := uint64(ts.Nano()) - uint64(natMinAge)
	it := t.maps[mapNAT].Iterate()
	for it.Next(&k, &v) {
		if v.Created > young {
			continue
		}
		if v.Flags&natFlagReverse != 0 {
			reverses[k] = lbNATKey{Saddr: v.Addr, Daddr: k.Saddr, Sport: v.Port, Dport: k.Sport, Proto: k.Proto, Family: k.Family}
			continue
		}
		fwd[k] = true
		src, dst := natKeyFlow(k)
		e, err := t.ct.Lookup(conntrack.Flow{Src: src, Dst: dst, Proto: conntrack.Protocol(k.Proto)})
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
		case err != nil:
			return 0, fmt.Errorf("lbmap: collect NAT entries: %w", err)
		case e.Expires.After(now):
			continue
		}
		del = append(del, k, lbNATKey{Saddr: k.Daddr, Daddr: v.Addr, Sport: k.Dport, Dport: v.Port, Proto: k.Proto, Family: k.Family})
		delete(fwd, k)
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("lbmap: collect NAT entries: %w", err)
	}
	for rk, fk := range reverses {
		var fv lbNAT
		if !fwd[fk] && errors.Is(t.maps[mapNAT].Lookup(&fk, &fv), ebpf.ErrKeyNotExist) {
			del = append(del, rk)
		}
	}
	for _, dk := range del {
		if err := t.maps[mapNAT].Delete(&dk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("lbmap: collect NAT entries: %w", err)
		}
	}
	return n, nil
}
