package kernel

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// mountinfoPath lists the mounts of the calling process's mount namespace.
const mountinfoPath = "/proc/self/mountinfo"

// CgroupV2Path returns the mount point of the cgroup v2 hierarchy, as listed
// in /proc/self/mountinfo: /sys/fs/cgroup on unified systems,
// /sys/fs/cgroup/unified on hybrid ones. If cgroup2 is mounted more than
// once, it prefers a mount of the hierarchy's root over a bind mount of a
// subtree, then the first listed. If none is mounted, the error wraps
// [os.ErrNotExist].
func CgroupV2Path() (string, error) {
	path, found, err := findCgroup2(mountinfoPath)
	if err != nil {
		return "", err
	}
	if !found {
		return "", errNoCgroup2()
	}
	return path, nil
}

// errNoCgroup2 is the error for "no cgroup2 file system is mounted".
func errNoCgroup2() error {
	return fmt.Errorf("find cgroup2 mount in %s: %w", mountinfoPath, os.ErrNotExist)
}

// findCgroup2 reads the mountinfo file at path and returns the cgroup2 mount
// point that [CgroupV2Path] documents. found is false, with a nil error, only
// when the file was read completely and lists no cgroup2 mount.
func findCgroup2(path string) (mountPoint string, found bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", false, fmt.Errorf("open mountinfo: %w", err)
	}
	defer f.Close()
	return parseCgroup2Mount(f)
}

// parseCgroup2Mount scans mountinfo text (proc_pid_mountinfo(5)) for cgroup2
// mounts. A malformed line is an error rather than skipped, so that a
// format surprise cannot pass for "not mounted".
func parseCgroup2Mount(r io.Reader) (mountPoint string, found bool, err error) {
	var first string
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; s.Scan(); n++ {
		line := s.Text()
		if line == "" {
			continue
		}
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		// (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)     (11)
		// Field 7 has zero or more optional fields, ended by "-".
		fields := strings.Fields(line)
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 6 || sep < 0 || sep+1 >= len(fields) {
			return "", false, fmt.Errorf("parse mountinfo line %d: malformed: %q", n, line)
		}
		if fields[sep+1] != "cgroup2" {
			continue
		}
		point, err := unescapeMountinfo(fields[4])
		if err != nil {
			return "", false, fmt.Errorf("parse mountinfo line %d: %w", n, err)
		}
		if fields[3] == "/" {
			return point, true, nil
		}
		if first == "" {
			first = point
		}
	}
	if err := s.Err(); err != nil {
		return "", false, fmt.Errorf("read mountinfo: %w", err)
	}
	return first, first != "", nil
}

// unescapeMountinfo undoes the kernel's octal escaping of space, tab,
// newline and backslash (\040, \011, \012, \134) in mountinfo paths.
func unescapeMountinfo(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("unescape path %q: truncated escape", s)
		}
		c, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("unescape path %q: %w", s, err)
		}
		b.WriteByte(byte(c))
		i += 3
	}
	return b.String(), nil
}
