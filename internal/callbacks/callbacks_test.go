package callbacks

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/endpoint"
	"github.com/heraldhq/herald/internal/kafkaq/kafkatest"
	"github.com/heraldhq/herald/internal/proctest"
	"github.com/heraldhq/herald/internal/sign"
	"github.com/twmb/franz-go/pkg/kgo"
)

const testSeed = "SDHOAMBNLGCE2MV5ZKIVZAQD3VCLGP53P3OBSBI6UN5L5XZI5TKHFQL4"

// call is one request a receiver got.
type call struct {
	path   string
	header http.Header
	body   []byte
	at     time.Time
}

// receiver records every request; answer picks the status of each (200 when nil).
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	calls  []call
	answer func(c call) int
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		c := call{path: req.URL.Path, header: req.Header.Clone(), body: b, at: time.Now()}
		r.mu.Lock()
		r.calls = append(r.calls, c)
		answer := r.answer
		r.mu.Unlock()
		status := 200
		if answer != nil {
			status = answer(c)
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

// waitFor waits until ok holds for what the receiver got.
func (r *receiver) waitFor(t *testing.T, what string, ok func([]call) bool) []call {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cs := r.got()
		if ok(cs) {
			return cs
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s; got %d calls", what, len(cs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rig is a kfake cluster with the TRANSACTION topic and herald callbacks reading it.
type rig struct {
	t       *testing.T
	kafka   *kafkatest.Cluster
	produce *kgo.Client
	status  string
}

func start(t *testing.T, c config.Callbacks) *rig {
	t.Helper()
	k := kafkatest.Start(t, "TRANSACTION")
	c.Seeds, c.Topic = k.Seeds(), "TRANSACTION"
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Attempts == 0 {
		c.Attempts = 5
	}
	if c.BackoffBase == 0 {
		c.BackoffBase, c.BackoffCap = 50*time.Millisecond, time.Second
	}
	if c.Lanes == 0 {
		c.Lanes = 16
	}
	port := strconv.Itoa(proctest.FreePort())
	c.Status = config.Status{Host: "127.0.0.1", Port: port, APIKey: "k"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, c, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	p, err := kgo.NewClient(kgo.SeedBrokers(k.Seeds()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		p.Close()
	})
	return &rig{t: t, kafka: k, produce: p, status: "http://127.0.0.1:" + port}
}

func (r *rig) send(values ...string) {
	r.t.Helper()
	for _, v := range values {
		if err := r.produce.ProduceSync(context.Background(), &kgo.Record{Topic: "TRANSACTION", Value: []byte(v)}).FirstErr(); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *rig) metric(name string) string {
	r.t.Helper()
	req, _ := http.NewRequest("GET", r.status+"/metrics", nil)
	req.Header.Set("access_token", "k")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			return strings.TrimPrefix(line, name+" ")
		}
	}
	return ""
}

func txEvent(typ, id, sep, client, status string) string {
	return fmt.Sprintf(`{"type":%q,"id":"ev-%s-%s","sep":%q,"transaction":{"id":%q,"sep":%q,"status":%q,"kind":"deposit","client_name":%q,"amount_in":{"amount":"10","asset":"stellar:USDC"}}}`,
		typ, id, status, sep, id, sep, status, client)
}

var signatureHeader = regexp.MustCompile(`^t=(\d+), s=([A-Za-z0-9+/]+=*)$`)

func TestClientCallbacksAreRoutedAndSigned(t *testing.T) {
	recv := newReceiver(t)
	cl := config.CallbackClient{Name: "wallet1", Domain: "wallet1.example.com", URLs: map[string]string{
		"sep6": recv.URL + "/sep6", "sep24": recv.URL + "/sep24", "sep12": recv.URL + "/sep12", "sep31": ""}}
	r := start(t, config.Callbacks{ClientCallbacks: true, SigningSeed: testSeed, Clients: []config.CallbackClient{cl}})
	r.send(
		`not json`,
		`{"type":null,"id":"x"}`,
		txEvent("transaction_created", "t24", "24", "wallet1", "incomplete"),
		txEvent("transaction_status_changed", "t31", "31", "wallet1", "pending_sender"), // no sep31 URL
		txEvent("transaction_status_changed", "tother", "24", "wallet2", "completed"),   // another client
		`{"type":"quote_created","id":"q1","quote":{"id":"q1","sell_amount":"1"}}`,      // not a client callback
		`{"type":"transaction_status_changed","id":"e6","sep":"6","transaction":{"id":"t6","sep":6,"status":"completed","client_domain":"wallet1.example.com"}}`,
		`{"type":"customer_updated","id":"c1","customer":{"id":"cust-1","status":"ACCEPTED","client_name":"wallet1"}}`,
	)
	g := `destination="group-client-status-callback-wallet1"`
	settled := func() int {
		n := 0
		for _, name := range []string{`herald_callbacks_delivered_total{` + g + `}`, `herald_callbacks_skipped_total{` + g + `,reason="malformed"}`,
			`herald_callbacks_skipped_total{` + g + `,reason="no_type"}`, `herald_callbacks_skipped_total{` + g + `,reason="not_for_destination"}`} {
			v, _ := strconv.Atoi(r.metric(name))
			n += v
		}
		return n
	}
	for deadline := time.Now().Add(20 * time.Second); settled() != 8; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 8 events settled", settled())
		}
	}
	calls := recv.got()
	if len(calls) != 3 {
		t.Fatalf("%d callbacks, want 3", len(calls))
	}
	anchor, _ := sign.NewAnchor(testSeed)
	host := strings.TrimPrefix(recv.URL, "http://")
	byPath := map[string]call{}
	for _, c := range calls {
		byPath[c.path] = c
		m := signatureHeader.FindStringSubmatch(c.header.Get("Signature"))
		if m == nil {
			t.Fatalf("%s: Signature %q", c.path, c.header.Get("Signature"))
		}
		sig, _ := base64.StdEncoding.DecodeString(m[2])
		if !ed25519.Verify(anchor.Public(), []byte(m[1]+"."+host+"."+string(c.body)), sig) {
			t.Errorf("%s: signature does not verify", c.path)
		}
		if ed25519.Verify(anchor.Public(), []byte(m[1]+"."+host+"."+string(c.body)+" "), sig) {
			t.Errorf("%s: a tampered body verifies", c.path)
		}
		if ts, _ := strconv.ParseInt(m[1], 10, 64); time.Since(time.Unix(ts, 0)) > time.Minute {
			t.Errorf("%s: t=%s is old", c.path, m[1])
		}
		if c.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", c.path, c.header.Get("Content-Type"))
		}
	}
	if b := string(byPath["/sep24"].body); !strings.HasPrefix(b, `{"transaction":{"id":"t24","sep":"24","status":"incomplete"`) {
		t.Errorf("sep24 body %s", b)
	}
	if b := string(byPath["/sep6"].body); !strings.HasPrefix(b, `{"transaction":{"id":"t6"`) {
		t.Errorf("sep6 body %s", b)
	}
	if b := string(byPath["/sep12"].body); b != `{"id":"cust-1","status":"ACCEPTED","client_name":"wallet1"}` {
		t.Errorf("sep12 body %s", b)
	}
	for name, want := range map[string]string{
		`herald_callbacks_skipped_total{` + g + `,reason="malformed"}`:           "1",
		`herald_callbacks_skipped_total{` + g + `,reason="no_type"}`:             "1",
		`herald_callbacks_skipped_total{` + g + `,reason="not_for_destination"}`: "3",
		`herald_callbacks_delivered_total{` + g + `}`:                            "3",
	} {
		if got := r.metric(name); got != want {
			t.Errorf("%s = %q, want %s", name, got, want)
		}
	}
}

