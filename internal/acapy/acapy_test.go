package acapy

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
)

type vectors struct {
	Outbound []struct {
		Entry   string            `json:"entry"`
		Payload string            `json:"decoded_payload_b64std"`
		URL     string            `json:"url"`
		Headers map[string]string `json:"headers"`
	} `json:"outbound"`
	Retry []struct {
		Member  string  `json:"member"`
		Retries int     `json:"retries"`
		Delay   float64 `json:"delay_seconds"`
	} `json:"retry"`
}

func loadVectors(t testing.TB) ([]byte, vectors) {
	t.Helper()
	path := filepath.Join("..", "..", "..", "shared", "vectors", "acapy_queue_entries.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the shared test vectors must sit beside the repository (../shared/vectors): %v", err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return b, v
}

// headerOrder reads the header names of an entry in their written order (maps lose it).
func headerOrder(t *testing.T, entry string) []string {
	dec := json.NewDecoder(strings.NewReader(entry))
	var names []string
	depth, inHeaders := 0, false
	expectKey := false
	for {
		tok, err := dec.Token()
		if err != nil {
			return names
		}
		switch v := tok.(type) {
		case json.Delim:
			if v == '{' {
				depth++
				expectKey = true
			} else if v == '}' {
				depth--
				if inHeaders && depth == 1 {
					inHeaders = false
				}
				expectKey = depth > 0
			}
		case string:
			if depth == 1 && v == "headers" && expectKey {
				inHeaders = true
			}
			if inHeaders && depth == 2 && expectKey {
				names = append(names, v)
			}
			if depth >= 1 {
				expectKey = !expectKey
			}
		default:
			expectKey = !expectKey
		}
	}
}

func TestDecodeOutboundVectors(t *testing.T) {
	_, v := loadVectors(t)
	if len(v.Outbound) == 0 {
		t.Fatal("no outbound vectors")
	}
	for _, vec := range v.Outbound {
		m := engine.GetMessage()
		m.SetRaw([]byte(vec.Entry))
		if err := DecodeOutbound(m); err != nil {
			t.Fatalf("%s: %v", vec.URL, err)
		}
		want, _ := base64.StdEncoding.DecodeString(vec.Payload)
		if string(m.URL) != vec.URL || string(m.Payload) != string(want) || m.Retries != 0 {
			t.Errorf("%s: got url %q payload %q retries %d", vec.URL, m.URL, m.Payload, m.Retries)
		}
		order := headerOrder(t, vec.Entry)
		if len(m.Headers) != len(vec.Headers) || len(order) != len(m.Headers) {
			t.Fatalf("%s: %d headers, want %d", vec.URL, len(m.Headers), len(vec.Headers))
		}
		for i, h := range m.Headers {
			if string(h.Name) != order[i] || vec.Headers[string(h.Name)] != string(h.Value) {
				t.Errorf("%s: header %d = %s: %s, want %s: %s", vec.URL, i, h.Name, h.Value, order[i], vec.Headers[order[i]])
			}
		}
		// What ACA-Py wrote, Herald writes the same way.
		if got := AppendOutbound(nil, string(m.URL), m.Headers, m.Payload); string(got) != vec.Entry {
			t.Errorf("AppendOutbound:\n got %s\nwant %s", got, vec.Entry)
		}
		engine.PutMessage(m)
	}
}

func TestRetryMemberVectors(t *testing.T) {
	_, v := loadVectors(t)
	policy := engine.ReferenceRetryPolicy
	for _, vec := range v.Retry {
		m := engine.GetMessage()
		m.SetRaw([]byte(vec.Member))
		if err := DecodeOutbound(m); err != nil {
			t.Fatal(err)
		}
		if m.Retries != vec.Retries {
			t.Errorf("retries %d, want %d", m.Retries, vec.Retries)
		}
		if got := AppendRetryMember(nil, m, vec.Retries); string(got) != vec.Member {
			t.Errorf("retry member:\n got %s\nwant %s", got, vec.Member)
		}
		if d := policy.Delay(vec.Retries).Seconds(); math.Abs(d-vec.Delay) > 1e-6 {
			t.Errorf("delay of retry %d = %v s, want %v s", vec.Retries, d, vec.Delay)
		}
	}
}

func TestPythonEscapes(t *testing.T) {
	m := &engine.Message{
		URL: []byte("http://h/é/\"q\"\\"),
		Headers: []engine.Header{
			{Name: []byte("x-note"), Value: []byte("tab\tnl\ncr\r\x01\x7f😀/")},
		},
		Payload: []byte{0xfb, 0xff},
	}
	got := string(AppendRetryMember(nil, m, 2))
	want := `{"service": {"url": "http://h/\u00e9/\"q\"\\"}, "headers": {"x-note": "tab\tnl\ncr\r\u0001\u007f\ud83d\ude00/"}, "payload": "-_8=", "retries": 2}`
	if got != want {
		t.Fatalf("\n got %s\nwant %s", got, want)
	}
	// And it decodes back to the same bytes.
	back := engine.GetMessage()
	back.SetRaw([]byte(got))
	if err := DecodeOutbound(back); err != nil {
		t.Fatal(err)
	}
	if string(back.URL) != string(m.URL) || string(back.Headers[0].Value) != string(m.Headers[0].Value) ||
		string(back.Payload) != string(m.Payload) || back.Retries != 2 {
		t.Fatalf("round trip: %q %q %q %d", back.URL, back.Headers[0].Value, back.Payload, back.Retries)
	}
}

func TestDecodeOutboundVariants(t *testing.T) {
	for _, tc := range []struct {
		entry, url, payload string
		headers, retries    int
	}{
		{`{"service":{"url":"http://a"},"payload":"YWJj"}`, "http://a", "abc", 0, 0},
		{`{"payload":"YWI","service":{"url":"http://a","extra":[1,{"x":null}]},"headers":null,"retries":null}`, "http://a", "ab", 0, 0},
		{` { "service" : { "url" : "ws://a" } , "payload" : "YWI=" , "headers" : {"a":"b"} , "retries" : 3 , "x": {"y": [true, false, 1.5e3]} } `, "ws://a", "ab", 1, 3},
		{`{"service":{"url":"http://a"},"payload":"+/8="}`, "http://a", "\xfb\xff", 0, 0},
		{`{"service":{"url":"http:\/\/a"},"payload":""}`, "http://a", "", 0, 0},
		{`{"service":{"url":"http://a"},"payload":"-/8="}`, "http://a", "\xfb\xff", 0, 0},
		{`{"service":{"url":"http://a"},"payload":"YWJjZA"}`, "http://a", "abcd", 0, 0},
		{`{"service":{"url":"http://a"},"payload":"YWJjZGU="}`, "http://a", "abcde", 0, 0},
	} {
		m := engine.GetMessage()
		m.SetRaw([]byte(tc.entry))
		if err := DecodeOutbound(m); err != nil {
			t.Errorf("%s: %v", tc.entry, err)
			continue
		}
		if string(m.URL) != tc.url || string(m.Payload) != tc.payload || len(m.Headers) != tc.headers || m.Retries != tc.retries {
			t.Errorf("%s: url %q payload %q headers %d retries %d", tc.entry, m.URL, m.Payload, len(m.Headers), m.Retries)
		}
	}
}

func TestDecodeOutboundMalformed(t *testing.T) {
	for _, tc := range []struct{ entry, reason string }{
		{``, "unexpected end"},
		{`not json`, "not a JSON object"},
		{`[1,2]`, "not a JSON object"},
		{`{"service": {"url": "http://a"}, "payload": "YWJj"`, "unexpected end"},
		{`{"service": {"url": "http://a"} "payload": "YWJj"}`, "expected ','"},
		{`{"payload": "YWJj"}`, "missing service.url"},
		{`{"service": {"url": 3}, "payload": "YWJj"}`, "service.url is not a string"},
		{`{"service": "http://a", "payload": "YWJj"}`, "service is not an object"},
		{`{"service": {"url": "http://a"}}`, "missing payload"},
		{`{"service": {"url": "http://a"}, "payload": 12}`, "payload is not a string"},
		{`{"service": {"url": "http://a"}, "payload": "***"}`, "base64"},
		{`{"service": {"url": "http://a"}, "payload": "YWJjZ"}`, "base64"},
		{`{"service": {"url": "http://a"}, "payload": "YW=J"}`, "base64"},
		{`{"service": {"url": "http://a"}, "payload": "YWJj", "headers": {"x": 1}}`, "header value is not a string"},
		{`{"service": {"url": "http://a"}, "payload": "YWJj", "headers": []}`, "headers is not an object"},
		{`{"service": {"url": "http://a"}, "payload": "YWJj", "retries": "1"}`, "retries is not an integer"},
		{`{"service": {"url": "http://a"}, "payload": "YWJj", "retries": 1.5}`, "retries is not an integer"},
		{`{"service": {"url": "http://a"}, "payload": "YWJj"} x`, "trailing"},
		{`{"service": {"url": "http://a\q"}, "payload": "YWJj"}`, "invalid escape"},
		{`{"service": {"url": "http://a\u12"}, "payload": "YWJj"}`, "escape"},
		{"{\"service\": {\"url\": \"a\x01\"}, \"payload\": \"YWJj\"}", "control character"},
		{`{"a": ` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, "nesting too deep"},
	} {
		m := engine.GetMessage()
		m.SetRaw([]byte(tc.entry))
		err := DecodeOutbound(m)
		if err == nil || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("%q: error %v, want one mentioning %q", tc.entry, err, tc.reason)
		}
	}
}

func TestDeadLetterRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 22, 11, 0, 0, 0, time.UTC)
	for _, raw := range []string{`{"service": {"url": "x"}}`, "not \x00 json \xff"} {
		b := AppendDeadLetter(nil, DeadLetter{Raw: []byte(raw), Reason: "receiver said no", Status: 503,
			Retries: 5, URL: []byte("http://r"), At: at, Instance: "i1"})
		if !json.Valid(b) {
			t.Fatalf("not JSON: %s", b)
		}
		d, err := ParseDeadLetter(b)
		if err != nil {
			t.Fatal(err)
		}
		if string(d.Raw) != raw || d.Reason != "receiver said no" || d.Status != 503 || d.Retries != 5 ||
			string(d.URL) != "http://r" || !d.At.Equal(at) || d.Instance != "i1" {
			t.Fatalf("round trip: %+v", d)
		}
	}
}

func benchEntry() []byte {
	payload := make([]byte, 300)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	return AppendOutbound(nil, "http://127.0.0.1:8080/endpoint-1", []engine.Header{
		{Name: []byte("Content-Type"), Value: []byte("application/json")},
		{Name: []byte("x-api-key"), Value: []byte("secret-key")},
		{Name: []byte("x-wallet-id"), Value: []byte("w-1")},
	}, payload)
}

