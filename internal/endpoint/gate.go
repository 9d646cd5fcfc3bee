package endpoint

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/sign"
)

// The Standard Webhooks header names, lower-case as the standard writes them.
var (
	headerID        = []byte("webhook-id")
	headerTimestamp = []byte("webhook-timestamp")
	headerSignature = []byte("webhook-signature")
)

// Admit implements engine.Gate: the endpoint's limits and breaker, then, when its rule has a
// secret, the three Standard Webhooks headers, signed at this attempt's time.
func (t *Table) Admit(m *engine.Message) (engine.Result, bool) {
	rule := t.match(m.URL)
	if r, ok := t.acquire(m.URL, rule); !ok {
		return r, false
	}
	if rule.signer != nil {
		t.sign(m, rule, t.now()/int64(time.Second))
	}
	return engine.Result{}, true
}

// Done implements engine.Gate.
func (t *Table) Done(m *engine.Message, r engine.Result) engine.Result { return t.Release(m.URL, r) }

// sign adds webhook-id, webhook-timestamp and webhook-signature to m. The id must be the same on
// every retry, and nothing of a retried entry but its content is: it is the entry's own
// webhook-id header when it has one, else derived from the URL and the payload (byte-identical
// messages to one endpoint share an id, which is what a receiver deduplicating by id wants).
func (t *Table) sign(m *engine.Message, rule *compiled, now int64) {
	var own []byte
	for _, h := range m.Headers {
		if bytes.EqualFold(h.Name, headerID) {
			own = h.Value
			break
		}
	}
	x := m.Extra[:0]
	if own != nil {
		x = append(x, own...)
	} else {
		x = AppendMessageID(x, m.URL, m.Payload)
	}
	m.Headers, m.Extra = appendSigned(m.Headers, x, len(x), own == nil, rule.signer, now, m.Payload)
	t.m.signed.Inc()
}

// appendSigned signs a delivery of body whose webhook-id is buf[:idLen]: it appends the
// timestamp and the signature to buf, and to hs the webhook-id header (when addID),
// webhook-timestamp and webhook-signature. The headers are sliced from buf only after its last
// append, which may move it.
func appendSigned(hs []engine.Header, buf []byte, idLen int, addID bool, s *sign.Webhook, ts int64, body []byte) ([]engine.Header, []byte) {
	buf = strconv.AppendInt(buf, ts, 10)
	tsEnd := len(buf)
	buf = s.AppendSignature(buf, buf[:idLen], ts, body)
	if addID {
		hs = append(hs, engine.Header{Name: headerID, Value: buf[:idLen]})
	}
	return append(hs,
		engine.Header{Name: headerTimestamp, Value: buf[idLen:tsEnd]},
		engine.Header{Name: headerSignature, Value: buf[tsEnd:]}), buf
}

// AppendMessageID appends the webhook-id Herald gives a message that has none: "msg_" and 22
// base64url characters of a 128-bit hash of its URL and payload.
//
// The id is a deduplication key, not a secret or a proof: the signature covers it. So the hash is
// xxHash64 under two seeds, about a tenth of the cost of SHA-256 on a 300-byte payload, which on
// its own was half the cost of signing a delivery.
func AppendMessageID(dst, url, payload []byte) []byte {
	var sum [16]byte
	var d xxhash.Digest
	for i, seed := range [2]uint64{idSeedA, idSeedB} {
		d.ResetWithSeed(seed)
		d.Write(url)
		d.Write(zero[:])
		d.Write(payload)
		binary.BigEndian.PutUint64(sum[i*8:], d.Sum64())
	}
	dst = append(dst, "msg_"...)
	return base64.RawURLEncoding.AppendEncode(dst, sum[:])
}

// The seeds of the two halves of a message id: any two fixed, different values would do; these
// must never change, or a message retried across an upgrade would get a new id.
const (
	idSeedA = 0x6865726c64696431 // "herldid1"
	idSeedB = 0x6865726c64696432 // "herldid2"
)

var zero [1]byte

// SignHeaders appends to hs the three Standard Webhooks headers for a delivery of body to url
// as id (buf's content) at timestamp, when url's rule has a secret; their values are appended to
// buf, returned for reuse. ok is false, and nothing appended, when the rule has none. Services
// that build their own requests (herald callbacks) sign with it; id must be stable across
// retries.
func (t *Table) SignHeaders(hs []engine.Header, buf, url []byte, timestamp int64, body []byte) (_ []engine.Header, _ []byte, ok bool) {
	rule := t.match(url)
	if rule.signer == nil {
		return hs, buf, false
	}
	t.m.signed.Inc()
	hs, buf = appendSigned(hs, buf, len(buf), true, rule.signer, timestamp, body)
	return hs, buf, true
}

// Throttled reports whether a receiver's answer with status asks for a pause: the statuses
// whose Retry-After every HTTP delivery honours.
func Throttled(status int) bool { return status == 429 || status == 503 }

// ParseRetryAfter reads a Retry-After value, delay-seconds or an HTTP date, as a wait from now;
// 0 when it is missing, malformed or in the past. Waits are capped at MaxRetryAfter.
func ParseRetryAfter(v []byte, now time.Time) time.Duration {
	if len(v) == 0 {
		return 0
	}
	var d time.Duration
	if n, ok := digits(v); ok {
		d = time.Duration(min(n, int64(MaxRetryAfter/time.Second))) * time.Second
	} else if at, err := time.Parse(time.RFC1123, string(v)); err == nil {
		d = at.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}

// MaxRetryAfter caps how long a receiver's Retry-After may hold a message back.
const MaxRetryAfter = time.Hour

func digits(v []byte) (int64, bool) {
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < 1<<40 {
			n = n*10 + int64(c-'0')
		}
	}
	return n, true
}
