package wireguard

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// KeyLen is the length of a WireGuard key in bytes.
const KeyLen = 32

// Key is a Curve25519 key, private or public, as WireGuard uses them. Its text
// form is standard base64, as `wg genkey` and `wg pubkey` print it.
type Key [KeyLen]byte

// GenerateKey returns a new private key from crypto/rand, clamped as
// Curve25519 requires (as `wg genkey` does).
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate key: %w", err)
	}
	k.clamp()
	return k, nil
}

// ParseKey parses the base64 form of a key, as [Key.String] writes it.
func ParseKey(s string) (Key, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return Key{}, fmt.Errorf("parse key: not base64: %w", err)
	}
	if len(b) != KeyLen {
		return Key{}, fmt.Errorf("parse key: %d bytes long, not %d", len(b), KeyLen)
	}
	return Key(b), nil
}

// clamp clears and sets the bits RFC 7748 prescribes for a private scalar.
func (k *Key) clamp() {
	k[0] &= 248
	k[31] = k[31]&127 | 64
}

// PublicKey returns the public key of the private key k.
func (k Key) PublicKey() Key {
	// NewPrivateKey accepts any 32 bytes and clamps them itself, as
	// WireGuard does.
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		panic(fmt.Sprintf("wireguard: X25519 refused a %d-byte key: %v", KeyLen, err))
	}
	return Key(priv.PublicKey().Bytes())
}

// IsZero reports whether k is all zeros, the value of no key.
func (k Key) IsZero() bool { return k == Key{} }

// String returns the key in base64. Printing a private key this way reveals
// it: only public keys belong in logs.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText returns the key in base64, so that a Key can be published in
// JSON or YAML as it is.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText parses a key in base64.
func (k *Key) UnmarshalText(text []byte) error {
	parsed, err := ParseKey(string(text))
	if err != nil {
		return err
	}
	*k = parsed
	return nil
}

// hex returns the key in hexadecimal, its form in the UAPI protocol.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }
