package endpoint

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The Standard Webhooks specification's example secret, and another for rotations.
const (
	vectorSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	otherSecret  = "whsec_" + "c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM="
)

// clock is a Table's time, moved by hand.
type clock struct{ ns int64 }

func (c *clock) now() int64              { return c.ns }
func (c *clock) advance(d time.Duration) { c.ns += int64(d) }

func newTable(t *testing.T, rules ...Rule) (*Table, *clock, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	tb, err := NewTable(rules, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{ns: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()}
	tb.now = c.now
	return tb, c, reg
}

func msg(url, body string, headers ...engine.Header) *engine.Message {
	return &engine.Message{URL: []byte(url), Payload: []byte(body), Headers: headers}
}

func header(m *engine.Message, name string) (string, bool) {
	for _, h := range m.Headers {
		if strings.EqualFold(string(h.Name), name) {
			return string(h.Value), true
		}
	}
	return "", false
}

// verify checks a webhook-signature value the way the standard tells receivers to, from the
// secret alone: any one of the space-separated v1 signatures must match.
func verify(secret, id, ts, body, sigs string) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "." + body))
	want := mac.Sum(nil)
	for _, s := range strings.Split(sigs, " ") {
		v, ok := strings.CutPrefix(s, "v1,")
		if !ok {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(v)
		if err == nil && hmac.Equal(got, want) {
			return true
		}
	}
	return false
}

// TestSignUsesTheRulesSecret: SignHeaders (for services building their own requests) signs with
// the secret of the endpoint's rule, checked by a verifier written from the standard;
// internal/sign checks the HMAC itself against the standard's published example.
func TestSignUsesTheRulesSecret(t *testing.T) {
	tb, _, _ := newTable(t, Rule{URL: "https://hooks.example.com/", Secret: vectorSecret})
	hs, _, ok := tb.SignHeaders(nil, []byte("evt_1"), []byte("https://hooks.example.com/x"), 1614265330, []byte(`{"a":1}`))
	m := &engine.Message{Headers: hs}
	id, _ := header(m, "webhook-id")
	ts, _ := header(m, "webhook-timestamp")
	got, _ := header(m, "webhook-signature")
	if !ok || id != "evt_1" || ts != "1614265330" || !verify(vectorSecret, "evt_1", "1614265330", `{"a":1}`, got) {
		t.Fatalf("signature %q (signed %v) does not verify", got, ok)
	}
	if _, _, ok := tb.SignHeaders(nil, []byte("evt_1"), []byte("https://other.example.com/"), 1614265330, nil); ok {
		t.Error("an endpoint without a secret was signed")
	}
}

func TestAdmitSignsWithEveryHeader(t *testing.T) {
	tb, clk, _ := newTable(t, Rule{URL: "http://127.0.0.1:9/hooks", Secret: otherSecret + " " + vectorSecret})
	m := msg("http://127.0.0.1:9/hooks/a", `{"a":1}`, engine.Header{Name: []byte("Content-Type"), Value: []byte("application/json")})
	if _, ok := tb.Admit(m); !ok {
		t.Fatal("refused")
	}
	id, _ := header(m, "webhook-id")
	ts, _ := header(m, "webhook-timestamp")
	sigs, _ := header(m, "webhook-signature")
	if !strings.HasPrefix(id, "msg_") || len(id) != 4+22 {
		t.Errorf("webhook-id %q", id)
	}
	if want := time.Unix(0, clk.ns).Unix(); ts != strconv.FormatInt(want, 10) {
		t.Errorf("webhook-timestamp %q, want %d", ts, want)
	}
	// Rotation: one signature per secret, each verifying on its own.
	if n := len(strings.Split(sigs, " ")); n != 2 {
		t.Errorf("%d signatures, want 2: %q", n, sigs)
	}
	for _, s := range []string{otherSecret, vectorSecret} {
		if !verify(s, id, ts, `{"a":1}`, sigs) {
			t.Errorf("signature does not verify with %s", s)
		}
	}
	if verify(vectorSecret, id, ts, `{"a":2}`, sigs) {
		t.Error("a tampered body verified")
	}
	if ct, _ := header(m, "Content-Type"); ct != "application/json" {
		t.Error("the entry's own headers were lost")
	}

	// A retry of the same message, later: same id, new timestamp, still valid.
	clk.advance(7 * time.Second)
	again := msg("http://127.0.0.1:9/hooks/a", `{"a":1}`)
	tb.Admit(again)
	id2, _ := header(again, "webhook-id")
	ts2, _ := header(again, "webhook-timestamp")
	sigs2, _ := header(again, "webhook-signature")
	if id2 != id || ts2 == ts || !verify(vectorSecret, id2, ts2, `{"a":1}`, sigs2) {
		t.Errorf("retry: id %q ts %q (first %q %q)", id2, ts2, id, ts)
	}
	// Another payload to the same endpoint gets another id; an entry's own id is kept.
	other := msg("http://127.0.0.1:9/hooks/a", `{"a":3}`)
	tb.Admit(other)
	if id3, _ := header(other, "webhook-id"); id3 == id {
		t.Error("two payloads share an id")
	}
	own := msg("http://127.0.0.1:9/hooks/a", `{"a":1}`, engine.Header{Name: []byte("Webhook-Id"), Value: []byte("evt_42")})
	tb.Admit(own)
	var ids int
	for _, h := range own.Headers {
		if strings.EqualFold(string(h.Name), "webhook-id") {
			ids++
		}
	}
	sigs4, _ := header(own, "webhook-signature")
	ts4, _ := header(own, "webhook-timestamp")
	if ids != 1 || !verify(vectorSecret, "evt_42", ts4, `{"a":1}`, sigs4) {
		t.Errorf("entry's own webhook-id: %d id headers, signature over it %v", ids, verify(vectorSecret, "evt_42", ts4, `{"a":1}`, sigs4))
	}
	// Endpoints no rule names are left alone.
	plain := msg("http://127.0.0.1:9/elsewhere", "x")
	tb.Admit(plain)
	if len(plain.Headers) != 0 {
		t.Errorf("unsigned endpoint got headers %v", plain.Headers)
	}
	if v := testutil.ToFloat64(tb.m.signed); v != 4 {
		t.Errorf("herald_endpoint_signed_total %v, want 4", v)
	}
}

