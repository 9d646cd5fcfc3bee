package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

type eventsProc struct {
	*proc
	addr, status string
}

// startEvents runs `herald events` on a free port with extra environment and waits for it.
func startEvents(t *testing.T, redisURL string, extra ...string) eventsProc {
	t.Helper()
	e := eventsProc{addr: "127.0.0.1:" + freePort(t), status: freePort(t)}
	env := append([]string{"REDIS_SERVER_URL=" + redisURL, "HERALD_LISTEN=" + e.addr,
		"STATUS_ENDPOINT_HOST=127.0.0.1", "STATUS_ENDPOINT_PORT=" + e.status, "STATUS_ENDPOINT_API_KEY=k"}, extra...)
	e.proc = start(t, env, "events")
	eventually(t, 15*time.Second, "herald events ready", func() bool {
		_, body := status(t, e.status, "/status/ready", "k")
		return body == `{"ready":true}`
	})
	return e
}

func (e eventsProc) post(t testing.TB, path string, body string, headers ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+e.addr+path, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestEventsWebhookToReceiver: ACA-Py's webhook post of a basic message reaches the plugin's lists,
// and through deliver_webhook and `herald deliver`, a webhook receiver, with the plugin's path
// and headers.
func TestEventsWebhookToReceiver(t *testing.T) {
	t.Parallel()
	url := redistest.Standalone(t).URL()
	c := client(t, url)
	recv := newReceiver(t, 1)
	recv.Record = true
	e := startEvents(t, url, "HERALD_WEBHOOK_URLS="+recv.URL()+"/hook#secret-key", "HERALD_MAX_BODY=4096")
	start(t, referenceEnv(url, "acapy", freePort(t), "k"), "deliver")

	// ACA-Py's --webhook-url post of a connection record: the webhook and the record events.
	code, body := e.post(t, "/topic/connections/", `{"state": "active", "connection_id": "c-1"}`, "x-wallet-id", "w-1")
	if code != 202 || body != `{"events": 2, "pushed": 3, "webhooks": 0}` {
		t.Fatalf("webhook post: %d %s", code, body)
	}
	for _, l := range []string{"acapy-webhook-w-1", "acapy-record-with-state-w-1", "acapy-record-w-1"} {
		if n := llen(t, c, l); n != 1 {
			t.Errorf("%s: %d entries", l, n)
		}
	}
	got, _ := c.Do(context.Background(), c.B().Lindex().Key("acapy-record-with-state-w-1").Index(0).Build()).ToString()
	want := `{"payload": {"wallet_id": "w-1", "state": "active", "topic": "acapy::record::connections::active", "category": "connections", ` +
		`"payload": {"state": "active", "connection_id": "c-1"}}, "metadata": {"x-wallet-id": "w-1"}}`
	if got != want {
		t.Errorf("envelope\n got %s\nwant %s", got, want)
	}

	// A basic message event: its list, and the webhook receiver through herald deliver.
	code, body = e.post(t, "/v1/events", `{"topic": "acapy::basicmessage::received", "payload": {"content": "hello"}, "wallet_id": "w-2"}`)
	if code != 202 || body != `{"events": 1, "pushed": 1, "webhooks": 1}` {
		t.Fatalf("event: %d %s", code, body)
	}
	eventually(t, 10*time.Second, "the webhook at the receiver", func() bool { return len(recv.Requests()) == 1 })
	r := recv.Requests()[0]
	if r.Path != "/hook/topic/basicmessages/" || r.Headers["x-api-key"] != "secret-key" || r.Headers["x-wallet-id"] != "w-2" ||
		string(r.Body) != `{"wallet_id": "w-2", "state": null, "topic": "acapy::basicmessage::received", "category": null, "payload": {"content": "hello"}}` {
		t.Errorf("webhook: %s %v %s", r.Path, r.Headers, r.Body)
	}

	// Bad requests: a reason, nothing written. (The deliverer may remove keys meanwhile, as it
	// drains; no key may appear.)
	before := keyNames(t, c)
	for _, tc := range []struct {
		path, body string
		code       int
		reason     string
	}{
		{"/v1/events", `{"payload": {}}`, 400, "topic"},
		{"/v1/events", "{\"topic\": \"acapy::ping::received\"}\n{oops", 400, "line 2"},
		{"/topic/connections/", `not json`, 400, "JSON"},
		{"/topic/connections/", `["a"]`, 400, "JSON object"},
		{"/topic/a/b/", `{}`, 400, "one path segment"},
		{"/elsewhere", `{}`, 404, ""},
		{"/v1/events", `{"topic": "t", "payload": {"pad": "` + strings.Repeat("x", 5000) + `"}}`, 413, "HERALD_MAX_BODY"},
	} {
		if code, reason := e.post(t, tc.path, tc.body); code != tc.code || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s %.40s: %d %q, want %d with %q", tc.path, tc.body, code, reason, tc.code, tc.reason)
		}
	}
	for k := range keyNames(t, c) {
		if !before[k] {
			t.Errorf("a bad request wrote the key %s", k)
		}
	}
	if code, m := status(t, e.status, "/metrics", "k"); code != 200 ||
		!strings.Contains(m, `herald_events_routed_total{pattern="acapy::basicmessage::received",template="acapy-basicmessage-received"} 1`) ||
		!strings.Contains(m, `herald_events_received_total{source="webhook"} 2`) {
		t.Errorf("metrics: %d", code)
	}
}