func TestHotPathAllocations(t *testing.T) {
	m := &engine.Message{}
	m.SetRaw(benchEntry())
	var dst []byte
	if n := testing.AllocsPerRun(100, func() {
		if err := DecodeOutbound(m); err != nil {
			t.Fatal(err)
		}
		dst = AppendRetryMember(dst[:0], m, 1)
	}); n != 0 {
		t.Fatalf("decode + retry member: %v allocs per message, want 0", n)
	}
}

func BenchmarkDecodeOutbound(b *testing.B) {
	m := &engine.Message{}
	m.SetRaw(benchEntry())
	b.SetBytes(int64(len(m.Raw)))
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeOutbound(m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendRetryMember(b *testing.B) {
	m := &engine.Message{}
	m.SetRaw(benchEntry())
	if err := DecodeOutbound(m); err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendRetryMember(dst[:0], m, 3)
	}
}

func BenchmarkAppendOutbound(b *testing.B) {
	payload := make([]byte, 300)
	headers := []engine.Header{{Name: []byte("Content-Type"), Value: []byte("application/json")}}
	dst := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendOutbound(dst[:0], "http://127.0.0.1:8080/x", headers, payload)
	}
}

func FuzzDecodeOutbound(f *testing.F) {
	_, v := loadVectorsF(f)
	for _, vec := range v.Outbound {
		f.Add([]byte(vec.Entry))
	}
	for _, vec := range v.Retry {
		f.Add([]byte(vec.Member))
	}
	f.Add([]byte(`{"service":{"url":"h\u00e9\ud83d\ude00"},"payload":"+/8=","headers":{"a":"\n"}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m := &engine.Message{}
		m.SetRaw(raw)
		if err := DecodeOutbound(m); err != nil {
			return
		}
		// Whatever decodes must re-encode to something that decodes to the same message.
		again := &engine.Message{}
		again.SetRaw(AppendRetryMember(nil, m, m.Retries))
		if err := DecodeOutbound(again); err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
		if string(again.Payload) != string(m.Payload) || len(again.Headers) != len(m.Headers) {
			t.Fatalf("round trip changed the message")
		}
	})
}

func loadVectorsF(f *testing.F) ([]byte, vectors) { return loadVectors(f) }
