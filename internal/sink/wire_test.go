package sink

import (
	"strings"
	"testing"

	"github.com/heraldhq/herald/engine"
)

func TestParseTarget(t *testing.T) {
	for _, c := range []struct {
		url, authority, host, path string
		port                       int
	}{
		{"http://agent:8020/", "agent:8020", "agent", "/", 8020},
		{"HTTP://agent", "agent", "agent", "", 80},
		{"http://10.0.0.1:3000/a/b?x=1&y=2", "10.0.0.1:3000", "10.0.0.1", "/a/b?x=1&y=2", 3000},
		{"http://[::1]:9000/in", "[::1]:9000", "::1", "/in", 9000},
		{"http://[::1]/in", "[::1]", "::1", "/in", 80},
		{"http://host?q=1", "host", "host", "?q=1", 80},
	} {
		tg, ok := parseTarget([]byte(c.url))
		if !ok || string(tg.authority) != c.authority || string(tg.host) != c.host || string(tg.path) != c.path || tg.port != c.port {
			t.Errorf("%s: got %v %q %q %q %d", c.url, ok, tg.authority, tg.host, tg.path, tg.port)
		}
	}
	// Everything the loop leaves to the pooled client.
	for _, url := range []string{
		"https://agent/", "ws://agent/", "http://", "http:///x", "http://user:pw@agent/",
		"http://agent/#frag", "http://agent:0/", "http://agent:99999/", "http://agent:x/",
		"http://[::1/", "http://[::1]x/", "http://agent/a b", "http://agent/\r\nX: y", "httpx://a/",
	} {
		if _, ok := parseTarget([]byte(url)); ok {
			t.Errorf("%q should go to the pooled client", url)
		}
	}
}

func TestAppendRequest(t *testing.T) {
	m := &engine.Message{URL: []byte("http://agent:8020?x=1"), Payload: []byte(`{"a":1}`), Headers: []engine.Header{
		{Name: []byte("Content-Type"), Value: []byte("application/ssi-agent-wire")},
		{Name: []byte("x-api-key"), Value: []byte("k")},
	}}
	tg, _ := parseTarget(m.URL)
	got := string(appendRequest(nil, &tg, m, "herald"))
	want := "POST /?x=1 HTTP/1.1\r\nHost: agent:8020\r\nContent-Type: application/ssi-agent-wire\r\nx-api-key: k\r\n" +
		"User-Agent: herald\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
	m.Headers = append(m.Headers, engine.Header{Name: []byte("user-agent"), Value: []byte("acapy")})
	if got := string(appendRequest(nil, &tg, m, "herald")); strings.Contains(got, "herald") {
		t.Fatalf("the entry's own User-Agent must replace the default:\n%s", got)
	}
	for _, h := range [][2]string{{"Host", "x"}, {"content-length", "1"}, {"Transfer-Encoding", "chunked"},
		{"Connection", "close"}, {"X-A", "a\r\nX-B: b"}, {"X A", "a"}, {"", "a"}, {"X-Nul", "a\x00"}} {
		m := &engine.Message{Headers: []engine.Header{{Name: []byte(h[0]), Value: []byte(h[1])}}}
		if sendable(m) {
			t.Errorf("header %q: %q should go to the pooled client", h[0], h[1])
		}
	}
}

// feedAll offers b to r in pieces of step bytes, the way reads may split it, and returns what
// followed the response and whether it ended.
func feedAll(t *testing.T, r *response, b string, step int) (rest string, done bool, err error) {
	t.Helper()
	var buf []byte
	for i := 0; i < len(b); i += step {
		buf = append(buf, b[i:min(i+step, len(b))]...)
		used, ok, err := r.feed(buf)
		if err != nil {
			return "", false, err
		}
		buf = buf[used:]
		if ok {
			return string(buf) + b[min(i+step, len(b)):], true, nil
		}
	}
	return string(buf), false, nil
}

