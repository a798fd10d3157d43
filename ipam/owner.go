package ipam

import (
	"fmt"
	"strings"
)

// An Owner holds pod addresses: a container's network interface, as CNI
// names it (CNI_CONTAINERID and CNI_IFNAME). One owner holds at most one
// address per family from a [NodeAllocator].
type Owner struct {
	// ContainerID is the runtime's container ID: letters, digits, '_', '.'
	// and '-', starting with a letter or digit (the CNI specification's
	// rule).
	ContainerID string
	// IfName is the interface name inside the container: 1 to 15 bytes, not
	// "." or "..", without '/', ':', whitespace or NUL (the kernel's rule).
	IfName string
}

// String returns "ContainerID/IfName".
func (o Owner) String() string { return o.ContainerID + "/" + o.IfName }

// Validate returns an error naming what is wrong with o, or nil.
func (o Owner) Validate() error {
	if err := checkContainerID(o.ContainerID); err != nil {
		return fmt.Errorf("owner %q: %w", o.String(), err)
	}
	if err := checkIfName(o.IfName); err != nil {
		return fmt.Errorf("owner %q: %w", o.String(), err)
	}
	return nil
}

// ParseOwner parses the form returned by [Owner.String].
func ParseOwner(s string) (Owner, error) {
	cid, ifn, ok := strings.Cut(s, "/")
	if !ok {
		return Owner{}, fmt.Errorf("parse owner %q: want containerID/ifname", s)
	}
	o := Owner{ContainerID: cid, IfName: ifn}
	return o, o.Validate()
}

func checkContainerID(id string) error {
	if id == "" {
		return fmt.Errorf("empty container ID")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("container ID %q must start with a letter or digit", id)
		}
		if !alnum && c != '_' && c != '.' && c != '-' {
			return fmt.Errorf("container ID %q has %q; only letters, digits, '_', '.' and '-' are allowed", id, c)
		}
	}
	return nil
}

func checkIfName(n string) error {
	switch {
	case n == "":
		return fmt.Errorf("empty interface name")
	case len(n) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", n)
	case n == "." || n == "..":
		return fmt.Errorf("interface name %q is not allowed", n)
	}
	for _, c := range []byte(n) {
		if c == '/' || c == ':' || c == 0 || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' {
			return fmt.Errorf("interface name %q has %q, which is not allowed", n, c)
		}
	}
	return nil
}

// checkName validates names used in keys (node, pool, service, sharing key):
// non-empty, at most 253 bytes, printable ASCII without '/' or spaces.
func checkName(what, n string) error {
	if n == "" {
		return fmt.Errorf("empty %s", what)
	}
	if len(n) > 253 {
		return fmt.Errorf("%s %q is longer than 253 bytes", what, n)
	}
	for _, c := range []byte(n) {
		if c <= ' ' || c >= 0x7f || c == '/' {
			return fmt.Errorf("%s %q has %q; use printable ASCII without '/' or spaces", what, n, c)
		}
	}
	return nil
}
