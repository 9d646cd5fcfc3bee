package sign

import (
	"crypto/ed25519"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"net/url"
	"strconv"
)

// Anchor signs client status callbacks as the Stellar Anchor Platform does: the header
// "Signature: t=<unix seconds>, s=<base64 Ed25519 signature>" over "<t>.<host>.<body>", with the
// SEP-10 signing key.
type Anchor struct {
	key ed25519.PrivateKey
}

// NewAnchor takes the SEP-10 signing seed, a Stellar secret seed "S...".
func NewAnchor(seed string) (*Anchor, error) {
	key, err := DecodeSeed(seed)
	if err != nil {
		return nil, err
	}
	return &Anchor{key: key}, nil
}

// Public is the key receivers verify with.
func (a *Anchor) Public() ed25519.PublicKey { return a.key.Public().(ed25519.PublicKey) }

// AppendSignature appends the Signature header value for body sent to host at t (unix seconds).
func (a *Anchor) AppendSignature(dst []byte, t int64, host string, body []byte) []byte {
	msg := make([]byte, 0, 24+len(host)+len(body))
	msg = strconv.AppendInt(msg, t, 10)
	msg = append(msg, '.')
	msg = append(msg, host...)
	msg = append(msg, '.')
	msg = append(msg, body...)
	dst = append(dst, "t="...)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, ", s="...)
	return base64.StdEncoding.AppendEncode(dst, ed25519.Sign(a.key, msg))
}

// SignedHost is the host part of the signed bytes: the URL's host, with the port only when the
// URL names one.
func SignedHost(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	if u.Host == "" {
		return "", errors.New("callback URL has no host")
	}
	return u.Host, nil
}

// Stellar strkey version bytes: the first base32 letter of a secret seed is S, of an account G.
const (
	versionSeed    = 18 << 3
	versionAccount = 6 << 3
)

// DecodeSeed decodes a Stellar secret seed: base32 of a version byte, the 32-byte Ed25519 seed
// and a CRC-16/XMODEM checksum, little-endian.
func DecodeSeed(s string) (ed25519.PrivateKey, error) {
	raw, err := decodeStrkey(versionSeed, s)
	if err != nil {
		return nil, err
	}
	return ed25519.NewKeyFromSeed(raw), nil
}

// EncodeAccount is a public key as a Stellar account id, "G...".
func EncodeAccount(pub ed25519.PublicKey) string {
	b := make([]byte, 0, 35)
	b = append(b, versionAccount)
	b = append(b, pub...)
	c := crc16(b)
	b = append(b, byte(c), byte(c>>8))
	return base32.StdEncoding.EncodeToString(b)
}

func decodeStrkey(version byte, s string) ([]byte, error) {
	if len(s) != 56 {
		return nil, errors.New("a Stellar secret seed is 56 characters, S...")
	}
	b, err := base32.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 35 {
		return nil, errors.New("a Stellar secret seed is base32, S...")
	}
	if b[0] != version {
		return nil, errors.New("not a Stellar secret seed (it must start with S)")
	}
	if c := crc16(b[:33]); b[33] != byte(c) || b[34] != byte(c>>8) {
		return nil, errors.New("the Stellar secret seed's checksum does not match: mistyped?")
	}
	return b[1:33], nil
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial 0), as strkey uses.
func crc16(b []byte) uint16 {
	var c uint16
	for _, x := range b {
		c ^= uint16(x) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
	}
	return c
}
