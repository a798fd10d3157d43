package wireguard

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// keyFileMode is the mode of the key files this package writes.
const keyFileMode = 0o600

// maxKeyFileSize bounds what LoadOrCreateKey reads: a key file holds 44
// characters of base64 and a newline.
const maxKeyFileSize = 1024

// LoadOrCreateKey returns the private key stored in the file at path. If there
// is no file, it generates a key and stores it there first, creating missing
// directories (mode 0700).
//
// The file holds the key in base64 and a newline, as `wg genkey` writes it, so
// `wg pubkey < path` prints the public key. It is written with mode 0600 to a
// temporary file in the same directory, synced, and linked into place, so no
// reader ever sees a partial key; when two processes create the key at once,
// both end up with the one that was linked first.
//
// LoadOrCreateKey refuses an existing file that its group or others may
// access in any way (mode&0o077 != 0) rather than use a key that may have
// leaked, and a file that is not a regular file or does not hold one key.
func LoadOrCreateKey(path string) (Key, error) {
	if path == "" {
		return Key{}, errors.New("load key: no file name given")
	}
	k, err := loadKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}

	k, err = GenerateKey()
	if err != nil {
		return Key{}, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Key{}, fmt.Errorf("create key directory: %w", err)
	}
	pending, err := prepareKeyFile(path, k)
	if err != nil {
		return Key{}, err
	}
	err = pending.link()
	if errors.Is(err, fs.ErrExist) {
		// Another process created it since loadKey looked: use theirs.
		return loadKey(path)
	}
	if err != nil {
		return Key{}, err
	}
	return k, nil
}

// loadKey reads the key file at path, after checking its type and mode. A
// missing file gives an error wrapping fs.ErrNotExist.
func loadKey(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return Key{}, fmt.Errorf("load key: %w", err)
	}
	defer f.Close()

	fi, err := f.Stat()
	if err != nil {
		return Key{}, fmt.Errorf("load key: %w", err)
	}
	if err := checkKeyFileMode(path, fi); err != nil {
		return Key{}, fmt.Errorf("load key: %w", err)
	}

	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return Key{}, fmt.Errorf("load key: %w", err)
	}
	if len(b) > maxKeyFileSize {
		return Key{}, fmt.Errorf("load key %s: file is larger than %d bytes, not a key file", path, maxKeyFileSize)
	}
	// The key itself never goes into an error message.
	k, err := ParseKey(string(bytes.TrimSpace(b)))
	if err != nil {
		return Key{}, fmt.Errorf("load key %s: %w", path, err)
	}
	if k.IsZero() {
		return Key{}, fmt.Errorf("load key %s: the key is all zeros", path)
	}
	return k, nil
}

// checkKeyFileMode returns an error unless fi, the file at path, is a regular
// file that only its owner may access.
func checkKeyFileMode(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o: a private key must not be accessible to group or others (chmod 600 it, and consider the key leaked)", path, perm)
	}
	return nil
}

// pendingKeyFile is a key written and synced to a temporary file next to its
// final path, not yet in place.
type pendingKeyFile struct {
	path, tmp string
}

// prepareKeyFile writes k to a new temporary file (mode 0600) in the directory
// of path and syncs it.
func prepareKeyFile(path string, k Key) (*pendingKeyFile, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("write key file: %w", err)
	}
	p := &pendingKeyFile{path: path, tmp: f.Name()}
	err = f.Chmod(keyFileMode) // CreateTemp's mode already, unless umask is odd.
	if err == nil {
		_, err = f.WriteString(k.String() + "\n")
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		p.discard()
		return nil, fmt.Errorf("write key file %s: %w", p.tmp, err)
	}
	return p, nil
}

// link puts the key file in place unless a file already exists there, in
// which case it returns an error wrapping fs.ErrExist. The temporary file is
// removed either way.
func (p *pendingKeyFile) link() error {
	defer p.discard()
	if err := os.Link(p.tmp, p.path); err != nil {
		return fmt.Errorf("store key file: %w", err)
	}
	return syncDir(filepath.Dir(p.path))
}

// replace puts the key file in place, replacing whatever is there.
func (p *pendingKeyFile) replace() error {
	if err := os.Rename(p.tmp, p.path); err != nil {
		p.discard()
		return fmt.Errorf("store key file: %w", err)
	}
	return syncDir(filepath.Dir(p.path))
}

// discard removes the temporary file.
func (p *pendingKeyFile) discard() {
	_ = os.Remove(p.tmp)
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync key directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync key directory %s: %w", dir, err)
	}
	return nil
}
