package lbmap

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/netblocks/netblocks/internal/kernel"
)

// mapSockRevNAT is the socket-level load balancer's own map, as in bpf/sock.c.
const mapSockRevNAT = "nb_lb_sock_revnat"

// SocketLB is the socket-level load balancer attached to a cgroup v2
// (Cilium's "socket LB"): processes in the cgroup that connect or send to a
// service frontend reach one of its backends directly, translated once per
// connect(2) or sendmsg(2) rather than per packet.
//
// Its behaviour, as bpf/sock.c implements it:
//   - A service without a usable backend makes connect(2) and sendmsg(2) fail
//     with ECONNREFUSED (as a kube-proxy REJECT rule does), counted in
//     Stats.DropNoBackend. Translations are counted in Stats.SockTranslate.
//   - A TCP connect chooses a backend at random (or by Maglev, on a hash of
//     the socket cookie); a UDP socket's datagrams to one service all go to
//     the backend its socket cookie hashes to. The connection's addresses are
//     not known yet at connect time, so Maglev is not consistent across nodes
//     here.
//   - Session affinity (Service.Affinity) takes the socket's network
//     namespace as the client, in place of its address.
//   - A service with source ranges is left untranslated: the client's address
//     is chosen by the kernel after the hook runs, so only the tc datapath
//     (Table.Attach), which sees it, can check the ranges. Socket LB never lets
//     a client reach a service the ranges deny it.
//   - Replies to unconnected (and connected) UDP sockets are reported by
//     recvmsg(2) as coming from the frontend the application sent to.
//   - Dual-stack IPv6 sockets sending to IPv4-mapped addresses use the IPv4
//     services.
//   - getpeername(2) on a translated socket reports the backend: there are no
//     getpeername hooks.
//
// The socket cookie to frontend translations for UDP live in an LRU map of
// 65536 entries owned by the SocketLB.
type SocketLB struct {
	links  []link.Link
	revnat *ebpf.Map
}

// sockHook is one program of bpf/sock.c and where it attaches.
type sockHook struct {
	name   string
	prog   *ebpf.Program
	attach ebpf.AttachType
}

// AttachCgroup loads the socket-level programs into t's maps and attaches
// them to the cgroup v2 directory path (for the whole host, the cgroup v2
// mount point: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems):
// connect, sendmsg and recvmsg for IPv4 and IPv6. Processes in that cgroup
// (and below) reach services' backends directly at connect/sendmsg time, with
// no per-packet NAT. See SocketLB for how it behaves.
//
// It needs cgroup v2 sock_addr hooks and bpf_set_retval (Linux 5.18+). An
// error due to a kernel that lacks the hooks names the missing feature and
// matches ebpf.ErrNotSupported. If attaching one hook fails, the hooks
// already attached are detached.
func (t *Table) AttachCgroup(path string) (*SocketLB, error) {
	if err := checkCgroup2(path); err != nil {
		return nil, err
	}
	spec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("lbmap: %w", err)
	}
	// The Table's maps only: unlike the tc datapath, these programs use no
	// conntrack state (t.replacements would require its maps).
	repl := map[string]*ebpf.Map{}
	for name, m := range t.maps {
		ms, ok := spec.Maps[name]
		if !ok {
			continue
		}
		ms.MaxEntries = m.MaxEntries()
		repl[name] = m
	}
	var objs struct {
		sockPrograms
		Revnat *ebpf.Map `ebpf:"nb_lb_sock_revnat"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return nil, sockError("load socket-level programs", err)
	}
	defer objs.sockPrograms.Close()

	s := &SocketLB{revnat: objs.Revnat}
	for _, h := range []sockHook{
		{"connect4", objs.NbSock4Connect, ebpf.AttachCGroupInet4Connect},
		{"connect6", objs.NbSock6Connect, ebpf.AttachCGroupInet6Connect},
		{"sendmsg4", objs.NbSock4Sendmsg, ebpf.AttachCGroupUDP4Sendmsg},
		{"sendmsg6", objs.NbSock6Sendmsg, ebpf.AttachCGroupUDP6Sendmsg},
		{"recvmsg4", objs.NbSock4Recvmsg, ebpf.AttachCGroupUDP4Recvmsg},
		{"recvmsg6", objs.NbSock6Recvmsg, ebpf.AttachCGroupUDP6Recvmsg},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: h.attach, Program: h.prog})
		if err != nil {
			err = sockError(fmt.Sprintf("attach cgroup/%s to cgroup %s", h.name, path), err)
			return nil, errors.Join(err, s.Close())
		}
		s.links = append(s.links, l)
	}
	return s, nil
}

// checkCgroup2 returns an error unless path is a directory of a cgroup v2
// file system.
func checkCgroup2(path string) error {
	if path == "" {
		return errors.New("lbmap: attach to cgroup: no cgroup path")
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return fmt.Errorf("lbmap: attach to cgroup %s: statfs: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("lbmap: attach to cgroup %s: not a cgroup v2 directory (file system type %#x)", path, fs.Type)
	}
	return nil
}

// sockError wraps err, from doing op, and names what the kernel lacks if err
// says it lacks something and the probe for cgroup sock_addr hooks agrees.
func sockError(op string, err error) error {
	if errors.Is(err, ebpf.ErrNotSupported) {
		var fe *kernel.FeatureError
		if perr := kernel.Probe(kernel.CgroupSockAddr); errors.As(perr, &fe) {
			return fmt.Errorf("lbmap: %s: %w: %w", op, perr, err)
		}
	}
	return fmt.Errorf("lbmap: %s: %w", op, err)
}

// Close detaches the programs from the cgroup and releases the socket
// translations. Sockets that were translated keep their backend; UDP replies
// that arrive afterwards show the backend's address.
func (s *SocketLB) Close() error {
	var errs []error
	for i := len(s.links) - 1; i >= 0; i-- {
		if err := s.links[i].Close(); err != nil {
			errs = append(errs, fmt.Errorf("lbmap: detach socket-level program: %w", err))
		}
	}
	s.links = nil
	if s.revnat != nil {
		if err := s.revnat.Close(); err != nil {
			errs = append(errs, fmt.Errorf("lbmap: close map %s: %w", mapSockRevNAT, err))
		}
		s.revnat = nil
	}
	return errors.Join(errs...)
}
