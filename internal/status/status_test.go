package status

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url, key string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if key != "" {
		req.Header.Set("access_token", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestStatusEndpoints(t *testing.T) {
	var ready, live atomic.Bool
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_messages_delivered_total", Help: "x"})
	reg.MustRegister(c)
	c.Inc()
	s := New("127.0.0.1:0", "key", Checks{
		Ready: ready.Load,
		Live: func(ctx context.Context) bool {
			_, ok := ctx.Deadline()
			return ok && live.Load()
		},
	}, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	base := "http://" + s.Addr()

	for _, tc := range []struct {
		path, key string
		set       func()
		code      int
		body      string
	}{
		{"/status/ready", "key", func() { ready.Store(false) }, 200, `{"ready":false}`},
		{"/status/ready", "key", func() { ready.Store(true) }, 200, `{"ready":true}`},
		{"/status/live", "key", func() { live.Store(true) }, 200, `{"alive":true}`},
		{"/status/live", "key", func() { live.Store(false) }, 200, `{"alive":false}`},
		{"/status/ready", "", func() {}, 403, `{"detail":"Could not validate key"}`},
		{"/status/ready", "keyx", func() {}, 403, `{"detail":"Could not validate key"}`},
		{"/metrics", "", func() {}, 403, `{"detail":"Could not validate key"}`},
		{"/debug/pprof/", "", func() {}, 403, `{"detail":"Could not validate key"}`},
		{"/nope", "key", func() {}, 404, `{"detail":"Not Found"}`},
	} {
		tc.set()
		code, body := get(t, base+tc.path, tc.key)
		if code != tc.code || body != tc.body {
			t.Errorf("%s (key %q): %d %s, want %d %s", tc.path, tc.key, code, body, tc.code, tc.body)
		}
	}
	if code, body := get(t, base+"/metrics", "key"); code != 200 || !strings.Contains(body, "herald_messages_delivered_total 1") {
		t.Errorf("metrics: %d %.200s", code, body)
	}
	if code, body := get(t, base+"/debug/pprof/", "key"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("pprof: %d %.200s", code, body)
	}
	resp, err := http.Post(base+"/status/ready", "text/plain", nil)
	if err != nil || resp.StatusCode != 405 {
		t.Errorf("POST: %v %v", resp, err)
	}
}

func TestListenAddr(t *testing.T) {
	if a, err := ListenAddr("0.0.0.0", "8080"); err != nil || a != "0.0.0.0:8080" {
		t.Errorf("%s %v", a, err)
	}
	for _, p := range []string{"x", "-1", "70000", ""} {
		if _, err := ListenAddr("h", p); err == nil || !strings.Contains(err.Error(), "STATUS_ENDPOINT_PORT") {
			t.Errorf("port %q: %v", p, err)
		}
	}
}

// TestKeyComparedByDigest: the key is checked by comparing fixed-length digests in constant time,
// so a near miss (a prefix, the key and more, another length) is refused like any other.
func TestKeyComparedByDigest(t *testing.T) {
	s := New("127.0.0.1:0", "s3cret-key", Checks{Ready: func() bool { return true }, Live: func(context.Context) bool { return true }},
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	for key, want := range map[string]int{"s3cret-key": 200, "s3cret-ke": 403, "s3cret-key!": 403, "S3cret-key": 403, "x": 403, strings.Repeat("s", 200): 403} {
		if code, _ := get(t, "http://"+s.Addr()+"/status/live", key); code != want {
			t.Errorf("key %.20q: %d, want %d", key, code, want)
		}
	}
}

// TestBodyLimit: the status listener refuses bodies over 64 KiB before reading them.
func TestBodyLimit(t *testing.T) {
	s := New("127.0.0.1:0", "key", Checks{Ready: func() bool { return true }, Live: func(context.Context) bool { return true }},
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	// The server answers from the announced length and closes without reading the body, so a
	// client still writing it may see a reset before the answer: the request is written by
	// hand, headers only, and the answer read back.
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "POST /status/ready HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", 100<<10); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("100 KiB body: %d, want 413", resp.StatusCode)
	}
}