// TestMessageIDIsPinned holds the derived webhook-id to a value computed once: a receiver
// deduplicates by it, so a new Herald must give a message retried across an upgrade the same id.
func TestMessageIDIsPinned(t *testing.T) {
	if id := string(AppendMessageID(nil, []byte("http://127.0.0.1:9/hooks/a"), []byte(`{"a":1}`))); id != "msg_o8vKSYOQEmrUUqiEDVXzzA" {
		t.Errorf("id %q changed", id)
	}
	// The URL ends where the payload starts: moving a byte across the boundary is another message.
	a := string(AppendMessageID(nil, []byte("http://h/ab"), []byte("c")))
	b := string(AppendMessageID(nil, []byte("http://h/a"), []byte("bc")))
	if a == b {
		t.Error("URL and payload run together")
	}
}

func TestRateLimitSpreadsDeferrals(t *testing.T) {
	tb, clk, _ := newTable(t, Rule{URL: "http://a.example/", Rate: 10, Burst: 2})
	url := []byte("http://a.example/x")
	for i := range 2 {
		if _, ok := tb.Acquire(url); !ok {
			t.Fatalf("burst delivery %d refused", i)
		}
		tb.Release(url, engine.Result{Status: 200})
	}
	// Further ones are held back, each until a later slot: 100 ms apart at 10/s.
	var waits []time.Duration
	for range 3 {
		r, ok := tb.Acquire(url)
		if ok || !r.Deferred || r.Err != nil {
			t.Fatalf("over the rate: ok %v, result %+v", ok, r)
		}
		waits = append(waits, r.RetryAfter)
	}
	for i := 1; i < len(waits); i++ {
		if d := waits[i] - waits[i-1]; d != 100*time.Millisecond {
			t.Errorf("deferrals %v apart, want 100ms (%v)", d, waits)
		}
	}
	// Another endpoint under the same rule has its own budget.
	if _, ok := tb.Acquire([]byte("http://a.example/y")); !ok {
		t.Error("a second endpoint shares the first one's limit")
	}
	clk.advance(100 * time.Millisecond)
	if _, ok := tb.Acquire(url); !ok {
		t.Error("refused after its slot came")
	}
	if v := testutil.ToFloat64(tb.m.deferred.WithLabelValues("rate_limit")); v != 3 {
		t.Errorf("deferred{rate_limit} %v, want 3", v)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	tb, _, _ := newTable(t, Rule{URL: "http://a.example/", Concurrency: 2})
	url := []byte("http://a.example/x")
	for range 2 {
		if _, ok := tb.Acquire(url); !ok {
			t.Fatal("refused under the limit")
		}
	}
	r, ok := tb.Acquire(url)
	if ok || !r.Deferred || r.RetryAfter != ConcurrencyWait {
		t.Fatalf("third at once: ok %v %+v", ok, r)
	}
	tb.Release(url, engine.Result{Err: errors.New("boom")})
	if _, ok := tb.Acquire(url); !ok {
		t.Error("refused after one finished")
	}
	if v := testutil.ToFloat64(tb.m.deferred.WithLabelValues("concurrency")); v != 1 {
		t.Errorf("deferred{concurrency} %v", v)
	}
}

func TestCircuitBreaker(t *testing.T) {
	tb, clk, _ := newTable(t, Rule{URL: "http://a.example/", BreakAfter: 3, Cooldown: Duration(30 * time.Second)})
	url := []byte("http://a.example/x")
	fail := func(status int) {
		t.Helper()
		if _, ok := tb.Acquire(url); !ok {
			t.Fatal("refused while closed")
		}
		tb.Release(url, engine.Result{Err: errors.New("failed"), Status: status})
	}
	fail(500)
	fail(0) // no answer at all
	// A 4xx comes from a receiver that is up: the count starts again.
	fail(400)
	fail(503)
	fail(429)
	if _, ok := tb.Acquire(url); !ok {
		t.Fatal("opened before three consecutive failures")
	}
	tb.Release(url, engine.Result{Err: errors.New("failed"), Status: 502})
	r, ok := tb.Acquire(url)
	if ok || !errors.Is(r.Err, ErrOpen) || r.Permanent || r.Deferred {
		t.Fatalf("open circuit: ok %v %+v, want a failed attempt with ErrOpen", ok, r)
	}
	if v := testutil.ToFloat64(tb.m.open); v != 1 {
		t.Errorf("circuits_open %v", v)
	}
	// After the cooldown, one probe; the others are still refused while it runs.
	clk.advance(30 * time.Second)
	if _, ok := tb.Acquire(url); !ok {
		t.Fatal("no probe after the cooldown")
	}
	if _, ok := tb.Acquire(url); ok {
		t.Fatal("a second delivery went during the probe")
	}
	// The probe fails: open again for another cooldown.
	tb.Release(url, engine.Result{Err: errors.New("failed"), Status: 500})
	clk.advance(29 * time.Second)
	if _, ok := tb.Acquire(url); ok {
		t.Fatal("reopened circuit let a delivery through early")
	}
	clk.advance(time.Second)
	if _, ok := tb.Acquire(url); !ok {
		t.Fatal("no second probe")
	}
	tb.Release(url, engine.Result{Status: 200})
	for range 5 {
		if _, ok := tb.Acquire(url); !ok {
			t.Fatal("refused after a successful probe")
		}
		tb.Release(url, engine.Result{Status: 200})
	}
	for to, want := range map[string]float64{"open": 2, "half_open": 2, "closed": 1} {
		if v := testutil.ToFloat64(tb.m.transitions.WithLabelValues(to)); v != want {
			t.Errorf("transitions{to=%s} %v, want %v", to, v, want)
		}
	}
	if v := testutil.ToFloat64(tb.m.open); v != 0 {
		t.Errorf("circuits_open %v after closing", v)
	}
}

func TestGoneDisablesTheEndpoint(t *testing.T) {
	tb, _, _ := newTable(t, Rule{URL: "http://keep.example/", OnGone: "retry"})
	gone := []byte("http://a.example/hook")
	if _, ok := tb.Acquire(gone); !ok {
		t.Fatal("refused")
	}
	r := tb.Release(gone, engine.Result{Err: errors.New("410"), Status: 410})
	if !r.Permanent || !errors.Is(r.Err, ErrGone) {
		t.Fatalf("410 settled as %+v, want permanent ErrGone", r)
	}
	r, ok := tb.Acquire(gone)
	if ok || !r.Permanent || !errors.Is(r.Err, ErrGone) || r.Status != 410 {
		t.Fatalf("after 410: ok %v %+v", ok, r)
	}
	// Only that endpoint: another one on the same host still goes.
	if _, ok := tb.Acquire([]byte("http://a.example/other")); !ok {
		t.Error("another endpoint was disabled too")
	}
	// A rule may keep retrying on 410.
	keep := []byte("http://keep.example/x")
	if r := tb.Release(keep, engine.Result{Err: errors.New("410"), Status: 410}); r.Permanent {
		t.Error(`on_gone "retry" disabled the endpoint`)
	}
	if _, ok := tb.Acquire(keep); !ok {
		t.Error(`on_gone "retry" endpoint refused`)
	}
	if v := testutil.ToFloat64(tb.m.disabled); v != 1 {
		t.Errorf("herald_endpoint_disabled %v", v)
	}
	if v := testutil.ToFloat64(tb.m.refused.WithLabelValues("gone")); v != 1 {
		t.Errorf("refused{gone} %v", v)
	}
}

func TestLongestPrefixWins(t *testing.T) {
	tb, _, _ := newTable(t,
		Rule{URL: "", Concurrency: 1},
		Rule{URL: "http://a.example/", Concurrency: 2},
		Rule{URL: "http://a.example/special/", Concurrency: 3})
	for url, want := range map[string]int{"http://z.example/": 1, "http://a.example/x": 2, "http://a.example/special/x": 3} {
		n := 0
		for {
			if _, ok := tb.Acquire([]byte(url)); !ok {
				break
			}
			n++
		}
		if n != want {
			t.Errorf("%s: %d at once, want %d", url, n, want)
		}
	}
}

func TestParseRules(t *testing.T) {
	good := `[{"url": "https://hooks.example.com/", "secret": "` + vectorSecret + `", "rate": 50, "burst": 10,
		"concurrency": 4, "break_after": 5, "cooldown": "1m", "on_gone": "retry"}, {"url": ""}]`
	rules, err := ParseRules(good)
	if err != nil || len(rules) != 2 || time.Duration(rules[0].Cooldown) != time.Minute || rules[0].Rate != 50 {
		t.Fatalf("%+v, %v", rules, err)
	}
	file := filepath.Join(t.TempDir(), "endpoints.json")
	if err := os.WriteFile(file, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if rules, err := ParseRules(file); err != nil || len(rules) != 2 {
		t.Errorf("from a file: %v", err)
	}
	for in, want := range map[string]string{
		`[{"url": "https://a/", "secret": "whsec_!!"}]`:                 "whsec_",
		`[{"url": "https://a/", "secret": "whsec_c2hvcnQ="}]`:           "24 to 64",
		`[{"url": "ftp://a/"}]`:                                         "scheme",
		`[{"url": "hooks.example.com"}]`:                                "absolute URL",
		`[{"url": "https://a/", "rate": -1}]`:                           "rate",
		`[{"url": "https://a/", "burst": 3}]`:                           "burst needs a rate",
		`[{"url": "https://a/", "cooldown": "5s"}]`:                     "cooldown needs break_after",
		`[{"url": "https://a/", "break_after": 3, "cooldown": "soon"}]`: "duration",
		`[{"url": "https://a/", "on_gone": "ignore"}]`:                  "on_gone",
		`[{"url": "https://a/", "concurency": 3}]`:                      "unknown field",
		`[{"url": "https://a/"}, {"url": "https://a/"}]`:                "second rule",
		`{"url": "https://a/"}`:                                         "neither",
		`[{"url": "https://a/"`:                                         "not a JSON array",
	} {
		_, err := ParseRules(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one saying %q", in, err, want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":                              0,
		"7":                             7 * time.Second,
		"0":                             0,
		"-3":                            0,
		"soon":                          0,
		"99999999999999":                MaxRetryAfter,
		"Thu, 01 Jan 2026 12:00:30 GMT": 30 * time.Second,
		"Thu, 01 Jan 2026 11:00:00 GMT": 0,
	} {
		if got := ParseRetryAfter([]byte(in), now); got != want {
			t.Errorf("Retry-After %q: %v, want %v", in, got, want)
		}
	}
}

func BenchmarkAdmit(b *testing.B) {
	for _, c := range []struct {
		name string
		rule Rule
	}{
		{"no-rule", Rule{URL: "http://other.example/"}},
		{"signed", Rule{URL: "http://a.example/", Secret: vectorSecret}},
		{"limits+breaker", Rule{URL: "http://a.example/", Rate: 1e9, Concurrency: 1 << 20, BreakAfter: 5}},
	} {
		b.Run(c.name, func(b *testing.B) {
			tb, err := NewTable([]Rule{c.rule}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			m := msg("http://a.example/hook", strings.Repeat("x", 300))
			b.ReportAllocs()
			for range b.N {
				m.Headers = m.Headers[:0]
				if _, ok := tb.Admit(m); !ok {
					b.Fatal("refused")
				}
				tb.Done(m, engine.Result{Status: 200})
			}
		})
	}
}
