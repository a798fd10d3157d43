package vxlan

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The transmit checksum offload of a device is read and set with the legacy
// ethtool ioctls ETHTOOL_GTXCSUM and ETHTOOL_STXCSUM, which act on all of the
// device's checksum features at once (NETIF_F_CSUM_MASK:
// tx-checksum-ip-generic for a VXLAN device), as `ethtool -K DEV tx off`
// does. The kernel then drops the features that need checksum offload
// (TSO), so segmentation and checksums happen in software before
// encapsulation.
//
// SIOCETHTOOL acts on a device of the namespace of the socket it is issued
// on, and any socket will do: netlink sockets have no ioctls of their own, so
// the kernel hands the request to the device layer. The overlay issues it on
// a netlink socket opened in its namespace, which needs no thread to switch
// namespace after New.

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq whose union holds a pointer (ifr_data).
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(unsafe.Pointer(nil))]byte
}

// ethtoolValueIoctl issues the ethtool command cmd, which takes a struct
// ethtool_value, for device dev on the socket fd and returns the value the
// kernel left in it.
func ethtoolValueIoctl(fd int, dev string, cmd, data uint32) (uint32, error) {
	if len(dev) >= unix.IFNAMSIZ {
		return 0, fmt.Errorf("device name %q is too long", dev)
	}
	v := &ethtoolValue{cmd: cmd, data: data}
	var ifr ifreqData
	copy(ifr.name[:], dev)
	ifr.data = unsafe.Pointer(v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(v)
	if errno != 0 {
		return 0, errno
	}
	return v.data, nil
}

// txChecksum reports whether transmit checksum offload is on for dev.
func txChecksum(fd int, dev string) (bool, error) {
	v, err := ethtoolValueIoctl(fd, dev, unix.ETHTOOL_GTXCSUM, 0)
	if err != nil {
		return false, fmt.Errorf("get tx checksum offload of %s: %w", dev, err)
	}
	return v != 0, nil
}

// setTxChecksum turns transmit checksum offload on dev on or off.
func setTxChecksum(fd int, dev string, on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if _, err := ethtoolValueIoctl(fd, dev, unix.ETHTOOL_STXCSUM, v); err != nil {
		return fmt.Errorf("set tx checksum offload of %s to %t: %w", dev, on, err)
	}
	return nil
}
