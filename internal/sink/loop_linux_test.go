package sink

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/proctest"
)

// entry is a test message's Raw form: the URL, a space, the payload.
func entry(url, payload string) []byte { return []byte(url + " " + payload) }

func decodeEntry(m *engine.Message) error {
	i := bytes.IndexByte(m.Raw, ' ')
	if i < 0 {
		return fmt.Errorf("no space in %q", m.Raw)
	}
	m.URL, m.Payload = m.Raw[:i], append(m.Payload[:0], m.Raw[i+1:]...)
	m.Headers = append(m.Headers[:0],
		engine.Header{Name: []byte("Content-Type"), Value: []byte("application/ssi-agent-wire")},
		engine.Header{Name: []byte("x-api-key"), Value: []byte("k")})
	return nil
}

// runLoop delivers src's messages through a LoopSink until settled of them are settled (or 20 s
// pass), then shuts the pipeline down.
func runLoop(t *testing.T, src *enginetest.Memory, o Options, workers, settled int) {
	t.Helper()
	s := NewLoop(o)
	if _, ok := s.(*LoopSink); !ok {
		t.Fatalf("NewLoop(%+v) gave %T", o, s)
	}
	obs := &failureLog{t: t}
	p := &engine.Pipeline{Source: src, Sink: s, Decode: decodeEntry, Workers: workers, Batch: 32, Observer: obs,
		Policy: engine.RetryPolicy{MaxRetries: 5, Interval: 1}, Log: proctest.Log(t), DrainTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	deadline := time.Now().Add(20 * time.Second)
	for src.Settled() < settled && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if inFlight, _ := src.Unsettled(); inFlight != 0 {
		t.Fatalf("%d messages left in flight", inFlight)
	}
}

// countingListener counts the connections a server accepted.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestLoopDelivers: every message arrives once, byte-exact and with the entry's headers, over
// no more connections than deliveries in flight, and is acked once.
func TestLoopDelivers(t *testing.T) {
	const n, workers = 3000, 32
	var mu sync.Mutex
	got := map[string]int{}
	var bad atomic.Value
	ln := &countingListener{Listener: listen(t)}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != "POST" || r.URL.RequestURI() != "/in?a=1" || r.Header.Get("Content-Type") != "application/ssi-agent-wire" ||
			r.Header.Get("X-Api-Key") != "k" || r.UserAgent() != "herald" || r.Host != ln.Addr().String() {
			bad.Store(fmt.Sprintf("%s %s host %s %v", r.Method, r.URL, r.Host, r.Header))
		}
		mu.Lock()
		got[string(b)]++
		mu.Unlock()
		w.WriteHeader(202)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	url := "http://" + ln.Addr().String() + "/in?a=1"
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = entry(url, fmt.Sprintf(`{"n":%d}`, i))
	}
	src := enginetest.NewMemory(msgs...)
	runLoop(t, src, Options{Timeout: 5 * time.Second, MaxConnsPerHost: workers}, workers, n)
	if b := bad.Load(); b != nil {
		t.Fatalf("a request arrived wrong: %v", b)
	}
	for i := range n {
		body := fmt.Sprintf(`{"n":%d}`, i)
		if got[body] != 1 || src.Acked[string(entry(url, body))] != 1 {
			t.Fatalf("message %d arrived %d times, acked %d times", i, got[body], src.Acked[string(entry(url, body))])
		}
	}
	if c := ln.n.Load(); c > workers {
		t.Fatalf("%d connections for %d deliveries in flight", c, workers)
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// rawServer answers each request by its path with hand-written bytes, to give the loop the
// answers real receivers give: chunked, close-delimited, interim, garbage, silence, a reset.
func rawServer(t *testing.T) string {
	ln := listen(t)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveRaw(c)
		}
	}()
	return "http://" + ln.Addr().String()
}

func serveRaw(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/500":
			_, _ = io.WriteString(c, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
		case "/chunked":
			for _, part := range []string{"HTTP/1.1 200 OK\r\nTransfer-", "Encoding: chunked\r\n\r\n4\r", "\nbody\r\n", "0\r\n\r\n"} {
				_, _ = io.WriteString(c, part)
				time.Sleep(2 * time.Millisecond)
			}
		case "/interim":
			_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
			time.Sleep(2 * time.Millisecond)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		case "/until-close":
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\nthe body runs until the close")
			return
		case "/keep-then-close":
			// Answers, then drops the connection a moment later: the next request on it, if it
			// came in between, finds it gone before any answer.
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
			time.Sleep(time.Millisecond)
			return
		case "/reset":
			return
		case "/garbage":
			_, _ = io.WriteString(c, "garbage\r\n\r\n")
		case "/silent":
			time.Sleep(3 * time.Second)
			return
		}
	}
}

// TestLoopAnswers: what receivers answer, and what the loop makes of it.
func TestLoopAnswers(t *testing.T) {
	base := rawServer(t)
	ln := listen(t)
	refused := "http://" + ln.Addr().String() // closed at once: connecting is refused
	_ = ln.Close()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(201) }))
	t.Cleanup(tlsSrv.Close)

	acked := []string{base + "/chunked", base + "/interim", base + "/until-close", base + "/keep-then-close", tlsSrv.URL + "/tls"}
	retried := []string{base + "/500", base + "/reset", base + "/garbage", base + "/silent", refused + "/x"}
	var msgs [][]byte
	for i := range 5 {
		for _, u := range append(acked, retried...) {
			msgs = append(msgs, entry(u, fmt.Sprint(i)))
		}
	}
	src := enginetest.NewMemory(msgs...)
	tlsConf := tlsSrv.Client().Transport.(*http.Transport).TLSClientConfig
	runLoop(t, src, Options{Timeout: 300 * time.Millisecond, TLS: tlsConf, MaxConnsPerHost: 4}, 8, len(msgs))
	for i := range 5 {
		for _, u := range acked {
			if e := string(entry(u, fmt.Sprint(i))); src.Acked[e] != 1 {
				t.Errorf("%s: acked %d times, retried %d times", e, src.Acked[e], src.Retried[e])
			}
		}
		for _, u := range retried {
			if e := string(entry(u, fmt.Sprint(i))); src.Retried[e] != 1 {
				t.Errorf("%s: retried %d times, acked %d times", e, src.Retried[e], src.Acked[e])
			}
		}
	}
}