func TestBusinessServerBodyAndAuth(t *testing.T) {
	for _, auth := range []string{"none", "api_key", "jwt"} {
		t.Run(auth, func(t *testing.T) {
			recv := newReceiver(t)
			secret := strings.Repeat("k", 32)
			start(t, config.Callbacks{BusinessServer: true, BaseURL: recv.URL + "/anchor", AuthType: auth, AuthSecret: secret,
				APIKeyHeader: "X-Business-Key", JWTHeader: "Authorization", JWTExpiration: 30 * time.Second}).
				send(`{"type":"quote_created","id":"q-ev","quote":{"id":"q1"},"transaction":null}`)
			c := recv.waitFor(t, "the event", func(cs []call) bool { return len(cs) == 1 })[0]
			var body struct {
				ID, Timestamp, Type string
				Payload             map[string]json.RawMessage
			}
			if c.path != "/anchor/event" || json.Unmarshal(c.body, &body) != nil || body.ID != "q-ev" || body.Type != "quote_created" ||
				string(body.Payload["quote"]) != `{"id":"q1"}` || len(body.Payload) != 1 {
				t.Fatalf("%s %s", c.path, c.body)
			}
			if ts, err := time.Parse(time.RFC3339, body.Timestamp); err != nil || time.Since(ts) > time.Minute {
				t.Errorf("timestamp %q", body.Timestamp)
			}
			switch auth {
			case "none":
				if c.header.Get("Authorization") != "" || c.header.Get("X-Business-Key") != "" {
					t.Errorf("auth none sent %v", c.header)
				}
			case "api_key":
				if c.header.Get("X-Business-Key") != secret {
					t.Errorf("api key header %q", c.header.Get("X-Business-Key"))
				}
			case "jwt":
				tok, ok := strings.CutPrefix(c.header.Get("Authorization"), "Bearer ")
				parts := strings.Split(tok, ".")
				if !ok || len(parts) != 3 {
					t.Fatalf("Authorization %q", c.header.Get("Authorization"))
				}
				mac := hmac.New(sha256.New, []byte(secret))
				mac.Write([]byte(parts[0] + "." + parts[1]))
				claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
				var cl map[string]int64
				if base64.RawURLEncoding.EncodeToString(mac.Sum(nil)) != parts[2] || json.Unmarshal(claims, &cl) != nil ||
					len(cl) != 2 || cl["exp"]-cl["iat"] != 30 {
					t.Errorf("token %q claims %s", tok, claims)
				}
			}
		})
	}
}

