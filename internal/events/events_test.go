package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type routeCase struct {
	Topic    string          `json:"topic"`
	WalletID *string         `json:"wallet_id"`
	Envelope json.RawMessage `json:"expected_envelope_payload"`
	Lists    []string        `json:"expected_lists"`
	Webhook  *string         `json:"webhook_topic"`
}

func loadCases(t testing.TB) []routeCase {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "vectors", "topic_routes.json"))
	if err != nil {
		t.Fatalf("the shared test vectors must sit beside the repository: %v", err)
	}
	var v struct {
		Cases []routeCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v.Cases
}

func newService(t testing.TB, cfg config.Events) (*Service, rueidis.Client) {
	c := redistest.Client(t, redistest.Standalone(t).URL())
	if cfg.Plugin.EventTopicMaps == nil {
		cfg.Plugin = config.DefaultPlugin()
	}
	s, err := New(cfg, redisq.NewPublisher(c), metrics.New("events"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

// eventLine is a /v1/events line for a vector case.
func eventLine(c routeCase) string {
	var env struct {
		Payload json.RawMessage `json:"payload"`
	}
	_ = json.Unmarshal(c.Envelope, &env)
	var compact bytes.Buffer
	_ = json.Compact(&compact, env.Payload) // one line: NDJSON
	wallet := "null"
	if c.WalletID != nil {
		wallet = fmt.Sprintf("%q", *c.WalletID)
	}
	return fmt.Sprintf(`{"topic": %q, "payload": %s, "wallet_id": %s}`, c.Topic, compact.Bytes(), wallet)
}

// TestVectors sends every case of the vectors in one NDJSON body and finds each case's envelope,
// in order, on exactly the lists the case expects.
func TestVectors(t *testing.T) {
	s, c := newService(t, config.Events{})
	cases := loadCases(t)
	var body strings.Builder
	want := map[string][]json.RawMessage{}
	pushed := 0
	for _, tc := range cases {
		body.WriteString(eventLine(tc) + "\n")
		for _, l := range tc.Lists {
			want[l] = append(want[l], tc.Envelope)
			pushed++
		}
	}
	b := s.getBatch()
	if err := s.parseEvents(b, []byte(body.String())); err != nil {
		t.Fatal(err)
	}
	res, err := s.ingest(context.Background(), b, "events")
	if err != nil || res.Events != len(cases) || res.Pushed != pushed || res.Webhooks != 0 {
		t.Fatalf("%+v %v; want %d events, %d pushed", res, err, len(cases), pushed)
	}
	for list, envs := range want {
		got, err := c.Do(context.Background(), c.B().Lrange().Key(list).Start(0).Stop(-1).Build()).AsStrSlice()
		if err != nil || len(got) != len(envs) {
			t.Fatalf("%s: %d entries (%v), want %d", list, len(got), err, len(envs))
		}
		for i, entry := range got {
			var e struct {
				Payload  json.RawMessage   `json:"payload"`
				Metadata map[string]string `json:"metadata"`
			}
			if err := json.Unmarshal([]byte(entry), &e); err != nil {
				t.Fatalf("%s: %v", list, err)
			}
			var g, w any
			_ = json.Unmarshal(e.Payload, &g)
			_ = json.Unmarshal(envs[i], &w)
			if !reflect.DeepEqual(g, w) {
				t.Errorf("%s[%d]:\n got %s\nwant %s", list, i, e.Payload, envs[i])
			}
			wallet := g.(map[string]any)["wallet_id"].(string)
			if wallet == "base" && len(e.Metadata) != 0 || wallet != "base" && e.Metadata["x-wallet-id"] != wallet {
				t.Errorf("%s[%d]: metadata %v for wallet %s", list, i, e.Metadata, wallet)
			}
		}
	}
}

// TestWebhookPostAndDeliverWebhook: an ACA-Py webhook post makes the webhook and the record event;
// a mapped topic becomes one outbound entry per webhook URL, in the plugin's format.
func TestWebhookPostAndDeliverWebhook(t *testing.T) {
	cfg := config.Events{RecordEvents: true, Plugin: config.DefaultPlugin(),
		WebhookURLs: []config.WebhookURL{{URL: "http://hooks.example/a", APIKey: "k1"}, {URL: "http://hooks.example/b"}}}
	s, c := newService(t, cfg)
	ctx := context.Background()
	b := s.getBatch()
	if err := s.webhookEvents(b, []byte("connections"), []byte("w-1"), []byte(`{"state": "active", "connection_id": "c-1"}`)); err != nil {
		t.Fatal(err)
	}
	res, err := s.ingest(ctx, b, "webhook")
	if err != nil || res.Events != 2 || res.Pushed != 3 {
		t.Fatalf("%+v %v", res, err)
	}
	for _, l := range []string{"acapy-webhook-w-1", "acapy-record-with-state-w-1", "acapy-record-w-1"} {
		if n, _ := c.Do(ctx, c.B().Llen().Key(l).Build()).AsInt64(); n != 1 {
			t.Errorf("%s: %d entries", l, n)
		}
	}

	b = s.getBatch()
	if err := s.parseEvents(b, []byte(`{"topic": "acapy::basicmessage::received", "payload": {"content": "hi"}, "wallet_id": "w-2"}`)); err != nil {
		t.Fatal(err)
	}
	if res, err = s.ingest(ctx, b, "events"); err != nil || res.Webhooks != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	entries, _ := c.Do(ctx, c.B().Lrange().Key("acapy_outbound").Start(0).Stop(-1).Build()).AsStrSlice()
	if len(entries) != 2 {
		t.Fatalf("outbound entries: %v", entries)
	}
	payload := `{"wallet_id": "w-2", "state": null, "topic": "acapy::basicmessage::received", "category": null, "payload": {"content": "hi"}}`
	for i, want := range []struct {
		url     string
		headers []engine.Header
	}{
		{"http://hooks.example/a/topic/basicmessages/", []engine.Header{{Name: []byte("x-wallet-id"), Value: []byte("w-2")}, {Name: []byte("x-api-key"), Value: []byte("k1")}}},
		{"http://hooks.example/b/topic/basicmessages/", []engine.Header{{Name: []byte("x-wallet-id"), Value: []byte("w-2")}}},
	} {
		if exp := string(acapy.AppendOutbound(nil, want.url, want.headers, []byte(payload))); entries[i] != exp {
			t.Errorf("outbound %d:\n got %s\nwant %s", i, entries[i], exp)
		}
	}
}

// TestBadInputWritesNothing: one bad line in a batch refuses the whole batch.
func TestBadInputWritesNothing(t *testing.T) {
	s, c := newService(t, config.Events{})
	for body, reason := range map[string]string{
		"{\"topic\": \"acapy::ping::received\", \"payload\": {}}\nnot json\n": "line 2",
		`{"payload": {}}`: "topic is missing",
		`{"topic": 5}`:    "topic is not a string",
		`{"topic": "acapy::ping::received", "payload": 1}`: "payload is not a JSON object",
		`[1, 2]`: "JSON object",
		"\n\n":   "no event",
	} {
		b := s.getBatch()
		err := s.parseEvents(b, []byte(body))
		if err == nil {
			_, err = s.ingest(context.Background(), b, "events")
		} else {
			s.putBatch(b)
		}
		if err == nil || !strings.Contains(err.Error(), reason) {
			t.Errorf("%q: %v, want %q", body, err, reason)
		}
	}
	if n, _ := c.Do(context.Background(), c.B().Dbsize().Build()).AsInt64(); n != 0 {
		t.Errorf("%d keys written", n)
	}
}

func TestTemplateNamingUnknownValueIsAConfigError(t *testing.T) {
	_, err := NewRouter([]engine.Route{{Pattern: "^acapy::", Template: "x-$walletid"}})
	if err == nil || !strings.Contains(err.Error(), `"^acapy::"`) || !strings.Contains(err.Error(), "$walletid") {
		t.Errorf("%v", err)
	}
	_, err = NewRouter([]engine.Route{{Pattern: "acapy::(?<=x)", Template: "x"}})
	if err == nil || !strings.Contains(err.Error(), "acapy::(?<=x)") {
		t.Errorf("%v", err)
	}
}

// BenchmarkRoute is the per-event CPU of routing and envelope building (no Redis): the default
// map, a multitenant record event with its state, 3 lists.
func BenchmarkRoute(b *testing.B) {
	s, err := New(config.Events{Plugin: config.DefaultPlugin()}, nil, metrics.New("events"), quiet)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"topic": "acapy::record::connections::active", "wallet_id": "4f2c9a0e-3d7b-4a5e-9c1f-2b8d6e0a7c31", "payload": {"state": "active", "created_at": "2026-01-01T00:00:00.000000Z", "connection_id": "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d", "their_label": "Bob", "rfc23_state": "completed"}}`)
	bt := s.getBatch()
	b.ReportAllocs()
	for b.Loop() {
		bt.events, bt.strs, bt.arena, bt.spans = bt.events[:0], bt.strs[:0], bt.arena[:0], bt.spans[:0]
		if err := s.parseEvents(bt, body); err != nil {
			b.Fatal(err)
		}
		if err := s.route(bt); err != nil || len(bt.spans) != 2 {
			b.Fatal(err, len(bt.spans))
		}
	}
}

// TestRedisDownIsNotBadInput: with Redis gone the request fails as unavailable (503), not as the
// client's fault (400), and recovers once Redis is back.
func TestRedisDownIsNotBadInput(t *testing.T) {
	srv := redistest.Standalone(t)
	c := redistest.Client(t, srv.URL())
	s, err := New(config.Events{Plugin: config.DefaultPlugin()}, redisq.NewPublisher(c), metrics.New("events"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	send := func() error {
		b := s.getBatch()
		if err := s.parseEvents(b, []byte(`{"topic": "acapy::ping::received", "payload": {}}`)); err != nil {
			t.Fatal(err)
		}
		_, err := s.ingest(context.Background(), b, "events")
		return err
	}
	srv.Stop()
	err = send()
	var bad *badInput
	if err == nil || errors.As(err, &bad) {
		t.Fatalf("Redis down: %v", err)
	}
	srv.Start()
	deadline := time.Now().Add(10 * time.Second)
	for send() != nil {
		if time.Now().After(deadline) {
			t.Fatal("no recovery after Redis came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
