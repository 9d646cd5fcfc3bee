package waypoint

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/natsq"
	"github.com/heraldhq/herald/internal/natsq/natstest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	testSecret     = "test-jwt-secret"
	testGovernance = "gov-key"
	testAdmin      = "admin-key"
	testSubject    = "cloudapi.aries.state_monitoring"
	testStream     = "cloudapi_aries_state_monitoring"
)

// tenantToken signs an HS256 JWT for wallet as ACA-Py does for a sub-wallet.
func tenantToken(secret, claims string) string {
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString([]byte(claims))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signed))
	return signed + "." + enc.EncodeToString(mac.Sum(nil))
}

func tenantKey(wallet string) string {
	return "tenant." + tenantToken(testSecret, `{"wallet_id":"`+wallet+`"}`)
}

// rig is a waypoint on a free port fed by its own nats-server.
type rig struct {
	t    *testing.T
	addr string
	js   jetstream.JetStream
	hub  *Hub
	srv  *Server
	src  *NATSSource
}

type rigOptions struct {
	timeout, ping, lookBack time.Duration
	adminGroup              string
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	if o.timeout == 0 {
		o.timeout = 10 * time.Second
	}
	if o.ping == 0 {
		o.ping = 15 * time.Second
	}
	if o.lookBack == 0 {
		o.lookBack = 60 * time.Second
	}
	ns := natstest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nc, err := natsq.Connect(ctx, ns.URL(), log)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: testStream, Subjects: []string{testSubject + ".>"},
		MaxAge: time.Minute, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	hub := NewHub(60*time.Second, 1000)
	src, err := NewNATSSource(nc, testStream, testSubject, 60*time.Second, hub, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(hub, Options{
		Auth: Auth{GovernanceKey: []byte(testGovernance), TenantAdminKey: []byte(testAdmin),
			TenantAdminGroup: o.adminGroup, JWTSecret: []byte(testSecret)},
		Timeout: o.timeout, Ping: o.ping, LookBack: o.lookBack, MaxStreams: 100000,
		Ready: src.Ready, Registry: reg, Log: log,
	})
	r := serve(t, hub, srv, func(ctx context.Context) { src.Run(ctx); nc.Close() })
	r.js, r.src = js, src
	deadline := time.Now().Add(10 * time.Second)
	for !src.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("source never became ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

// serve runs srv on a free port and run (the source) beside it until the test ends, then shuts
// the server down and waits for run to return.
func serve(t *testing.T, hub *Hub, srv *Server, run func(context.Context)) *rig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { run(ctx); close(done) }()
	t.Cleanup(func() {
		c, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		_ = srv.Shutdown(c)
		cancel()
		<-done
	})
	return &rig{t: t, addr: ln.Addr().String(), hub: hub, srv: srv}
}

// publish sends an event envelope under the subject upstream uses.
func (r *rig) publish(group, wallet, topic, state, body string) {
	r.t.Helper()
	subj := fmt.Sprintf("%s.%s.%s.%s.%s", testSubject, group, wallet, topic, state)
	if _, err := r.js.Publish(context.Background(), subj, []byte(body)); err != nil {
		r.t.Fatal(err)
	}
}

func event(group, wallet, topic, state, id string) string {
	return fmt.Sprintf(`{"payload": {"state": %q, "connection_id": %q, "their_label": "Bob"}, "group_id": %q, "origin": "tenant", "topic": %q, "wallet_id": %q}`,
		state, id, group, topic, wallet)
}

// sse is a raw client: it writes the request by hand and reads the response byte for byte.
type sse struct {
	c      net.Conn
	br     *bufio.Reader
	status int
	header http.Header
	body   string // the response body of a refusal
}

func (r *rig) open(path, apiKey string) *sse {
	r.t.Helper()
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	req := "GET " + path + " HTTP/1.1\r\nHost: waypoint\r\nAccept: text/event-stream\r\n"
	if apiKey != "" {
		req += "x-api-key: " + apiKey + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		r.t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	s := &sse{c: c, br: bufio.NewReader(c), header: http.Header{}}
	line, err := s.br.ReadString('\n')
	if err != nil {
		r.t.Fatalf("reading the status line: %v", err)
	}
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "HTTP/1.1" {
		r.t.Fatalf("status line %q", line)
	}
	s.status, _ = strconv.Atoi(f[1])
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			r.t.Fatalf("reading headers: %v", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		s.header.Add(k, strings.TrimSpace(v))
	}
	if s.status != 200 {
		n, _ := strconv.Atoi(s.header.Get("Content-Length"))
		b := make([]byte, n)
		if _, err := io.ReadFull(s.br, b); err != nil {
			r.t.Fatal(err)
		}
		s.body = string(b)
	}
	return s
}

// chunks reads the chunked body to its end: the SSE text, and whether the terminating chunk came
// before the connection closed.
func (s *sse) rest(t *testing.T) (text string, ended bool) {
	t.Helper()
	var b strings.Builder
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			return b.String(), false
		}
		n, err := strconv.ParseInt(strings.TrimRight(line, "\r\n"), 16, 64)
		if err != nil {
			t.Fatalf("chunk size line %q", line)
		}
		if n == 0 {
			if crlf, _ := s.br.ReadString('\n'); crlf != "\r\n" {
				t.Fatalf("after the last chunk: %q", crlf)
			}
			if _, err := s.br.ReadByte(); err != io.EOF {
				t.Fatalf("the connection stayed open after the last chunk: %v", err)
			}
			return b.String(), true
		}
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(s.br, chunk); err != nil {
			t.Fatalf("chunk: %v", err)
		}
		b.Write(chunk[:n])
	}
}

// waitOpen waits until n waiters are indexed, so that an event published next cannot come
// before its stream.
func (r *rig) waitOpen(n int) {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.hub.Open() != n {
		if time.Now().After(deadline) {
			r.t.Fatalf("%d waiters indexed, want %d", r.hub.Open(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestStreamAnswersFirstMatchThenCloses(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.open("/v1/sse/w1/connections/connection_id/c-42/completed", tenantKey("w1"))
	if s.status != 200 {
		t.Fatalf("status %d: %s", s.status, s.body)
	}
	for k, want := range map[string]string{"Content-Type": "text/event-stream; charset=utf-8",
		"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Transfer-Encoding": "chunked"} {
		if got := s.header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	r.waitOpen(1)
	r.publish("g1", "w1", "connections", "request-received", event("g1", "w1", "connections", "request-received", "c-42")) // wrong state
	r.publish("g1", "w2", "connections", "completed", event("g1", "w2", "connections", "completed", "c-42"))               // another wallet
	r.publish("g1", "w1", "connections", "completed", event("g1", "w1", "connections", "completed", "c-7"))                // another id
	r.publish("g1", "w1", "connections", "completed", event("g1", "w1", "connections", "completed", "c-42"))
	r.publish("g1", "w1", "connections", "completed", event("g1", "w1", "connections", "completed", "c-42")) // a second match
	text, ended := s.rest(t)
	want := `data: {"wallet_id":"w1","topic":"connections","origin":"tenant","group_id":"g1","payload":{"state":"completed","connection_id":"c-42","their_label":"Bob"}}` + "\n\n"
	if text != want || !ended {
		t.Fatalf("stream body %q (ended %v), want %q", text, ended, want)
	}
}

var pingLine = regexp.MustCompile(`^: ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\+00:00$`)

func TestTimeoutClosesWithNoDataAfterPings(t *testing.T) {
	r := newRig(t, rigOptions{timeout: 700 * time.Millisecond, ping: 200 * time.Millisecond})
	s := r.open("/v1/sse/w1/proofs/proof_id/p-1/done", "governance."+testGovernance)
	if s.status != 200 {
		t.Fatalf("status %d: %s", s.status, s.body)
	}
	start := time.Now()
	text, ended := s.rest(t)
	if took := time.Since(start); took < 600*time.Millisecond || !ended {
		t.Fatalf("closed after %s (ended %v), want the 700ms timeout", took, ended)
	}
	frames := strings.Split(strings.TrimSuffix(text, "\n\n"), "\n\n")
	if len(frames) < 2 {
		t.Fatalf("want at least two pings in 700ms at 200ms, got %q", text)
	}
	for _, f := range frames {
		if !pingLine.MatchString(f) {
			t.Fatalf("frame %q is not a ping comment (body %q)", f, text)
		}
	}
	if r.hub.Open() != 0 {
		t.Fatalf("%d waiters left after the timeout", r.hub.Open())
	}
}

func TestLookBackReplaysRecentEventsOnly(t *testing.T) {
	r := newRig(t, rigOptions{timeout: 400 * time.Millisecond})
	r.publish("g1", "w1", "proofs", "done", event("g1", "w1", "proofs", "done", "old"))
	time.Sleep(1100 * time.Millisecond)
	r.publish("g1", "w1", "proofs", "done", event("g1", "w1", "proofs", "done", "new"))
	r.publish("g1", "w1", "proofs", "done", event("g1", "w1", "proofs", "done", "new"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.hub.mu.Lock()
		n := r.hub.recent.len()
		r.hub.mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events in the replay window, want 3", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The default look_back (SSE_LOOK_BACK) reaches both; look_back=1 only the newer one.
	for _, c := range []struct {
		query, id string
		match     bool
	}{{"?look_back=1", "new", true}, {"?look_back=1", "old", false}, {"", "old", true}, {"?look_back=0", "old", true}} {
		s := r.open("/v1/sse/w1/proofs/connection_id/"+c.id+"/done"+c.query, "governance."+testGovernance)
		text, ended := s.rest(t)
		if got := strings.HasPrefix(text, "data: ") && strings.Contains(text, `"connection_id":"`+c.id+`"`); got != c.match || !ended {
			t.Errorf("%s %s: body %q (ended %v), want a match: %v", c.id, c.query, text, ended, c.match)
		}
		if c.match && strings.Count(text, "data: ") != 1 {
			t.Errorf("%s %s: want exactly one event, got %q", c.id, c.query, text)
		}
	}
}

func TestGroupFilter(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.open("/v1/sse/w1/proofs/connection_id/x/done?group_id=g2", "governance."+testGovernance)
	r.waitOpen(1)
	r.publish("g1", "w1", "proofs", "done", event("g1", "w1", "proofs", "done", "x"))
	r.publish("g2", "w1", "proofs", "done", event("g2", "w1", "proofs", "done", "x"))
	text, _ := s.rest(t)
	if !strings.Contains(text, `"group_id":"g2"`) || strings.Count(text, "data: ") != 1 {
		t.Fatalf("body %q, want the g2 event only", text)
	}
}

func TestTenantsSeeOnlyTheirOwnWallet(t *testing.T) {
	r := newRig(t, rigOptions{timeout: time.Second})
	if s := r.open("/v1/sse/w2/proofs/connection_id/x/done", tenantKey("w1")); s.status != 403 || s.body != `{"detail":"Unauthorized"}` {
		t.Fatalf("tenant w1 asking for w2: %d %s", s.status, s.body)
	}
	a := r.open("/v1/sse/w1/proofs/connection_id/x/done", tenantKey("w1"))
	b := r.open("/v1/sse/w2/proofs/connection_id/x/done", tenantKey("w2"))
	r.waitOpen(2)
	r.publish("g1", "w2", "proofs", "done", event("g1", "w2", "proofs", "done", "x"))
	textB, _ := b.rest(t)
	if !strings.Contains(textB, `"wallet_id":"w2"`) {
		t.Fatalf("tenant w2 got %q", textB)
	}
	textA, endedA := a.rest(t) // times out: w2's event, same id, never reaches w1
	if textA != "" || !endedA {
		t.Fatalf("tenant w1 got %q (ended %v), want nothing", textA, endedA)
	}
}

func TestAuthRefusals(t *testing.T) {
	r := newRig(t, rigOptions{adminGroup: "g1", timeout: time.Second})
	path := "/v1/sse/w1/proofs/connection_id/x/done"
	noWallet := "tenant." + tenantToken(testSecret, `{"sub":"w1"}`)
	expired := "tenant." + tenantToken(testSecret, `{"wallet_id":"w1","exp":1000}`)
	wrongSecret := "tenant." + tenantToken("other", `{"wallet_id":"w1"}`)
	enc := base64.RawURLEncoding
	none := "tenant." + enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + enc.EncodeToString([]byte(`{"wallet_id":"w1"}`)) + "."
	for _, c := range []struct {
		key, query string
		status     int
		body       string
	}{
		{"", "", 403, `{"detail":"Not authenticated"}`},
		{"nodot", "", 401, `{"detail":"Unauthorized"}`},
		{"admin.x", "", 401, `{"detail":"Unauthorized"}`},
		{"governance.wrong", "", 403, `{"detail":"Unauthorized"}`},
		{"governance." + testAdmin, "", 403, `{"detail":"Unauthorized"}`},
		{"tenant-admin." + testGovernance, "", 403, `{"detail":"Unauthorized"}`},
		{"tenant-admin." + testAdmin, "?group_id=g2", 403, `{"detail":"Unauthorized"}`},
		{"tenant.garbage", "", 403, `{"detail":"Unauthorized"}`},
		{noWallet, "", 403, `{"detail":"Unauthorized"}`},
		{expired, "", 403, `{"detail":"Unauthorized"}`},
		{wrongSecret, "", 403, `{"detail":"Unauthorized"}`},
		{none, "", 403, `{"detail":"Unauthorized"}`},
	} {
		s := r.open(path+c.query, c.key)
		if s.status != c.status || s.body != c.body {
			t.Errorf("x-api-key %q%s: %d %s, want %d %s", c.key, c.query, s.status, s.body, c.status, c.body)
		}
	}
	if r.hub.Open() != 0 {
		t.Fatal("a refused request left a waiter")
	}
	// A tenant-admin bound to g1 watches g1's events only, group_id or not.
	s := r.open(path, "tenant-admin."+testAdmin)
	r.waitOpen(1)
	r.publish("g2", "w1", "proofs", "done", event("g2", "w1", "proofs", "done", "x"))
	r.publish("g1", "w1", "proofs", "done", event("g1", "w1", "proofs", "done", "x"))
	if text, _ := s.rest(t); !strings.Contains(text, `"group_id":"g1"`) {
		t.Fatalf("bound tenant-admin got %q", text)
	}
}

func TestPathSegmentsNeverWiden(t *testing.T) {
	r := newRig(t, rigOptions{timeout: 500 * time.Millisecond})
	gov := "governance." + testGovernance
	for _, p := range []string{
		"/v1/sse/*/proofs/connection_id/x/done",
		"/v1/sse/%3E/proofs/connection_id/x/done",
		"/v1/sse/w1.w2/proofs/connection_id/x/done",
		"/v1/sse/w%201/proofs/connection_id/x/done",
		"/v1/sse/w1/*/connection_id/x/done",
		"/v1/sse/w1/proofs/connection_id/x/%2A",
		"/v1/sse/w1/proofs/connection_id/x/done?group_id=*",
		"/v1/sse/w1/proofs/connection_id/x/done?group_id=g.1",
	} {
		if s := r.open(p, gov); s.status != 400 {
			t.Errorf("%s: %d %s, want 400", p, s.status, s.body)
		}
	}
	for _, p := range []string{"/v1/sse/w1/proofs/connection_id/x", "/v1/sse/w1/proofs/connection_id/x/done/more", "/v1/sse/w1%2Fw2/proofs/connection_id/x"} {
		if s := r.open(p, gov); s.status != 404 {
			t.Errorf("%s: %d %s, want 404", p, s.status, s.body)
		}
	}
	// A wildcard as the awaited value is a literal: it matches nothing but itself.
	s := r.open("/v1/sse/w1/proofs/connection_id/*/done", gov)
	r.waitOpen(1)
	r.publish("g1", "w1", "proofs", "done", event("g1", "w1", "proofs", "done", "x"))
	if text, _ := s.rest(t); text != "" {
		t.Fatalf("field_id * matched %q", text)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	r := newRig(t, rigOptions{})
	get := func(path string) (int, string) {
		res, err := http.Get("http://" + r.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := get("/health/live"); code != 200 || body != `{"status":"live"}` {
		t.Fatalf("live: %d %s", code, body)
	}
	if code, body := get("/health/ready"); code != 200 || body != `{"status":"ready"}` {
		t.Fatalf("ready: %d %s", code, body)
	}
	s := r.open("/v1/sse/w1/proofs/connection_id/x/done", "governance."+testGovernance)
	r.waitOpen(1)
	r.publish("g1", "w1", "proofs", "done", event("g1", "w1", "proofs", "done", "x"))
	s.rest(t)
	_, m := get("/metrics")
	for _, want := range []string{"herald_sse_open_streams 0", "herald_sse_matched_total 1", "herald_sse_timed_out_total 0", "herald_sse_events_total 1"} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// With the stream gone the source is not ready, and /health/ready says so.
	if err := r.js.DeleteStream(context.Background(), testStream); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body := get("/health/ready")
		if code == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ready after the stream was deleted: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDisconnectsLeaveNothingBehind opens and drops 10,000 streams: each disconnect must free its
// waiter, its goroutine and its memory at once.
func TestDisconnectsLeaveNothingBehind(t *testing.T) {
	r := newRig(t, rigOptions{})
	cycles := 10000
	if testing.Short() {
		cycles = 1000
	}
	settle := func() (int, uint64) {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapInuse
	}
	const workers = 8
	errs := make(chan error, workers)
	run := func(from, to int) {
		for w := range workers {
			go func() {
				for i := from + w; i < to; i += workers {
					c, err := net.Dial("tcp", r.addr)
					if err != nil {
						errs <- err
						return
					}
					fmt.Fprintf(c, "GET /v1/sse/w%d/proofs/connection_id/c%d/done HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\n\r\n", i%50, i, tenantKey(fmt.Sprintf("w%d", i%50)))
					br := bufio.NewReader(c)
					line, err := br.ReadString('\n')
					if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
						errs <- fmt.Errorf("cycle %d: %q %v", i, line, err)
						c.Close()
						return
					}
					c.Close()
				}
				errs <- nil
			}()
		}
		for range workers {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	// A first round brings fasthttp's worker goroutines and pools to the size this concurrency
	// needs; what follows must not add to them.
	run(0, 200)
	g0, heap0 := settle()
	run(0, cycles)
	deadline := time.Now().Add(10 * time.Second)
	for r.hub.Open() != 0 || r.srv.open.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after %d disconnects: %d waiters indexed, %d streams open", cycles, r.hub.Open(), r.srv.open.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.hub.mu.Lock()
	keys := len(r.hub.waiters)
	r.hub.mu.Unlock()
	if keys != 0 {
		t.Fatalf("%d index entries left", keys)
	}
	var g1 int
	var heap1 uint64
	for range 100 { // goroutines of closed connections finish a moment after the waiter is gone
		if g1, heap1 = settle(); g1 <= g0+2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g1 > g0+2 {
		t.Errorf("goroutines: %d before, %d after %d cycles", g0, g1, cycles)
	}
	// Pools (fasthttp's contexts, buffers) may keep a little; a leak of even 100 bytes a stream
	// would show as 1 MB.
	if heap1 > heap0+1<<20 {
		t.Errorf("heap in use: %d KiB before, %d KiB after %d cycles", heap0>>10, heap1>>10, cycles)
	}
	t.Logf("%d cycles: goroutines %d -> %d, heap in use %d -> %d KiB", cycles, g0, g1, heap0>>10, heap1>>10)
}