// TestOneFailingTransactionDoesNotDelayOthers: the business server refuses transaction A's
// first event three times; B's events go through meanwhile, and each transaction's events
// arrive in the order they were published.
func TestOneFailingTransactionDoesNotDelayOthers(t *testing.T) {
	recv := newReceiver(t)
	var refusals sync.Map
	recv.answer = func(c call) int {
		if strings.Contains(string(c.body), `"id":"A","sep":"24","status":"s0"`) {
			n, _ := refusals.LoadOrStore("A", new(int))
			if *n.(*int) < 3 {
				*n.(*int)++
				return 500
			}
		}
		return 200
	}
	r := start(t, config.Callbacks{BusinessServer: true, BaseURL: recv.URL, AuthType: "none",
		BackoffBase: 300 * time.Millisecond, BackoffCap: time.Second})
	var events []string
	for i := range 3 {
		events = append(events, txEvent("transaction_status_changed", "A", "24", "w", fmt.Sprint("s", i)))
	}
	for i := range 5 {
		events = append(events, txEvent("transaction_status_changed", "B", "24", "w", fmt.Sprint("s", i)))
	}
	r.send(events...)
	calls := recv.waitFor(t, "every event", func(cs []call) bool {
		ok := 0
		for _, c := range cs {
			if !strings.Contains(string(c.body), `"status":"s0"`) || !strings.Contains(string(c.body), `"id":"A"`) {
				ok++
			}
		}
		return ok == 7 && len(cs) == 11 // A's s0 refused 3 times, then accepted
	})
	var order = map[string][]string{}
	var firstA, lastB time.Time
	for _, c := range calls {
		var b struct {
			Payload struct{ Transaction struct{ ID, Status string } }
		}
		_ = json.Unmarshal(c.body, &b)
		tx := b.Payload.Transaction
		order[tx.ID] = append(order[tx.ID], tx.Status)
		if tx.ID == "B" {
			lastB = c.at
		}
		if tx.ID == "A" && tx.Status == "s1" {
			firstA = c.at
		}
	}
	if got := strings.Join(order["A"], ","); got != "s0,s0,s0,s0,s1,s2" {
		t.Errorf("A's attempts in order: %s", got)
	}
	if got := strings.Join(order["B"], ","); got != "s0,s1,s2,s3,s4" {
		t.Errorf("B's events in order: %s", got)
	}
	if !lastB.Before(firstA) {
		t.Errorf("B finished at %v, after A's second event at %v: A's retries held B back", lastB, firstA)
	}
}