func TestResponseReader(t *testing.T) {
	for _, c := range []struct {
		name, in  string
		status    int
		keepAlive bool
		rest      string
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, true, ""},
		{"no reason", "HTTP/1.1 202\r\nContent-Length: 0\r\n\r\n", 202, true, ""},
		{"pipelined extra", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1", 200, true, "HTTP/1.1"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", 200, true, ""},
		{"interim", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 201, true, ""},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", 204, true, ""},
		{"close", "HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbad", 500, false, ""},
		{"1.0", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, false, ""},
		{"1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", 200, true, ""},
		{"both framings", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 200, false, ""},
	} {
		for _, step := range []int{1, 7, len(c.in)} {
			var r response
			rest, done, err := feedAll(t, &r, c.in, step)
			if err != nil || !done || r.status != c.status || r.keepAlive != c.keepAlive || rest != c.rest {
				t.Errorf("%s, %d-byte reads: done %v err %v status %d keep-alive %v rest %q",
					c.name, step, done, err, r.status, r.keepAlive, rest)
			}
		}
	}

	// A body without a length runs until the receiver closes.
	var r response
	if _, done, err := feedAll(t, &r, "HTTP/1.1 200 OK\r\n\r\nsome body", 4); done || err != nil {
		t.Fatalf("a close-delimited body ended early: %v %v", done, err)
	}
	if !r.eof() || r.keepAlive {
		t.Fatal("a close-delimited body should end at EOF, and not keep the connection")
	}
	r.reset()
	if _, _, _ = feedAll(t, &r, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 64); r.eof() {
		t.Fatal("EOF inside a Content-Length body must not count as an answer")
	}

	for name, in := range map[string]string{
		"garbage":           "hello\r\n\r\n",
		"bad status":        "HTTP/1.1 2x0 OK\r\n\r\n",
		"bad length":        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"two lengths":       "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"unknown encoding":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"bad chunk size":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"chunk without end": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
		"upgrade":           "HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"header line":       "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
		"huge header":       "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", maxResponseHeader+10),
	} {
		var r response
		if _, _, err := feedAll(t, &r, in, 512); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func BenchmarkAppendRequest(b *testing.B) {
	for _, c := range []struct {
		name    string
		headers []string
	}{
		{"plain", []string{"Content-Type", "application/ssi-agent-wire"}},
		// What a Standard Webhooks rule adds: the cost of the headers alone, without the signing.
		{"signed-headers", []string{"Content-Type", "application/ssi-agent-wire",
			"webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJ",
			"webhook-timestamp", "1614265330",
			"webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}},
	} {
		b.Run(c.name, func(b *testing.B) {
			m := message("http://10.0.0.7:8020/", strings.Repeat("x", 300), c.headers...)
			buf := make([]byte, 0, 1024)
			b.ReportAllocs()
			for b.Loop() {
				tg, ok := parseTarget(m.URL)
				if !ok || !sendable(m) {
					b.Fatal("not sendable")
				}
				buf = appendRequest(buf[:0], &tg, m, "herald")
			}
		})
	}
}

func BenchmarkResponseReader(b *testing.B) {
	in := []byte("HTTP/1.1 200 OK\r\nServer: fasthttp\r\nDate: Wed, 02 Dec 2026 01:00:00 GMT\r\nContent-Length: 0\r\n\r\n")
	var r response
	b.ReportAllocs()
	for b.Loop() {
		r.reset()
		if _, done, err := r.feed(in); !done || err != nil {
			b.Fatal(done, err)
		}
	}
}

// TestTokenIsRFC9110 checks the header-name table against RFC 9110's tchar, spelled out.
func TestTokenIsRFC9110(t *testing.T) {
	const tchar = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	for c := range 256 {
		want := strings.IndexByte(tchar, byte(c)) >= 0
		if got := token([]byte{byte(c)}); got != want {
			t.Errorf("token(%q) = %v, want %v", byte(c), got, want)
		}
	}
	if token(nil) {
		t.Error("an empty name passed")
	}
}

// TestFieldValue puts every byte at every position of values up to three words long: the
// word-at-a-time scan must refuse exactly CR, LF and NUL, wherever they fall.
func TestFieldValue(t *testing.T) {
	for n := 1; n <= 24; n++ {
		for pos := range n {
			for c := range 256 {
				v := []byte(strings.Repeat("\x7fa", n)[:n])
				v[pos] = byte(c)
				want := c != '\r' && c != '\n' && c != 0
				if got := fieldValue(v); got != want {
					t.Fatalf("fieldValue(%q) = %v, want %v", v, got, want)
				}
			}
		}
	}
	if !fieldValue(nil) {
		t.Error("an empty value was refused")
	}
}