func keyNames(t testing.TB, c rueidis.Client) map[string]bool {
	t.Helper()
	names, err := c.Do(context.Background(), c.B().Keys().Pattern("*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	return set
}

// TestEventsPluginConfig: the plugin's YAML routes with its own maps; a pattern Go cannot run is a
// configuration error naming it.
func TestEventsPluginConfig(t *testing.T) {
	t.Parallel()
	url := redistest.Standalone(t).URL()
	c := client(t, url)
	dir := t.TempDir()
	good := filepath.Join(dir, "plugin.yml")
	_ = os.WriteFile(good, []byte("redis_queue:\n  event:\n    event-topic-maps:\n      ^acapy::webhook::(.*)$: hooks-${wallet_id}-$$\n    deliver_webhook: false\n"), 0o600)
	e := startEvents(t, url, "HERALD_PLUGIN_CONFIG="+good, "HERALD_MAX_BODY=100000")
	var lines bytes.Buffer
	for range 100 {
		lines.WriteString(`{"topic": "acapy::webhook::ping", "payload": {"n": 1}, "wallet_id": "w"}` + "\n")
	}
	if code, body := e.post(t, "/v1/events", lines.String()); code != 202 || body != `{"events": 100, "pushed": 100, "webhooks": 0}` {
		t.Fatalf("%d %s", code, body)
	}
	if n := llen(t, c, "hooks-w-$"); n != 100 {
		t.Errorf("hooks-w-$: %d", n)
	}

	bad := filepath.Join(dir, "bad.yml")
	_ = os.WriteFile(bad, []byte("redis_queue:\n  event:\n    event_topic_maps:\n      \"acapy::(?<=x)\": l\n"), 0o600)
	p := start(t, []string{"REDIS_SERVER_URL=" + url, "HERALD_PLUGIN_CONFIG=" + bad}, "events")
	if code := p.wait(5 * time.Second); code != 2 || strings.Count(strings.TrimSpace(p.log.String()), "\n") != 0 || !strings.Contains(p.log.String(), "acapy::(?<=x)") {
		t.Errorf("bad pattern: exit %d, %q", code, p.log.String())
	}
}

func TestEventsVectorsStandalone(t *testing.T) {
	t.Parallel()
	testEventsVectors(t, redistest.Standalone(t).URL())
}

func TestEventsVectorsCluster(t *testing.T) {
	t.Parallel()
	testEventsVectors(t, redistest.Cluster(t, 3).URL())
}

// testEventsVectors posts every case of the routing vectors in one NDJSON batch and counts, per
// list, the entries the cases expect.
func testEventsVectors(t *testing.T, url string) {
	c := client(t, url)
	b, err := os.ReadFile(filepath.Join("..", "..", "shared", "vectors", "topic_routes.json"))
	if err != nil {
		t.Fatalf("the shared test vectors must sit beside the repository: %v", err)
	}
	var v struct {
		Cases []struct {
			Topic    string          `json:"topic"`
			WalletID *string         `json:"wallet_id"`
			Envelope json.RawMessage `json:"expected_envelope_payload"`
			Lists    []string        `json:"expected_lists"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	want := map[string]int64{}
	for _, tc := range v.Cases {
		var env struct {
			Payload json.RawMessage `json:"payload"`
		}
		_ = json.Unmarshal(tc.Envelope, &env)
		line, _ := json.Marshal(map[string]any{"topic": tc.Topic, "payload": env.Payload, "wallet_id": tc.WalletID})
		body.Write(append(line, '\n'))
		for _, l := range tc.Lists {
			want[l]++
		}
	}
	e := startEvents(t, url)
	if code, reply := e.post(t, "/v1/events", body.String(), "Content-Type", "application/x-ndjson"); code != 202 || !strings.HasPrefix(reply, `{"events": 48,`) {
		t.Fatalf("%d %s", code, reply)
	}
	for l, n := range want {
		if got := llen(t, c, l); got != n {
			t.Errorf("%s: %d entries, want %d", l, got, n)
		}
	}
}
