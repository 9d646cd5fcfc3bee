package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redistest"
)

type outboundVector struct {
	Entry   string            `json:"entry"`
	Payload string            `json:"decoded_payload_b64std"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
}

type retryVector struct {
	Member  string  `json:"member"`
	Retries int     `json:"retries"`
	Delay   float64 `json:"delay_seconds"`
}

type vectors struct {
	Outbound []outboundVector `json:"outbound"`
	Retry    []retryVector    `json:"retry"`
}

func loadVectors(t testing.TB) vectors {
	t.Helper()
	path := filepath.Join("..", "..", "shared", "vectors", "acapy_queue_entries.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the shared test vectors must sit beside the repository (../shared/vectors): %v", err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	return v
}

// referenceEnv is exactly the environment the Python deliverer is started with.
func referenceEnv(redisURL, prefix, statusPort, key string) []string {
	return []string{
		"REDIS_SERVER_URL=" + redisURL,
		"TOPIC_PREFIX=" + prefix,
		"STATUS_ENDPOINT_HOST=127.0.0.1",
		"STATUS_ENDPOINT_PORT=" + statusPort,
		"STATUS_ENDPOINT_API_KEY=" + key,
	}
}

// wsReceiver accepts one binary frame per connection and reports it with the handshake headers.
type wsMessage struct {
	headers http.Header
	kind    int
	data    []byte
}

func wsReceiver(t testing.TB) (string, <-chan wsMessage) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan wsMessage, 16)
	up := websocket.Upgrader{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		kind, data, err := c.ReadMessage()
		if err == nil {
			got <- wsMessage{headers: r.Header.Clone(), kind: kind, data: data}
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "ws://" + ln.Addr().String(), got
}

func TestDropInVectorsStandalone(t *testing.T) {
	testDropInVectors(t, redistest.Standalone(t).URL())
}

func TestDropInVectorsCluster(t *testing.T) {
	testDropInVectors(t, redistest.Cluster(t, 3).URL())
}

func testDropInVectors(t *testing.T, redisURL string) {
	v := loadVectors(t)
	c := client(t, redisURL)
	recv, err := fixture.NewReceiver(1)
	if err != nil {
		t.Fatal(err)
	}
	recv.Record = true
	defer recv.Close()
	wsURL, wsGot := wsReceiver(t)

	prefix := "acapy"
	queue := prefix + "_outbound"
	ctx := context.Background()
	// The vectors name 127.0.0.1:8080; only that authority is rewritten to the test receiver.
	host := strings.TrimPrefix(recv.URL(), "http://")
	for _, vec := range v.Outbound {
		entry := strings.Replace(vec.Entry, "127.0.0.1:8080", host, 1)
		if err := c.Do(ctx, c.B().Rpush().Key(queue).Element(entry).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	wsEntry := acapy.AppendOutbound(nil, wsURL+"/ws", []engine.Header{
		{Name: []byte("Content-Type"), Value: []byte("application/didcomm-envelope-enc")},
		{Name: []byte("x-api-key"), Value: []byte("ws-key")},
	}, []byte{0, 1, 2, 'w', 's', 0xff})
	bad := []string{
		`{"service": {"url": "ftp://127.0.0.1/x"}, "payload": "eyJ9", "headers": {}}`,
		`{"service": {"url": "http://127.0.0.1:1/x"}, "payload": "***", "headers": {}}`,
		`this is not json`,
	}
	if err := c.Do(ctx, c.B().Rpush().Key(queue).Element(string(wsEntry)).Element(bad...).Build()).Error(); err != nil {
		t.Fatal(err)
	}

	port, key := freePort(t), "s3cret"
	p := start(t, referenceEnv(redisURL, prefix, port, key), "deliver")

	eventually(t, 20*time.Second, "every vector to arrive", func() bool { return len(recv.Requests()) >= len(v.Outbound) })
	byPath := map[string]fixture.Request{}
	for _, r := range recv.Requests() {
		byPath[r.Path] = r
	}
	for _, vec := range v.Outbound {
		path := vec.URL[strings.Index(vec.URL[len("http://"):], "/")+len("http://"):]
		r, ok := byPath[path]
		if !ok {
			t.Errorf("%s: not delivered", vec.URL)
			continue
		}
		want, _ := base64.StdEncoding.DecodeString(vec.Payload)
		if string(r.Body) != string(want) {
			t.Errorf("%s: body %q, want %q", path, r.Body, want)
		}
		for name, value := range vec.Headers {
			if r.Headers[name] != value {
				t.Errorf("%s: header %q = %q, want %q (exact name); got headers %v", path, name, r.Headers[name], value, r.Headers)
			}
		}
	}

	select {
	case m := <-wsGot:
		if m.kind != websocket.BinaryMessage || string(m.data) != "\x00\x01\x02ws\xff" {
			t.Errorf("ws frame kind %d data %q", m.kind, m.data)
		}
		if m.headers.Get("x-api-key") != "ws-key" || m.headers.Get("Content-Type") != "application/didcomm-envelope-enc" {
			t.Errorf("ws handshake headers %v", m.headers)
		}
	case <-time.After(10 * time.Second):
		t.Error("no websocket frame arrived")
	}

	dead := redistestDead(prefix)
	eventually(t, 10*time.Second, "3 dead-lettered entries", func() bool { return llen(t, c, dead) == 3 })
	entries, _ := c.Do(ctx, c.B().Lrange().Key(dead).Start(0).Stop(-1).Build()).AsStrSlice()
	reasons := strings.Builder{}
	for _, e := range entries {
		d, err := acapy.ParseDeadLetter([]byte(e))
		if err != nil {
			t.Errorf("dead-letter entry is not readable: %v: %s", err, e)
			continue
		}
		reasons.WriteString(d.Reason + "\n")
		found := false
		for _, b := range bad {
			found = found || string(d.Raw) == b
		}
		if !found {
			t.Errorf("dead-letter entry does not keep the original bytes: %q", d.Raw)
		}
	}
	for _, want := range []string{"scheme", "base64", "JSON"} {
		if !strings.Contains(reasons.String(), want) {
			t.Errorf("no dead-letter reason mentions %q:\n%s", want, reasons.String())
		}
	}

	// Status endpoints, as the reference serves them, plus metrics.
	if code, body := status(t, port, "/status/ready", key); code != 200 || body != `{"ready":true}` {
		t.Errorf("ready: %d %s", code, body)
	}
	if code, body := status(t, port, "/status/live", key); code != 200 || body != `{"alive":true}` {
		t.Errorf("live: %d %s", code, body)
	}
	if code, body := status(t, port, "/status/ready", "wrong"); code != 403 || body != `{"detail":"Could not validate key"}` {
		t.Errorf("wrong key: %d %s", code, body)
	}
	if code, _ := status(t, port, "/metrics", ""); code != 403 {
		t.Errorf("metrics without key: %d", code)
	}
	code, body := status(t, port, "/metrics", key)
	if code != 200 || !strings.Contains(body, "herald_messages_delivered_total") {
		t.Errorf("metrics: %d %.300s", code, body)
	}
	if code, _ := status(t, port, "/debug/pprof/", key); code != 200 {
		t.Errorf("pprof: %d", code)
	}
	if llen(t, c, queue) != 0 {
		t.Errorf("queue not drained")
	}
	_ = p
}

func redistestDead(prefix string) string { return "{" + prefix + "_outbound}:dead" }
