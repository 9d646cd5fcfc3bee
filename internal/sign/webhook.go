// Package sign holds the signatures and tokens a receiver may ask of a delivery: Standard Webhooks
// HMAC signatures, the Ed25519 "Signature" header of Stellar Anchor Platform callbacks, and the
// short-lived HS256 bearer tokens of its business-server callbacks. Signing appends to a caller's
// buffer; the HMAC path allocates nothing.
package sign

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
)

// Webhook signs deliveries the Standard Webhooks way: the signature of "<id>.<timestamp>.<body>"
// under each secret, "v1,<base64>" entries separated by spaces, so that a receiver rotating its
// secret accepts either.
type Webhook struct {
	keys  [][]byte
	pools []sync.Pool // one pool of *macState per key
}

// macState is a keyed HMAC with room for what is signed before the body: pooled whole, so that
// nothing passed through the hash.Hash interface has to move to the heap per call.
type macState struct {
	h      hash.Hash
	prefix []byte
	sum    [sha256.Size]byte
}

// NewWebhook takes the secrets as the standard writes them, "whsec_<base64>" (the prefix may be
// left out), newest first.
func NewWebhook(secrets ...string) (*Webhook, error) {
	if len(secrets) == 0 {
		return nil, errors.New("no webhook secret")
	}
	w := &Webhook{pools: make([]sync.Pool, len(secrets))}
	for i, s := range secrets {
		raw := strings.TrimPrefix(strings.TrimSpace(s), "whsec_")
		key, err := base64.StdEncoding.DecodeString(raw)
		if err != nil {
			return nil, fmt.Errorf("webhook secret %d is not whsec_<base64>: %v", i+1, err)
		}
		if len(key) < 24 || len(key) > 64 {
			return nil, fmt.Errorf("webhook secret %d is %d bytes; the standard wants 24 to 64", i+1, len(key))
		}
		w.keys = append(w.keys, key)
		w.pools[i].New = func() any { return &macState{h: hmac.New(sha256.New, key), prefix: make([]byte, 0, 64)} }
	}
	return w, nil
}

// AppendSignature appends the webhook-signature header value for the message id sent at
// timestamp (unix seconds) with body.
func (w *Webhook) AppendSignature(dst, id []byte, timestamp int64, body []byte) []byte {
	for i := range w.keys {
		if i > 0 {
			dst = append(dst, ' ')
		}
		st := w.pools[i].Get().(*macState)
		st.prefix = append(st.prefix[:0], id...)
		st.prefix = append(st.prefix, '.')
		st.prefix = strconv.AppendInt(st.prefix, timestamp, 10)
		st.prefix = append(st.prefix, '.')
		st.h.Reset()
		st.h.Write(st.prefix)
		st.h.Write(body)
		dst = append(dst, "v1,"...)
		dst = base64.StdEncoding.AppendEncode(dst, st.h.Sum(st.sum[:0]))
		w.pools[i].Put(st)
	}
	return dst
}
