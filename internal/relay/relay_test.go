package relay

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/recipkey"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newRelay(t testing.TB) (*Relay, rueidis.Client) {
	t.Helper()
	c := redistest.Client(t, redistest.Standalone(t).URL())
	cfg := config.Relay{InboundTopic: "acapy_inbound", ResponseWait: time.Second, MaxBody: 1 << 20, Stale: recipkey.DefaultStale}
	return New(cfg, c, metrics.New("relay"), quiet), c
}

// packedBody is a packed message for kid, shaped as ACA-Py packs one.
func packedBody(kid string) []byte {
	protected := `{"enc": "xchacha20poly1305_ietf", "typ": "JWM/1.0", "alg": "Authcrypt", "recipients": [{"encrypted_key": "a2V5", "header": {"kid": "` + kid + `", "sender": "c2VuZGVy", "iv": "aXY"}}]}`
	return []byte(`{"protected": "` + base64.URLEncoding.EncodeToString([]byte(protected)) + `", "iv": "aXY", "ciphertext": "` + strings.Repeat("Y2lwaGVy", 80) + `", "tag": "dGFn"}`)
}

func TestHandle(t *testing.T) {
	r, c := newRelay(t)
	ctx := context.Background()
	body := packedBody("KeyA")
	if res := r.Handle(ctx, body, acapy.TransportHTTP); res.Status != 503 || !strings.Contains(res.Reason, "no ACA-Py instance") {
		t.Fatalf("no instance: %+v", res)
	}
	_ = c.Do(ctx, c.B().Hset().Key(recipkey.UIDKeysMap).FieldValue().FieldValue("uid", "W10=").Build()).Error()
	if res := r.Handle(ctx, body, acapy.TransportHTTP); res.Status != 200 {
		t.Fatalf("queue: %+v", res)
	}
	got, _ := c.Do(ctx, c.B().Lpop().Key("acapy_inbound_KeyA").Build()).ToString()
	if want := string(acapy.AppendInbound(nil, body, "", "http")); got != want {
		t.Fatalf("entry %s, want %s", got, want)
	}
	if res := r.Handle(ctx, []byte(`{"iv": 1}`), acapy.TransportHTTP); res.Status != 400 || !strings.Contains(res.Reason, "protected") {
		t.Fatalf("bad body: %+v", res)
	}

	// A direct response reaches the waiting request through the shared reader.
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go r.readResponses(rctx, "acapy_inbound_direct_resp")
	rr := []byte(strings.TrimSuffix(string(body), "}") + `, "~transport": {"return_route": "all"}}`)
	go answerOK(ctx, c)
	res := r.Handle(ctx, rr, acapy.TransportHTTP)
	if res.Status != 200 || res.Response == nil || string(res.Response.Body) != `{"ok": true}` {
		t.Fatalf("direct response: %+v", res)
	}
}

// answerOK plays ACA-Py answering the message queued for KeyA with the direct response {"ok": true}
// on the plugin's default list.
func answerOK(ctx context.Context, c rueidis.Client) {
	kv, err := c.Do(ctx, c.B().Blpop().Key("acapy_inbound_KeyA").Timeout(5).Build()).AsStrSlice()
	if err != nil {
		return
	}
	txn := kv[1][strings.Index(kv[1], `"txn_id": "`)+11:]
	txn = txn[:strings.IndexByte(txn, '"')]
	_ = c.Do(ctx, c.B().Rpush().Key("acapy_inbound_direct_resp").Element(
		`{"txn_id": "`+txn+`", "response_data": {"response": "eyJvayI6IHRydWV9", "content-type": "application/json"}}`).Build()).Error()
}

// BenchmarkHandle is the relay's per-message cost without HTTP: parsing the packed message, the
// bookkeeping script and the RPUSH, from as many goroutines as a loaded listener runs.
func BenchmarkHandle(b *testing.B) {
	r, c := newRelay(b)
	ctx := context.Background()
	_ = c.Do(ctx, c.B().Hset().Key(recipkey.UIDKeysMap).FieldValue().FieldValue("uid", "W10=").Build()).Error()
	_ = c.Do(ctx, c.B().Hset().Key(recipkey.LastAccessMap).FieldValue().FieldValue("uid", recipkey.FormatAccess(time.Now().Add(time.Hour))).Build()).Error()
	bodies := make([][]byte, 100)
	for i := range bodies {
		bodies[i] = packedBody(fmt.Sprintf("Key%03dH3C2AVvLMv6gmMNam3uVAjZpfk", i))
	}
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if res := r.Handle(ctx, bodies[i%len(bodies)], acapy.TransportHTTP); res.Status != 200 {
				b.Fatalf("%+v", res)
			}
			i++
		}
	})
}

