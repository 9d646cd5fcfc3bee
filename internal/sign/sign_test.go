package sign

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Standard Webhooks specification's published example.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func TestWebhookMatchesTheStandardsVector(t *testing.T) {
	w, err := NewWebhook(vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(w.AppendSignature(nil, []byte(vectorID), vectorTimestamp, []byte(vectorBody))); got != vectorSignature {
		t.Fatalf("signature %s, want %s", got, vectorSignature)
	}
	// Rotation: the new secret's entry first, the old one's still there.
	w2, err := NewWebhook("whsec_"+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)), strings.TrimPrefix(vectorSecret, "whsec_"))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(w2.AppendSignature(nil, []byte(vectorID), vectorTimestamp, []byte(vectorBody))), " ")
	if len(parts) != 2 || parts[1] != vectorSignature || parts[0] == vectorSignature || !strings.HasPrefix(parts[0], "v1,") {
		t.Fatalf("rotated signatures %q", parts)
	}
	if string(w.AppendSignature(nil, []byte(vectorID), vectorTimestamp, []byte(`{"test": 2432232315}`))) == vectorSignature {
		t.Fatal("a changed body kept its signature")
	}
	for _, bad := range []string{"whsec_not base64!", "whsec_c2hvcnQ=", ""} {
		if _, err := NewWebhook(bad); err == nil {
			t.Errorf("secret %q accepted", bad)
		}
	}
}

// The testnet root account: a Stellar seed and the account id every SDK derives from it.
const (
	testSeed    = "SDHOAMBNLGCE2MV5ZKIVZAQD3VCLGP53P3OBSBI6UN5L5XZI5TKHFQL4"
	testAccount = "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H"
)

// verifyAnchor is a receiver written from the specification alone, sharing no code with the
// package: it decodes the account id itself and checks the header the way a wallet would.
func verifyAnchor(t *testing.T, account, header, host string, body []byte, now time.Time) bool {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	var bits, n uint
	var raw []byte
	for _, c := range account {
		v := strings.IndexRune(alphabet, c)
		if v < 0 {
			t.Fatalf("account id %q is not base32", account)
		}
		bits = bits<<5 | uint(v)
		n += 5
		if n >= 8 {
			raw = append(raw, byte(bits>>(n-8)))
			n -= 8
		}
	}
	if len(raw) != 35 || raw[0] != 6<<3 {
		t.Fatalf("account id %q decodes to %d bytes, version %d", account, len(raw), raw[0])
	}
	var crc uint16
	for _, b := range raw[:33] {
		for i := 7; i >= 0; i-- {
			bit := (b>>i)&1 == 1
			top := crc&0x8000 != 0
			crc <<= 1
			if bit != top {
				crc ^= 0x1021
			}
		}
	}
	if raw[33] != byte(crc) || raw[34] != byte(crc>>8) {
		t.Fatalf("account id %q: checksum", account)
	}
	m := regexp.MustCompile(`^t=(\d+), s=([A-Za-z0-9+/]+={0,2})$`).FindStringSubmatch(header)
	if m == nil {
		return false
	}
	ts, _ := strconv.ParseInt(m[1], 10, 64)
	if now.Sub(time.Unix(ts, 0)) > 2*time.Minute {
		return false
	}
	sig, err := base64.StdEncoding.DecodeString(m[2])
	if err != nil {
		return false
	}
	return ed25519.Verify(ed25519.PublicKey(raw[1:33]), []byte(m[1]+"."+host+"."+string(body)), sig)
}

func TestAnchorSignatureVerifiesIndependently(t *testing.T) {
	a, err := NewAnchor(testSeed)
	if err != nil {
		t.Fatal(err)
	}
	if got := EncodeAccount(a.Public()); got != testAccount {
		t.Fatalf("account %s, want %s", got, testAccount)
	}
	body := []byte(`{"transaction":{"id":"tx-1","sep":"24","status":"completed"}}`)
	now := time.Now()
	for _, u := range []struct{ url, host string }{
		{"https://wallet.example.com/callbacks/sep24?x=1", "wallet.example.com"},
		{"http://127.0.0.1:8080/cb", "127.0.0.1:8080"},
	} {
		host, err := SignedHost(u.url)
		if err != nil || host != u.host {
			t.Fatalf("%s: host %q %v, want %q", u.url, host, err, u.host)
		}
		h := string(a.AppendSignature(nil, now.Unix(), host, body))
		if !verifyAnchor(t, testAccount, h, host, body, now) {
			t.Fatalf("%s: %q does not verify", u.url, h)
		}
		if verifyAnchor(t, testAccount, h, host, bytes.Replace(body, []byte("completed"), []byte("refunded"), 1), now) {
			t.Fatal("a tampered body verified")
		}
		if verifyAnchor(t, testAccount, h, "other.example.com", body, now) {
			t.Fatal("another host verified")
		}
		if verifyAnchor(t, testAccount, h, host, body, now.Add(3*time.Minute)) {
			t.Fatal("a signature older than two minutes verified")
		}
	}
	for _, bad := range []string{testAccount, testSeed[:55] + "5", "S" + strings.Repeat("A", 55), "short"} {
		if _, err := NewAnchor(bad); err == nil {
			t.Errorf("seed %q accepted", bad)
		}
	}
}

func TestJWTHasOnlyIatAndExp(t *testing.T) {
	secret := strings.Repeat("s", 32)
	j, err := NewJWT(secret, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0)
	tok := string(j.AppendToken(nil, now))
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q", tok)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if base64.RawURLEncoding.EncodeToString(mac.Sum(nil)) != parts[2] {
		t.Fatal("signature does not verify")
	}
	var header, claims map[string]any
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if json.Unmarshal(hb, &header) != nil || json.Unmarshal(cb, &claims) != nil {
		t.Fatalf("token parts %s %s", hb, cb)
	}
	if header["alg"] != "HS256" || len(claims) != 2 || claims["iat"] != float64(1700000000) || claims["exp"] != float64(1700000030) {
		t.Fatalf("header %v claims %v", header, claims)
	}
	if _, err := NewJWT(strings.Repeat("s", 31), time.Minute); err == nil {
		t.Error("a 31-byte secret was accepted")
	}
	if _, err := NewJWT(secret, 4999*time.Millisecond); err == nil {
		t.Error("an expiration under 5000 ms was accepted")
	}
}

func BenchmarkWebhookSignature(b *testing.B) {
	w, _ := NewWebhook(vectorSecret)
	body := bytes.Repeat([]byte("x"), 300)
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for range b.N {
		buf = w.AppendSignature(buf[:0], []byte(vectorID), vectorTimestamp, body)
	}
}

func BenchmarkAnchorSignature(b *testing.B) {
	a, _ := NewAnchor(testSeed)
	body := bytes.Repeat([]byte("x"), 300)
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for range b.N {
		buf = a.AppendSignature(buf[:0], 1700000000, "wallet.example.com", body)
	}
}
