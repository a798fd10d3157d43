package wireguard_test

import (
	"fmt"
	"log"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/netblocks/netblocks/wireguard"
)

// Encrypt pod traffic to two other nodes. Each node publishes its public key
// and learns the others' (through the cluster's store, not shown).
func Example() {
	dev, err := wireguard.New(wireguard.Config{
		KeyFile: "/var/lib/netblocks/wireguard/private.key",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()
	fmt.Println(dev.Backend(), dev.Name(), dev.MTU(), dev.PublicKey()) // publish this key

	var node2, node3 wireguard.Key // the keys the other nodes published
	err = dev.SetPeers([]wireguard.Peer{{
		PublicKey:  node2,
		Endpoint:   netip.MustParseAddrPort("192.0.2.2:51871"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64")},
	}, {
		PublicKey:           node3,
		Endpoint:            netip.MustParseAddrPort("192.0.2.3:51871"),
		AllowedIPs:          []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")},
		PersistentKeepalive: 25 * time.Second,
	}})
	if err != nil {
		log.Fatal(err) // nothing changed
	}
}

// Rotate the key pair, then publish the new public key: traffic to the other
// nodes resumes as soon as they have it.
func ExampleDevice_Rotate() {
	dev, err := wireguard.New(wireguard.Config{KeyFile: "/var/lib/netblocks/wireguard/private.key"})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()

	pub, err := dev.Rotate()
	if err != nil {
		log.Fatal(err) // the old key is still in force
	}
	fmt.Println("publish", pub)
}

// Per-peer counters, as `wg show` prints them.
func ExampleDevice_Stats() {
	dev, err := wireguard.New(wireguard.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()

	stats, err := dev.Stats()
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range stats {
		fmt.Printf("%s %s rx %d tx %d, last handshake %s ago\n",
			s.PublicKey, s.Endpoint, s.RxBytes, s.TxBytes, time.Since(s.LastHandshake).Round(time.Second))
	}
}

// A key file is created once, with mode 0600, and read back on every start.
func ExampleLoadOrCreateKey() {
	dir, err := os.MkdirTemp("", "wireguard-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "private.key")

	first, err := wireguard.LoadOrCreateKey(path)
	if err != nil {
		log.Fatal(err)
	}
	again, err := wireguard.LoadOrCreateKey(path)
	if err != nil {
		log.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(first == again, fi.Mode().Perm())
	// Output: true -rw-------
}

// The public key of a private key, as `wg pubkey` computes it.
func ExampleKey_PublicKey() {
	private, err := wireguard.ParseKey("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(private.PublicKey())
	// Output: HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=
}
