package acapy

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/heraldhq/herald/engine"
)

// FuzzParsePacked: any body is answered with a key or a reason, never a panic, and a key is what
// encoding/json reads from the same header.
func FuzzParsePacked(f *testing.F) {
	f.Add([]byte(loadInboundVectors(f).PackedBody))
	f.Add([]byte(`{"protected": "eyJyZWNpcGllbnRzIjogW3siaGVhZGVyIjogeyJraWQiOiAiQSJ9fV19", "~transport": {"return_route": "all"}}`))
	f.Add([]byte(`{"protected": "***"}`))
	f.Add([]byte(`[1, {"a": "\ud83d"}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := ParsePacked(body)
		if err != nil {
			if _, ok := err.(*InboundError); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if p.RecipientKey == "" {
			t.Fatal("no error and no recipient key")
		}
		if !json.Valid(body) {
			t.Fatalf("accepted a body encoding/json calls invalid: %q", body)
		}
	})
}

// FuzzAppendPyJSON: whatever re-encodes is JSON again (Python's NaN and Infinity aside) and
// re-encodes to itself: json.dumps(json.loads(x)) is a fixed point.
func FuzzAppendPyJSON(f *testing.F) {
	for _, s := range []string{`{"a": 1.5e-7, "b": [true, null, "\u00e9"]}`, `-0`, `1E400`, `"\ud800"`, `{"x": {"y": []}}`, `12345678901234567890`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		out, err := AppendPyJSON(nil, src)
		if err != nil {
			return
		}
		if bytes.Contains(out, []byte("NaN")) || bytes.Contains(out, []byte("Infinity")) {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("%q re-encoded to invalid JSON %q", src, out)
		}
		again, err := AppendPyJSON(nil, out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not a fixed point: %q -> %q -> %q (%v)", src, out, again, err)
		}
	})
}

// FuzzParseEvent: any line is an event or a reason; an event's payload builds an envelope.
func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"topic": "acapy::record::connections::active", "payload": {"state": "active"}, "wallet_id": "w"}`))
	f.Add([]byte(`{"topic": "a\nb", "payload": {}, "wallet_id": null}`))
	f.Add([]byte(`{"topic": 1}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var e Event
		if _, err := ParseEvent(line, make([]byte, 0, len(line)), &e); err != nil {
			return
		}
		var vars EventVars
		if _, err := AppendEventPayload(nil, &e, &vars); err != nil {
			t.Fatalf("parsed event %q has a payload that does not build: %v", line, err)
		}
	})
}

// FuzzParseDirectResponse: any entry is a response or an error, never a panic.
func FuzzParseDirectResponse(f *testing.F) {
	for _, d := range loadInboundVectors(f).DirectResponse {
		f.Add([]byte(d.Entry))
	}
	f.Add([]byte(`{"txn_id": "x", "response_data": {"response": "!!", "content_type": 5}}`))
	f.Fuzz(func(t *testing.T, entry []byte) {
		_, _ = ParseDirectResponse(entry)
	})
}

// FuzzRetryMember: a retry set member (the outbound entry with its "retries") that decodes keeps
// its retry count and message through re-encoding, as the retry pump and the reference rely on.
func FuzzRetryMember(f *testing.F) {
	_, v := loadVectorsF(f)
	for _, vec := range v.Retry {
		f.Add([]byte(vec.Member))
	}
	f.Add([]byte(`{"service": {"url": "http://x/"}, "payload": "e30=", "headers": {}, "retries": 4}`))
	f.Add([]byte(`{"retries": 1e3, "service": {"url": "ws://x"}, "payload": ""}`))
	f.Fuzz(func(t *testing.T, member []byte) {
		m := &engine.Message{}
		m.SetRaw(member)
		if DecodeOutbound(m) != nil {
			return
		}
		again := &engine.Message{}
		again.SetRaw(AppendRetryMember(nil, m, m.Retries+1))
		if err := DecodeOutbound(again); err != nil {
			t.Fatalf("re-encoded member does not decode: %v", err)
		}
		if again.Retries != m.Retries+1 || string(again.URL) != string(m.URL) || string(again.Payload) != string(m.Payload) {
			t.Fatalf("retry member round trip changed the message: %d -> %d", m.Retries, again.Retries)
		}
	})
}
