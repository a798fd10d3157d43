package vxlan

import (
	"crypto/sha256"
	"net"
	"net/netip"
)

// macDomain separates DeriveMAC's hash from any other use of SHA-256 over an
// address.
const macDomain = "netblocks/vxlan VTEP MAC\x00"

// DeriveMAC returns the VTEP MAC address of the node whose underlay address
// is nodeAddr: a locally administered unicast address made from a SHA-256
// hash of the address. It is what [New] gives the VXLAN device when
// [Config.MAC] is unset and what [Overlay.Sync] assumes for a peer whose
// [Peer.VTEPMAC] is unset, so the MAC survives restarts and re-created
// devices, and peers need not publish it.
//
// IPv4 addresses hash as their 4 bytes, IPv6 ones as their 16, so an IPv4
// address and its IPv4-mapped IPv6 form give different MACs. An invalid
// address gives nil.
func DeriveMAC(nodeAddr netip.Addr) net.HardwareAddr {
	if !nodeAddr.IsValid() {
		return nil
	}
	h := sha256.New()
	h.Write([]byte(macDomain))
	h.Write(nodeAddr.AsSlice())
	sum := h.Sum(nil)

	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac
}