// TestExhaustedCallbackIsDeadLettered: after its attempts an event goes to the dead-letter
// topic with the reason, and the transaction's next event is delivered.
func TestExhaustedCallbackIsDeadLettered(t *testing.T) {
	recv := newReceiver(t)
	recv.answer = func(c call) int {
		if strings.Contains(string(c.body), `"status":"doomed"`) {
			return 503
		}
		return 200
	}
	r := start(t, config.Callbacks{BusinessServer: true, BaseURL: recv.URL, AuthType: "none", Attempts: 3})
	r.send(txEvent("transaction_status_changed", "C", "24", "w", "doomed"), txEvent("transaction_status_changed", "C", "24", "w", "next"))
	recv.waitFor(t, "the next event", func(cs []call) bool {
		return len(cs) == 4 && strings.Contains(string(cs[3].body), `"status":"next"`)
	})
	cl, err := kgo.NewClient(kgo.SeedBrokers(r.kafka.Seeds()...), kgo.ConsumeTopics(deadTopic("TRANSACTION", "group-callback-api")),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fs := cl.PollFetches(ctx)
	var recs []*kgo.Record
	fs.EachRecord(func(rec *kgo.Record) { recs = append(recs, rec) })
	if len(recs) != 1 {
		t.Fatalf("%d dead letters, want 1", len(recs))
	}
	var dead struct {
		Reason string
		Status int
		Event  json.RawMessage
	}
	if json.Unmarshal(recs[0].Value, &dead) != nil || dead.Status != 503 || !strings.Contains(dead.Reason, "503") ||
		!strings.Contains(string(dead.Event), `"doomed"`) {
		t.Fatalf("dead letter %s", recs[0].Value)
	}
}

// TestEndpointRulesApplyToCallbacks: HERALD_ENDPOINTS signs business-server callbacks the
// Standard Webhooks way, with the event id as webhook-id so that a retry keeps it.
func TestEndpointRulesApplyToCallbacks(t *testing.T) {
	recv := newReceiver(t)
	var calls atomic.Int32
	recv.answer = func(c call) int {
		if calls.Add(1) == 1 {
			return 503
		}
		return 200
	}
	rules, err := endpoint.ParseRules(`[{"url": "` + recv.URL + `/", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]`)
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, config.Callbacks{BusinessServer: true, BaseURL: recv.URL, AuthType: "none", Endpoints: rules})
	r.send(txEvent("transaction_status_changed", "S", "24", "w", "flaky"))
	cs := recv.waitFor(t, "the event twice", func(cs []call) bool { return len(cs) == 2 })
	key, _ := base64.StdEncoding.DecodeString("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	for _, c := range cs {
		id, ts := c.header.Get("webhook-id"), c.header.Get("webhook-timestamp")
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id + "." + ts + "." + string(c.body)))
		want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
		if id != "ev-S-flaky" || c.header.Get("webhook-signature") != want {
			t.Errorf("webhook-id %q, signature %q, want the event id and %q", id, c.header.Get("webhook-signature"), want)
		}
	}
	if v := r.metric("herald_endpoint_signed_total"); v != "2" {
		t.Errorf("herald_endpoint_signed_total %q", v)
	}
}

// TestGoneCallbackIsDeadLetteredAtOnce: a 410 disables the endpoint; the event is dead-lettered
// after that one attempt, not after all of them.
func TestGoneCallbackIsDeadLetteredAtOnce(t *testing.T) {
	recv := newReceiver(t)
	recv.answer = func(call) int { return 410 }
	r := start(t, config.Callbacks{BusinessServer: true, BaseURL: recv.URL, AuthType: "none", Attempts: 5})
	r.send(txEvent("transaction_status_changed", "G", "24", "w", "gone"), txEvent("transaction_status_changed", "H", "24", "w", "gone"))
	deadline := time.Now().Add(10 * time.Second)
	for r.metric(`herald_callbacks_dead_lettered_total{destination="group-callback-api"}`) != "2" {
		if time.Now().After(deadline) {
			t.Fatalf("not dead-lettered; %d calls", len(recv.got()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Both lanes may have sent before the first 410 came back; nothing is retried.
	if n := len(recv.got()); n < 1 || n > 2 {
		t.Errorf("%d calls for two events to a gone endpoint", n)
	}
	if v := r.metric("herald_endpoint_disabled"); v != "1" {
		t.Errorf("herald_endpoint_disabled %q", v)
	}
}
