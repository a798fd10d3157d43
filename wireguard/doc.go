// Package wireguard encrypts traffic between nodes with WireGuard, as Cilium
// and Calico do: a [Device] per node, holding a key pair whose public half the
// node publishes, with every other node as a peer whose allowed IPs are its pod
// CIDRs, routed through the device.
//
//	dev, err := wireguard.New(wireguard.Config{KeyFile: "/var/lib/netblocks/wireguard/private.key"})
//	publish(dev.PublicKey())
//	err = dev.SetPeers(peersFromTheOtherNodes)
//
// # Backends
//
// [Kernel] is the kernel's WireGuard: a link of type "wireguard", configured
// through generic netlink with wgctrl. [Embedded] is wireguard-go running in
// this process: a TUN device and UDP sockets, with the standard UAPI socket
// /var/run/wireguard/NAME.sock, so `wg show` and wgctrl see it as they see a
// kernel device. [Config.Backend]'s default, [Auto], probes the kernel for the
// wireguard generic netlink family and takes [Kernel] if it is there, else
// [Embedded] (the New log message says why); [Device.Backend] reports the
// choice. Cilium falls back the same way.
//
// The embedded backend costs throughput: on the 2-CPU virtual machine this
// package is tested on, one TCP stream between pods of two namespace nodes
// ran at about 2 Gbit/s through wireguard-go (1.4 to 2.8 over runs), against
// about 20 Gbit/s (17 to 32) over the same veths unencrypted: a tenth
// (BenchmarkThroughput).
//
// # Namespaces
//
// A device lives in [Config.NetNS] (default: the caller's). Every netlink
// request goes through a handle opened in that namespace; no thread of the
// caller ever changes namespace. The kernel device is created through that
// handle, so its UDP socket is born in the namespace, and wgctrl's generic
// netlink socket is opened there, so it finds the device by name.
//
// The embedded backend creates its TUN device on an OS thread locked and
// switched into the namespace, and switched back after. wireguard-go opens
// its UDP sockets whenever the device goes up or its port changes, from
// whichever goroutine caused that (New, the TUN event reader, a `wg set` over
// the UAPI socket): its bind is wrapped so that each opening runs on such a
// thread, and the sockets land in the namespace and nowhere else. (That
// wrapping turns off wireguard-go's route listener for sticky source
// addresses, which would listen in the wrong namespace.) The UAPI socket
// directory is shared by all namespaces: an embedded device's name must be
// unique on the machine, and New fails with an error saying so when another
// embedded device holds it.
//
// # Keys
//
// A [Key] is a Curve25519 key in WireGuard's base64 form. [GenerateKey] makes a
// private key; [Key.PublicKey] derives the public one. With [Config.KeyFile]
// set, the private key lives in that file ([LoadOrCreateKey]): created with
// mode 0600 by writing a temporary file, syncing it and linking it into
// place, read on every start, so a restarted node keeps its identity. A key
// file its group or others may access is refused, not used.
//
// # Peers and routes
//
// [Device.SetPeers] takes the full list of peers and reconciles: it adds new
// peers, updates those whose endpoint, keepalive or allowed IPs changed, and
// removes the others; peers configured as they were keep their sessions and
// counters. It routes every allowed IP through the device in the main table,
// marked with [Config.RouteProtocol] (79 by default: `ip route show proto
// 79`), and deletes the routes so marked through this device that are no
// longer wanted, never anyone else's. An allowed IP that contains a peer's
// endpoint (a node address, say) gets no route, since WireGuard's own packets
// to the peer would follow it into the tunnel; it still admits the peer's
// traffic from that address. So traffic a node itself sends to another node's
// pods enters the tunnel with its underlay address as source, is accepted if
// that address is among its allowed IPs, and is answered unencrypted.
// Setting the device down makes the kernel drop the routes through it; the
// next SetPeers puts them back.
//
// [Device.Stats] returns per-peer byte counters, endpoints and the time of
// the last handshake.
//
// # Rotation
//
// [Device.Rotate] makes a new key pair, puts it in force and in the key file,
// and returns the new public key, which the caller publishes as it published
// the first. The device's sessions end at once: it can still decrypt what
// peers send on them, but sends nothing until a handshake with its new key
// succeeds, and peers reject that handshake until they have been told the new
// public key (SetPeers with the new key in place of the old one).
//
// WireGuard retries a rejected handshake only 5 s (REKEY_TIMEOUT) after the
// last attempt, so a node that sends all along could wait that long after its
// peers have learned its key. SetPeers shortens the wait: when a new peer
// takes the place of one it removes (the same endpoint, or an allowed IP in
// common) and no handshake with it has happened half a second later, the
// device sends one itself. It waits because the rotated node, if it has
// traffic, is likely to send one at once, and two handshakes that cross both
// fail, for another 5 s. A peer with a PersistentKeepalive is sent a
// handshake as soon as it is configured.
//
// The gap in traffic from the rotating node is therefore the time its peers
// take to learn the new key, plus one handshake, or plus half a second when
// its own handshake came before they knew the key. Measured between two
// namespace nodes, the rotating node's pod sending a datagram every
// millisecond (BenchmarkRotationGap, TestEmbeddedLab):
//
//   - key published at once: 4 ms typically; 0.5 s in about one rotation of
//     fifty, whose own handshake went out before the peer had the key (a
//     mean of 15-20 ms);
//   - key published after 1 s: 1.5 s (1.0 s when the peer has a
//     PersistentKeepalive; 5.0 s without the handshake SetPeers sends).
//
// Packets sent during the gap wait for the handshake in a queue per peer,
// which drops the oldest when full; TCP retransmits what is lost.
//
// # MTU
//
// WireGuard adds 80 bytes to a packet over an IPv6 underlay (60 over IPv4):
// the device's MTU defaults to [Config.UnderlayMTU] (default 1500) less 80,
// 1420. Pods' interfaces should use [Device.MTU] too, so that their packets
// fit without fragmentation or path MTU discovery.
//
// # Lifetime
//
// [New] creates the device up and without peers; [Device.Close] deletes it,
// which takes its routes along, and for the embedded backend stops its
// goroutines and closes its UDP and UAPI sockets (removing the socket file).
// The key file stays, for the next New. An embedded device cannot outlive its
// process: the kernel deletes its TUN device when the process exits, and
// traffic to the peers stops. A kernel device does outlive it: New takes over
// a kernel WireGuard device of its name that a previous process left, and
// SetPeers reconciles its peers and routes.
//
// # Errors
//
// Bad configuration is refused by New before it creates anything, and bad
// peers by SetPeers before it changes anything, with an error naming the
// field or peer (a duplicate public key, an allowed IP given to two peers,
// host bits set, a keepalive out of range). A failed multi-step operation
// undoes what it did: New removes what it created, SetPeers restores the
// previous peers and routes (when a route another owner holds blocks one of
// its own, say), and Rotate keeps the old key in the device and the file.
// [Kernel] on a kernel without the wireguard module gives an error that wraps
// ebpf.ErrNotSupported and names the missing module. Methods of a closed
// device return errors wrapping os.ErrClosed; Close itself may be called
// again.
package wireguard