// TestLoopConnectionClose: a receiver that closes the connection after every answer still gets
// every message, however few connections it is allowed: each close makes room for the next.
func TestLoopConnectionClose(t *testing.T) {
	var count atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		w.Header().Set("Connection", "close")
	}))
	t.Cleanup(srv.Close)
	msgs := make([][]byte, 300)
	for i := range msgs {
		msgs[i] = entry(srv.URL+"/in", fmt.Sprint(i))
	}
	src := enginetest.NewMemory(msgs...)
	runLoop(t, src, Options{Timeout: 5 * time.Second, MaxConnsPerHost: 2}, 16, len(msgs))
	if count.Load() != 300 || len(src.Acked) != 300 {
		t.Fatalf("%d arrived, %d acked of 300", count.Load(), len(src.Acked))
	}
}

// TestLoopWakesWhenQuiet: a loop with nothing in flight waits on its channel, not on epoll. A
// message arriving then is delivered at once, whether the loop holds no connection, an idle one,
// or one the receiver closed while the loop was waiting (a stale keep-alive, sent again on a new
// connection).
func TestLoopWakesWhenQuiet(t *testing.T) {
	var count atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { count.Add(1) }))
	srv.Config.IdleTimeout = 150 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	src := enginetest.NewMemory()
	p := &engine.Pipeline{Source: src, Sink: NewLoop(Options{Timeout: 5 * time.Second}), Decode: decodeEntry,
		Workers: 4, Batch: 4, Observer: &failureLog{t: t}, Policy: engine.RetryPolicy{MaxRetries: 5, Interval: 1},
		Log: proctest.Log(t), DrainTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// Pauses: none yet (no connection), shorter than a scan (idle connection, no timer fired),
	// longer than a few scans (timer fired while quiet), longer than the receiver's idle timeout.
	for i, pause := range []time.Duration{0, 10 * time.Millisecond, 3 * scanEvery, 400 * time.Millisecond} {
		time.Sleep(pause)
		src.Push(entry(srv.URL+"/in", fmt.Sprint(i)))
		deadline := time.Now().Add(2 * time.Second)
		for src.Settled() < i+1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if src.Settled() != i+1 || len(src.Acked) != i+1 {
			t.Fatalf("after a pause of %s: %d settled, %d acked, want %d", pause, src.Settled(), len(src.Acked), i+1)
		}
	}
	if count.Load() != 4 {
		t.Fatalf("the receiver saw %d requests, want 4", count.Load())
	}
}

// TestLoopResolvesNames: a host name goes through the pooled client until it is resolved, then
// through the loop; either way every message arrives.
func TestLoopResolvesNames(t *testing.T) {
	var count atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { count.Add(1) }))
	t.Cleanup(srv.Close)
	url := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) + "/in"
	msgs := make([][]byte, 500)
	for i := range msgs {
		msgs[i] = entry(url, fmt.Sprint(i))
	}
	src := enginetest.NewMemory(msgs...)
	runLoop(t, src, Options{Timeout: 5 * time.Second}, 16, len(msgs))
	if count.Load() != 500 || src.Settled() != 500 || len(src.Acked) != 500 {
		t.Fatalf("%d arrived, %d acked of 500", count.Load(), len(src.Acked))
	}
}

// TestNewLoopFallsBack: with the SSRF guard on, or loops turned off, the pooled Sink serves.
func TestNewLoopFallsBack(t *testing.T) {
	if _, ok := NewLoop(Options{DenyPrivate: true}).(*Sink); !ok {
		t.Fatal("DenyPrivate must use the pooled client, whose dialer enforces it")
	}
	if _, ok := NewLoop(Options{Loops: -1}).(*Sink); !ok {
		t.Fatal("Loops < 0 must use the pooled client")
	}
}

// failureLog logs every failed attempt, so that a test that finds a message retried says why.
type failureLog struct {
	engine.NopObserver
	t *testing.T
}

func (o *failureLog) Attempted(r engine.Result, took time.Duration) {
	if r.Err != nil {
		o.t.Logf("attempt failed after %s: %v (status %d)", took.Round(time.Millisecond), r.Err, r.Status)
	}
}

// TestDNSCacheForgets: names not looked up for a while leave the cache; IP literals never enter it.
func TestDNSCacheForgets(t *testing.T) {
	var d dnsCache
	if a, ok := d.lookup("127.0.0.1"); !ok || a.String() != "127.0.0.1" || len(d.entries) != 0 {
		t.Fatalf("literal: %v %v, %d entries", a, ok, len(d.entries))
	}
	d.lookup("localhost")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := d.lookup("localhost"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("localhost not resolved in 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.mu.Lock()
	d.entries["localhost"].expires = time.Now().Add(-dnsForget - time.Second)
	d.nextPrune = time.Time{}
	d.mu.Unlock()
	d.lookup("127.0.0.2")
	d.lookup("other.invalid") // prunes, then adds this one
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.entries["localhost"]; ok || len(d.entries) != 1 {
		t.Fatalf("after pruning: %d entries, localhost kept: %v", len(d.entries), ok)
	}
}
