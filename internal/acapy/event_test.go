package acapy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestAppendPyJSON: expectations from Python's json.dumps(json.loads(src)).
func TestAppendPyJSON(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{`{"state":"active","id":"rec-0"}`, `{"state": "active", "id": "rec-0"}`},
		{`{"a":1.0,"b":1e5,"c":-0.0,"d":1.5e-7,"e":123456789012345678901234567890,"f":1E2,"g":0.1,"h":1e16,"i":12345678.9,"j":-0,"k":2.5e-5,"l":1e400}`,
			`{"a": 1.0, "b": 100000.0, "c": -0.0, "d": 1.5e-07, "e": 123456789012345678901234567890, "f": 100.0, "g": 0.1, "h": 1e+16, "i": 12345678.9, "j": 0, "k": 2.5e-05, "l": Infinity}`},
		{`{"s":"café \u00e9 \ud83d\ude00 \"q\" \/ tab\t","n":null,"t":true,"arr":[1,[],{},"x"],"o":{"z":{}}}`,
			`{"s": "caf\u00e9 \u00e9 \ud83d\ude00 \"q\" / tab\t", "n": null, "t": true, "arr": [1, [], {}, "x"], "o": {"z": {}}}`},
		{`  {  "state" : { "nested" : [ 1 , 2 ] } , "x" : "y" }  `, `{"state": {"nested": [1, 2]}, "x": "y"}`},
		{"{\"emoji\":\"😀\",\"ctl\":\"\\u0001\",\"del\":\"\x7f\"}", `{"emoji": "\ud83d\ude00", "ctl": "\u0001", "del": "\u007f"}`},
	} {
		got, err := AppendPyJSON(nil, []byte(c.src))
		if err != nil || string(got) != c.want {
			t.Errorf("%s\n got %s (%v)\nwant %s", c.src, got, err, c.want)
		}
	}
	for _, bad := range []string{``, `{`, `{"a" 1}`, `[1,]`, `{"a":1} x`, `"\x01"`, `01x`, `{"a":tru}`, `00`, `[-01]`} {
		if _, err := AppendPyJSON(nil, []byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

type routeVectors struct {
	Cases []struct {
		Topic    string          `json:"topic"`
		WalletID *string         `json:"wallet_id"`
		Envelope json.RawMessage `json:"expected_envelope_payload"`
	} `json:"cases"`
}

// TestEventPayloadVectors builds the envelope payload of every vector case and compares it with
// the expected one, and its bytes with json.dumps formatting.
func TestEventPayloadVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "vectors", "topic_routes.json"))
	if err != nil {
		t.Fatalf("the shared test vectors must sit beside the repository: %v", err)
	}
	var v routeVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	for _, c := range v.Cases {
		var want struct {
			Payload json.RawMessage `json:"payload"`
		}
		_ = json.Unmarshal(c.Envelope, &want)
		e := Event{Topic: []byte(c.Topic), Payload: want.Payload}
		if c.WalletID != nil {
			e.WalletID = []byte(*c.WalletID)
		}
		var vars EventVars
		got, err := AppendEventPayload(nil, &e, &vars)
		if err != nil {
			t.Fatalf("%s: %v", c.Topic, err)
		}
		var g, w any
		_ = json.Unmarshal(got, &g)
		_ = json.Unmarshal(c.Envelope, &w)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s:\n got %s\nwant %s", c.Topic, got, c.Envelope)
		}
		if !strings.HasPrefix(string(got), `{"wallet_id": "`) || strings.Contains(string(got), `":"`) {
			t.Errorf("%s: not json.dumps formatting: %s", c.Topic, got)
		}
		if wid, _ := vars.Var("wallet_id"); c.WalletID == nil && string(wid) != "base" {
			t.Errorf("%s: $wallet_id %q", c.Topic, wid)
		}
	}
}

func TestEnvelope(t *testing.T) {
	p := []byte(`{"wallet_id": "w-0", "state": "active", "topic": "t", "category": null, "payload": {}}`)
	if got := string(AppendEnvelope(nil, p, []byte("w-0"))); got != `{"payload": `+string(p)+`, "metadata": {"x-wallet-id": "w-0"}}` {
		t.Errorf("with wallet: %s", got)
	}
	if got := string(AppendEnvelope(nil, p, nil)); got != `{"payload": `+string(p)+`, "metadata": {}}` {
		t.Errorf("base wallet: %s", got)
	}
	if _, err := AppendEventPayload(nil, &Event{Topic: []byte("t"), Payload: []byte(`[1]`)}, nil); err == nil {
		t.Error("a payload that is not an object must be refused")
	}
}

func BenchmarkAppendEventPayload(b *testing.B) {
	e := Event{Topic: []byte("acapy::record::connections::active"), WalletID: []byte("4f2c9a0e-3d7b-4a5e-9c1f-2b8d6e0a7c31"),
		Payload: []byte(`{"state": "active", "created_at": "2026-01-01T00:00:00.000000Z", "connection_id": "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d", "their_label": "Bob", "rfc23_state": "completed", "accept": "auto", "invitation_mode": "once"}`)}
	var vars EventVars
	payload := make([]byte, 0, 1024)
	entry := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if payload, err = AppendEventPayload(payload[:0], &e, &vars); err != nil {
			b.Fatal(err)
		}
		entry = AppendEnvelope(entry[:0], payload, e.WalletID)
	}
}
