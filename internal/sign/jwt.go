package sign

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"time"
)

// JWT makes the bearer tokens of the Anchor Platform's business-server callbacks: HS256 with
// the UTF-8 secret, claims iat and exp only, a fresh one per request.
type JWT struct {
	secret     []byte
	expiration time.Duration
}

// The reference refuses weaker settings, and so does Herald.
const (
	minJWTSecret     = 32
	minJWTExpiration = 5000 * time.Millisecond
)

// NewJWT checks the secret (at least 32 bytes) and the lifetime (at least 5000 ms).
func NewJWT(secret string, expiration time.Duration) (*JWT, error) {
	if len(secret) < minJWTSecret {
		return nil, fmt.Errorf("the JWT secret is %d bytes; at least %d are needed", len(secret), minJWTSecret)
	}
	if expiration < minJWTExpiration {
		return nil, fmt.Errorf("JWT expiration %dms is under %dms", expiration.Milliseconds(), minJWTExpiration.Milliseconds())
	}
	return &JWT{secret: []byte(secret), expiration: expiration}, nil
}

var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// AppendToken appends a token issued at now.
func (j *JWT) AppendToken(dst []byte, now time.Time) []byte {
	iat := now.Unix()
	exp := iat + int64(j.expiration/time.Second)
	var claims [64]byte
	c := append(claims[:0], `{"iat":`...)
	c = strconv.AppendInt(c, iat, 10)
	c = append(c, `,"exp":`...)
	c = strconv.AppendInt(c, exp, 10)
	c = append(c, '}')
	start := len(dst)
	dst = append(dst, jwtHeader...)
	dst = append(dst, '.')
	dst = base64.RawURLEncoding.AppendEncode(dst, c)
	mac := hmac.New(sha256.New, j.secret)
	mac.Write(dst[start:])
	var sum [sha256.Size]byte
	dst = append(dst, '.')
	return base64.RawURLEncoding.AppendEncode(dst, mac.Sum(sum[:0]))
}
