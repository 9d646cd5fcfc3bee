package sink

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/heraldhq/herald/engine"
	"github.com/valyala/fasthttp"
)

func message(url string, body string, headers ...string) *engine.Message {
	m := &engine.Message{URL: []byte(url), Payload: []byte(body)}
	for i := 0; i+1 < len(headers); i += 2 {
		m.Headers = append(m.Headers, engine.Header{Name: []byte(headers[i]), Value: []byte(headers[i+1])})
	}
	return m
}

func TestSchemeOf(t *testing.T) {
	for url, want := range map[string]Scheme{
		"http://a": SchemeHTTP, "HTTPS://a": SchemeHTTPS, "ws://a": SchemeWS, "Wss://a": SchemeWSS,
		"ftp://a": SchemeOther, "a": SchemeOther, "": SchemeOther, "httpss://": SchemeOther, "h:": SchemeOther,
	} {
		if got := SchemeOf([]byte(url)); got != want {
			t.Errorf("SchemeOf(%q) = %d, want %d", url, got, want)
		}
	}
}

// TestHTTPSReusesConnections delivers over TLS with many deliveries in flight and checks that
// the bodies and headers arrive intact and that connections are pooled, not one per message.
func TestHTTPSReusesConnections(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]bool{}
	var bad []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		conns[r.RemoteAddr] = true
		if r.Method != "POST" || string(b) != "payload" || r.Header.Get("X-Api-Key") != "k" || r.Header.Get("Content-Type") != "application/ssi-agent-wire" {
			bad = append(bad, r.Method+" "+string(b)+" "+r.Header.Get("X-Api-Key"))
		}
		mu.Unlock()
		w.WriteHeader(202)
	}))
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	s := New(Options{TLS: &tls.Config{RootCAs: pool}, MaxConnsPerHost: 8})

	var wg sync.WaitGroup
	errs := make(chan engine.Result, 400)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				r := s.Deliver(message(srv.URL+"/in", "payload", "Content-Type", "application/ssi-agent-wire", "x-api-key", "k"))
				if r.Err != nil || r.Status != 202 {
					errs <- r
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for r := range errs {
		t.Fatalf("delivery failed: %v (status %d)", r.Err, r.Status)
	}
	if len(bad) > 0 {
		t.Fatalf("receiver saw wrong requests: %v", bad[:1])
	}
	if len(conns) > 8 {
		t.Errorf("400 deliveries used %d connections; want at most 8 (pooled keep-alive)", len(conns))
	}
}

func TestStatusAndTimeoutAreFailures(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/slow") {
			time.Sleep(500 * time.Millisecond)
		}
		w.WriteHeader(500)
	}))
	defer srv.Close()
	s := New(Options{Timeout: 100 * time.Millisecond})
	if r := s.Deliver(message(srv.URL+"/x", "b")); r.Err == nil || r.Status != 500 || r.Permanent {
		t.Errorf("500: %+v", r)
	}
	start := time.Now()
	if r := s.Deliver(message(srv.URL+"/slow", "b")); r.Err == nil || r.Permanent {
		t.Errorf("timeout: %+v", r)
	}
	if took := time.Since(start); took > 400*time.Millisecond {
		t.Errorf("timeout of 100 ms took %s", took)
	}
	if r := s.Deliver(message("ftp://x/y", "b")); r.Err == nil || !r.Permanent || !strings.Contains(r.Err.Error(), "ftp") {
		t.Errorf("unsupported scheme: %+v", r)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if r := s.Deliver(message("http://"+addr+"/", "b")); r.Err == nil || r.Permanent {
		t.Errorf("connection refused: %+v", r)
	}
}

func TestWebSocketFrame(t *testing.T) {
	got := make(chan string, 1)
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		kind, b, err := c.ReadMessage()
		if err == nil {
			got <- r.Header.Get("x-wallet-id") + "|" + string(b) + "|" + map[int]string{websocket.BinaryMessage: "binary"}[kind]
		}
	}))
	defer srv.Close()
	s := New(Options{})
	r := s.Deliver(message("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", "frame", "x-wallet-id", "w1"))
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	select {
	case g := <-got:
		if g != "w1|frame|binary" {
			t.Errorf("got %q", g)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no frame")
	}
}

func BenchmarkDeliverHTTP(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	s := New(Options{})
	m := message(srv.URL+"/in", strings.Repeat("x", 300), "Content-Type", "application/json")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if r := s.Deliver(m); r.Err != nil {
				b.Fatal(r.Err)
			}
		}
	})
}

func BenchmarkBuildRequest(b *testing.B) {
	m := message("http://127.0.0.1:8080/endpoint-1", strings.Repeat("x", 300),
		"Content-Type", "application/json", "x-api-key", "secret-key", "x-wallet-id", "w-1")
	b.ReportAllocs()
	for b.Loop() {
		req := fasthttp.AcquireRequest()
		buildRequest(req, m)
		fasthttp.ReleaseRequest(req)
	}
}

func TestDenied(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "172.16.0.9": true, "192.168.1.1": true, "169.254.169.254": true,
		"0.0.0.0": true, "::1": true, "fe80::1": true, "fc00::5": true, "::ffff:127.0.0.1": true, "224.0.0.1": true,
		"93.184.216.34": false, "2606:4700::1111": false, "172.32.0.1": false,
	} {
		if got := Denied(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: denied %v, want %v", addr, got, want)
		}
	}
}

// TestDenyPrivate: with the guard on, a receiver on loopback (by name or address, over HTTP or
// WebSocket) is a permanent failure naming the guard; with it off (the default) it is delivered.
func TestDenyPrivate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {}}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Shutdown() }()
	port := ln.Addr().(*net.TCPAddr).Port
	guarded := New(Options{Timeout: 2 * time.Second, DenyPrivate: true})
	for _, url := range []string{fmt.Sprintf("http://127.0.0.1:%d/x", port), fmt.Sprintf("http://localhost:%d/x", port), fmt.Sprintf("ws://127.0.0.1:%d/x", port)} {
		r := guarded.Deliver(&engine.Message{URL: []byte(url), Payload: []byte("{}")})
		if r.Err == nil || !r.Permanent || !strings.Contains(r.Err.Error(), "HERALD_DENY_PRIVATE") {
			t.Errorf("%s: %+v", url, r)
		}
	}
	open := New(Options{Timeout: 2 * time.Second})
	if r := open.Deliver(&engine.Message{URL: []byte(fmt.Sprintf("http://127.0.0.1:%d/x", port)), Payload: []byte("{}")}); r.Err != nil {
		t.Errorf("guard off: %v", r.Err)
	}
}
