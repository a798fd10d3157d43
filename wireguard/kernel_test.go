package wireguard

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netblocks/netblocks/internal/kernel"
	"github.com/netblocks/netblocks/internal/testutil"
)

// TestKernelLab runs the lab on the kernel backend, where the kernel has the
// wireguard module.
func TestKernelLab(t *testing.T) {
	testutil.RequireFeature(t, kernel.WireGuard)
	testLab(t, Kernel)
}

// TestKernelTakeover checks that New takes over a kernel WireGuard device
// left by a process that did not close it, and that Close deletes it.
func TestKernelTakeover(t *testing.T) {
	testutil.RequireFeature(t, kernel.WireGuard)
	ns := testutil.NewNetNS(t)
	name := uniqueName()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := ns.Netlink().LinkAdd(&netlink.Wireguard{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	link, err := ns.Netlink().LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}

	d, err := New(Config{Name: name, NetNS: ns.Handle(), Backend: Kernel, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if d.Index() != link.Attrs().Index {
		t.Errorf("New made device %d, want the existing %d taken over", d.Index(), link.Attrs().Index)
	}
	k := testKeys(t, 1)
	if err := d.SetPeers([]Peer{{PublicKey: k[0], AllowedIPs: prefixes("10.244.2.0/24")}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Netlink().LinkByName(name); err == nil {
		t.Errorf("device %s still there after Close", name)
	}
}

// TestKernelRefusesOtherLink checks that New refuses a name taken by a link
// that is not a WireGuard device, and leaves that link alone.
func TestKernelRefusesOtherLink(t *testing.T) {
	testutil.RequireFeature(t, kernel.WireGuard)
	ns := testutil.NewNetNS(t)
	name := uniqueName()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := ns.Netlink().LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	if d, err := New(Config{Name: name, NetNS: ns.Handle(), Backend: Kernel}); err == nil {
		d.Close()
		t.Fatal("New took over a bridge")
	} else {
		t.Log(err)
	}
	if _, err := ns.Netlink().LinkByName(name); err != nil {
		t.Errorf("the bridge is gone: %v", err)
	}
}
