package wireguard

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestPublicKey(t *testing.T) {
	// Public keys computed with `wg pubkey` (wireguard-tools).
	for _, tc := range []struct{ private, public string }{
		{"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="},
		// Not clamped: WireGuard clamps it when it uses it.
		{"//////////////////////////////////////////8=", "hHwNLDdSNPNl5mCVUYejc1oPdhPRYJ06ak2MU66qWiI="},
	} {
		k, err := ParseKey(tc.private)
		if err != nil {
			t.Fatal(err)
		}
		if got := k.PublicKey().String(); got != tc.public {
			t.Errorf("PublicKey of %s = %s, want %s", tc.private, got, tc.public)
		}
	}
}

func TestGenerateKey(t *testing.T) {
	a, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a.IsZero() {
		t.Fatalf("GenerateKey returned %v and %v", a, b)
	}
	if a[0]&7 != 0 || a[31]&128 != 0 || a[31]&64 == 0 {
		t.Errorf("key %x is not clamped", a)
	}
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{"", "0 bytes long"},
		{"not base64!", "not base64"},
		{"AAAA", "3 bytes long"},
		{"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk", "not base64"}, // padding missing
	} {
		if _, err := ParseKey(tc.in); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseKey(%q) = %v, want an error containing %q", tc.in, err, tc.err)
		}
	}

	k, _ := GenerateKey()
	b, err := json.Marshal(map[string]Key{"key": k.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]Key
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back["key"] != k.PublicKey() {
		t.Errorf("JSON round trip of %s gave %s (%s)", k.PublicKey(), back["key"], b)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "dir", "private.key")

	k, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("key directory: %v, mode %04o, want 0700", err, di.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if string(b) != k.String()+"\n" {
		t.Errorf("key file holds %q, want the key in base64 and a newline", b)
	}
	again, err := LoadOrCreateKey(path)
	if err != nil || again != k {
		t.Errorf("second LoadOrCreateKey = %v, %v; want the same key", again.PublicKey(), err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("key directory holds %d files, want only the key (no temporary file left)", len(entries))
	}

	// A key written by `wg genkey`, without a newline or with spaces around.
	wgPath := filepath.Join(dir, "wg.key")
	if err := os.WriteFile(wgPath, []byte("  yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := LoadOrCreateKey(wgPath); err != nil || k.PublicKey().String() != "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=" {
		t.Errorf("LoadOrCreateKey(wg genkey output) = %v, %v", k.PublicKey(), err)
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	valid := "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n"
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		err     string
	}{
		{"group-readable", valid, 0o640, "has mode 0640: a private key must not be accessible to group or others"},
		{"world-readable", valid, 0o644, "has mode 0644"},
		{"world-writable", valid, 0o602, "has mode 0602"},
		{"group-executable", valid, 0o610, "has mode 0610"},
		{"garbage", "hello\n", 0o600, "not base64"},
		{"short", "AAAA\n", 0o600, "3 bytes long, not 32"},
		{"zero", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 0o600, "all zeros"},
		{"huge", strings.Repeat("A", 4096), 0o600, "larger than 1024 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateKey(path)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("LoadOrCreateKey = %v, want an error containing %q", err, tc.err)
			}
			if strings.Contains(err.Error(), strings.TrimSpace(valid)) {
				t.Errorf("error reveals the key: %v", err)
			}
			if b, _ := os.ReadFile(path); string(b) != tc.content {
				t.Errorf("LoadOrCreateKey changed the refused file")
			}
		})
	}

	if _, err := LoadOrCreateKey(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("LoadOrCreateKey(a directory) = %v, want a 'not a regular file' error", err)
	}
	if _, err := LoadOrCreateKey(""); err == nil {
		t.Error("LoadOrCreateKey(\"\") succeeded")
	}
}

func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "private.key")
	const n = 16
	keys := make([]Key, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreateKey(path) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("LoadOrCreateKey %d: %v", i, errs[i])
		}
		if keys[i] != keys[0] {
			t.Fatalf("concurrent LoadOrCreateKey calls returned different keys")
		}
	}
}

func TestKeyFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "private.key")
	old, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := GenerateKey()
	p, err := prepareKeyFile(path, k)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := LoadOrCreateKey(path); got != old {
		t.Fatal("a prepared key file replaced the key before replace")
	}
	if err := p.link(); !errors.Is(err, fs.ErrExist) {
		t.Errorf("link over an existing key file = %v, want fs.ErrExist", err)
	}
	if p, err = prepareKeyFile(path, k); err != nil {
		t.Fatal(err)
	}
	if err := p.replace(); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadOrCreateKey(path); err != nil || got != k {
		t.Errorf("key after replace: %v, want the new key", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("key directory holds %d files, want only the key", len(entries))
	}
}