// TestRedisDown: with Redis gone a message is answered 503 and recovers once Redis is back.
func TestRedisDown(t *testing.T) {
	srv := redistest.Standalone(t)
	c := redistest.Client(t, srv.URL())
	cfg := config.Relay{InboundTopic: "acapy_inbound", ResponseWait: time.Second, MaxBody: 1 << 20, Stale: recipkey.DefaultStale}
	r := New(cfg, c, metrics.New("relay"), quiet)
	ctx := context.Background()
	_ = c.Do(ctx, c.B().Hset().Key(recipkey.UIDKeysMap).FieldValue().FieldValue("uid", "W10=").Build()).Error()
	srv.Stop()
	if res := r.Handle(ctx, packedBody("KeyA"), acapy.TransportHTTP); res.Status != 503 || res.Reason != "redis unavailable" {
		t.Fatalf("Redis down: %+v", res)
	}
	srv.Start()
	// The restarted server kept nothing (no persistence here): the instance registers again.
	deadline := time.Now().Add(10 * time.Second)
	for c.Do(ctx, c.B().Hset().Key(recipkey.UIDKeysMap).FieldValue().FieldValue("uid", "W10=").Build()).Error() != nil ||
		r.Handle(ctx, packedBody("KeyA"), acapy.TransportHTTP).Status != 200 {
		if time.Now().After(deadline) {
			t.Fatal("no recovery after Redis came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDirectResponseForwardedBetweenRelays: with two relays on one Redis, the direct response of a
// request held by one can be popped by the other; it is forwarded and reaches the request.
func TestDirectResponseForwardedBetweenRelays(t *testing.T) {
	a, c := newRelay(t)
	b := New(a.cfg, c, metrics.New("relay"), quiet)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go a.listenForwarded(ctx)                            // a holds the request, and reads no list
	go b.readResponses(ctx, "acapy_inbound_direct_resp") // b pops the response
	_ = c.Do(ctx, c.B().Hset().Key(recipkey.UIDKeysMap).FieldValue().FieldValue("uid", "W10=").Build()).Error()
	time.Sleep(200 * time.Millisecond) // the subscription is in place

	rr := []byte(strings.TrimSuffix(string(packedBody("KeyA")), "}") + `, "~transport": {"return_route": "all"}}`)
	go answerOK(ctx, c)
	res := a.Handle(ctx, rr, acapy.TransportHTTP)
	if res.Status != 200 || res.Response == nil || string(res.Response.Body) != `{"ok": true}` {
		t.Fatalf("forwarded direct response: %+v", res)
	}
}

// TestWebSocketKeepalive: a peer that answers the relay's pings stays connected; one that goes
// silent is closed once the idle limit passes.
func TestWebSocketKeepalive(t *testing.T) {
	r, _ := newRelay(t)
	r.wsPing, r.wsIdle = 100*time.Millisecond, 500*time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := r.server(acapy.TransportWS)
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Shutdown() }()
	dial := func() *websocket.Conn {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	alive, silent := dial(), dial()
	defer alive.Close()
	defer silent.Close()
	silent.SetPingHandler(func(string) error { return nil }) // never answers
	ended := make(chan time.Duration, 2)
	start := time.Now()
	for _, c := range []*websocket.Conn{alive, silent} {
		go func() {
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					ended <- time.Since(start)
					return
				}
			}
		}()
	}
	select {
	case took := <-ended:
		if took < 400*time.Millisecond || took > 3*time.Second {
			t.Errorf("a session ended after %s", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the silent peer was never closed")
	}
	select {
	case <-ended:
		t.Fatal("the live peer was closed too")
	case <-time.After(time.Second):
	}
}
