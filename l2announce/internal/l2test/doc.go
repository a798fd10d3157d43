// Package l2test holds the test tools of package l2announce and its
// sub-packages: a TCP proxy that can partition a node from etcd, an ARP and
// NDP client that runs in a test namespace, and a capture of every ARP frame
// that crosses a test bridge.
package l2test
