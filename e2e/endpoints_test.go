package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
)

// The Standard Webhooks specification's example secret.
const webhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// TestEndpointRules runs `herald deliver` with HERALD_ENDPOINTS against one receiver whose paths
// behave differently: a signed endpoint verifies every delivery with the secret alone, a 410
// disables its endpoint (later entries are dead-lettered without being sent), and a 429 with
// Retry-After schedules the retry when the receiver asked rather than after the policy's 5 s.
// Both HTTP clients are checked: the event loops and the pooled client.
func TestEndpointRules(t *testing.T) {
	srv := redistest.Standalone(t)
	for _, httpClient := range []string{"event-loop", "pooled"} {
		t.Run(httpClient, func(t *testing.T) { testEndpointRules(t, srv, httpClient) })
	}
}

func testEndpointRules(t *testing.T, srv *redistest.Server, httpClient string) {
	c := client(t, srv.URL())
	ctx := context.Background()

	var mu sync.Mutex
	var verified, bad []string
	var goneHits, busyHits atomic.Int32
	var limited []time.Time
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/signed":
			id, ts, sigs := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature")
			mu.Lock()
			if verifyWebhook(webhookSecret, id, ts, string(body), sigs) {
				verified = append(verified, id)
			} else {
				bad = append(bad, id+" "+ts+" "+sigs)
			}
			mu.Unlock()
		case "/limited":
			mu.Lock()
			limited = append(limited, time.Now())
			mu.Unlock()
		case "/gone":
			goneHits.Add(1)
			w.WriteHeader(http.StatusGone)
		case "/busy":
			if busyHits.Add(1) == 1 {
				w.Header().Set("Retry-After", "2")
				w.WriteHeader(http.StatusTooManyRequests)
			}
		}
	}))
	defer recv.Close()

	prefix := "endpoints-" + httpClient
	keys := redisq.NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
	push := func(path, body string) {
		t.Helper()
		e := acapy.AppendOutbound(nil, recv.URL+path, []engine.Header{{Name: []byte("Content-Type"), Value: []byte("application/json")}}, []byte(body))
		if err := c.Do(ctx, c.B().Rpush().Key(keys.Queue).Element(string(e)).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	rules := `[{"url": "` + recv.URL + `/signed", "secret": "` + webhookSecret + `"},
		{"url": "` + recv.URL + `/limited", "rate": 2, "burst": 1}]`
	port := freePort(t)
	start(t, []string{"REDIS_SERVER_URL=" + srv.URL(), "TOPIC_PREFIX=" + prefix, "HERALD_ENDPOINTS=" + rules,
		"STATUS_ENDPOINT_HOST=127.0.0.1", "STATUS_ENDPOINT_PORT=" + port, "STATUS_ENDPOINT_API_KEY=k", "HERALD_HTTP_CLIENT=" + httpClient}, "deliver")

	push("/signed", `{"n":1}`)
	push("/signed", `{"n":2}`)
	push("/gone", `{"n":3}`)
	busyAt := time.Now()
	push("/busy", `{"n":4}`)
	for i := range 4 {
		push("/limited", `{"l":`+string(rune('0'+i))+`}`)
	}
	eventually(t, 10*time.Second, "the signed deliveries", func() bool { mu.Lock(); defer mu.Unlock(); return len(verified)+len(bad) == 2 })
	if len(bad) > 0 || verified[0] == verified[1] {
		t.Errorf("signatures that do not verify: %v; ids %v", bad, verified)
	}

	// The 410 dead-letters its entry at once, and the next entry for that endpoint is not sent.
	eventually(t, 10*time.Second, "the 410 entry dead-lettered", func() bool { return llen(t, c, keys.Dead) == 1 })
	push("/gone", `{"n":5}`)
	eventually(t, 10*time.Second, "the second entry for the gone endpoint dead-lettered", func() bool { return llen(t, c, keys.Dead) == 2 })
	if n := goneHits.Load(); n != 1 {
		t.Errorf("the gone endpoint was sent %d requests, want 1", n)
	}
	entries, _ := c.Do(ctx, c.B().Lrange().Key(keys.Dead).Start(0).Stop(-1).Build()).AsStrSlice()
	for _, e := range entries {
		d, err := acapy.ParseDeadLetter([]byte(e))
		if err != nil || d.Status != 410 || !strings.Contains(d.Reason, "410 Gone") {
			t.Errorf("dead letter %s: %+v %v", e, d, err)
		}
	}

	// 429 with Retry-After: 2 is retried after about 2 s, not the policy's first 5 s.
	eventually(t, 10*time.Second, "the 429 entry retried", func() bool { return busyHits.Load() == 2 })
	if took := time.Since(busyAt); took > 4500*time.Millisecond {
		t.Errorf("429 retried after %s; Retry-After said 2 s", took)
	}
	// Four entries at 2/s with no burst: held back and sent later, never lost or counted as tries.
	eventually(t, 15*time.Second, "the rate-limited deliveries", func() bool { mu.Lock(); defer mu.Unlock(); return len(limited) == 4 })
	if spread := limited[3].Sub(limited[0]); spread < time.Second {
		t.Errorf("4 deliveries at 2/s took %s", spread)
	}
	if got := metric(t, port, "herald_endpoint_deferred_total"); got == "" || got == "0" {
		t.Errorf("herald_endpoint_deferred_total = %q", got)
	}
	for name, want := range map[string]string{"herald_endpoint_disabled": "1", "herald_endpoint_signed_total": "2",
		"herald_endpoint_retry_after_total": "1"} {
		if got := metric(t, port, name); got != want {
			t.Errorf("%s = %q, want %s", name, got, want)
		}
	}
}

// verifyWebhook checks a Standard Webhooks delivery the way its receiver would.
func verifyWebhook(secret, id, ts, body, sigs string) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || id == "" || ts == "" {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "." + body))
	want := mac.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		if v, ok := strings.CutPrefix(s, "v1,"); ok {
			if got, err := base64.StdEncoding.DecodeString(v); err == nil && hmac.Equal(got, want) {
				return true
			}
		}
	}
	return false
}
