package waypoint

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"time"
)

// Auth checks the x-api-key header as the reference does: "<role>.<token>", where the token of
// governance and tenant-admin is that role's key and the token of a tenant is an HS256 JWT with
// a wallet_id claim.
type Auth struct {
	// GovernanceKey and TenantAdminKey are the admin keys; an empty key refuses its role.
	GovernanceKey, TenantAdminKey []byte
	// TenantAdminGroup, when set, binds tenant-admin to the events of this group.
	TenantAdminGroup string
	// JWTSecret signs tenant tokens; empty refuses tenants.
	JWTSecret []byte
	now       func() time.Time
}

// Denial is a refused request: the status and the JSON body the reference answers with.
type Denial struct {
	Status int
	Body   string
}

var (
	notAuthenticated = &Denial{403, `{"detail":"Not authenticated"}`}
	unknownRole      = &Denial{401, `{"detail":"Unauthorized"}`}
	forbidden        = &Denial{403, `{"detail":"Unauthorized"}`}
)

// Check authorizes header (nil when the request had none) to watch wallet, with the group filter
// the request asked for (empty for any). It returns the group filter to apply, which a bound
// tenant-admin cannot escape, or why not.
func (a *Auth) Check(header []byte, present bool, wallet, group string) (string, *Denial) {
	if !present {
		return "", notAuthenticated
	}
	dot := bytes.IndexByte(header, '.')
	if dot < 0 {
		return "", unknownRole
	}
	role, token := header[:dot], header[dot+1:]
	switch string(role) {
	case "governance":
		if !keyEqual(token, a.GovernanceKey) {
			return "", forbidden
		}
		return group, nil
	case "tenant-admin":
		if !keyEqual(token, a.TenantAdminKey) {
			return "", forbidden
		}
		if a.TenantAdminGroup != "" {
			if group != "" && group != a.TenantAdminGroup {
				return "", forbidden
			}
			return a.TenantAdminGroup, nil
		}
		return group, nil
	case "tenant":
		claimed, ok := a.tenantWallet(token)
		if !ok || claimed != wallet {
			return "", forbidden
		}
		return group, nil
	}
	return "", unknownRole
}

// keyEqual compares digests so that neither the key nor its length leaks through timing. An
// unset key matches nothing.
func keyEqual(got, want []byte) bool {
	if len(want) == 0 {
		return false
	}
	g, w := sha256.Sum256(got), sha256.Sum256(want)
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// tenantWallet verifies an HS256 JWT and returns its wallet_id claim. exp and nbf are honoured
// when present, as PyJWT does.
func (a *Auth) tenantWallet(token []byte) (string, bool) {
	if len(a.JWTSecret) == 0 {
		return "", false
	}
	first := bytes.IndexByte(token, '.')
	last := bytes.LastIndexByte(token, '.')
	if first < 0 || last == first {
		return "", false
	}
	var header struct {
		Alg string `json:"alg"`
	}
	if !decodeSegment(token[:first], &header) || header.Alg != "HS256" {
		return "", false
	}
	sig := make([]byte, base64.RawURLEncoding.DecodedLen(len(token)-last-1))
	if n, err := base64.RawURLEncoding.Decode(sig, token[last+1:]); err != nil || n != sha256.Size {
		return "", false
	}
	mac := hmac.New(sha256.New, a.JWTSecret)
	mac.Write(token[:last])
	if !hmac.Equal(mac.Sum(nil), sig[:sha256.Size]) {
		return "", false
	}
	var claims struct {
		WalletID any      `json:"wallet_id"`
		Exp      *float64 `json:"exp"`
		Nbf      *float64 `json:"nbf"`
	}
	if !decodeSegment(token[first+1:last], &claims) {
		return "", false
	}
	now := time.Now
	if a.now != nil {
		now = a.now
	}
	t := float64(now().Unix())
	if claims.Exp != nil && t >= *claims.Exp || claims.Nbf != nil && t < *claims.Nbf {
		return "", false
	}
	w, ok := claims.WalletID.(string)
	return w, ok && w != ""
}

func decodeSegment(seg []byte, v any) bool {
	b := make([]byte, base64.RawURLEncoding.DecodedLen(len(seg)))
	n, err := base64.RawURLEncoding.Decode(b, seg)
	return err == nil && json.Unmarshal(b[:n], v) == nil
}
