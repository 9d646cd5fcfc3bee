package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/heraldhq/herald/internal/recipkey"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

// packed builds a DIDComm packed message for the recipients kids whose ciphertext carries id, so
// that a test can tell messages apart after the round trip through Redis.
func packed(kids []string, id int, returnRoute string) []byte {
	var recips []string
	for _, k := range kids {
		recips = append(recips, fmt.Sprintf(`{"encrypted_key": "a2V5", "header": {"kid": %q, "sender": "c2Vu", "iv": "aXY"}}`, k))
	}
	protected := `{"enc": "xchacha20poly1305_ietf", "typ": "JWM/1.0", "alg": "Authcrypt", "recipients": [` + strings.Join(recips, ", ") + `]}`
	body := fmt.Sprintf(`{"protected": %q, "iv": "aXY", "ciphertext": %q, "tag": "dGFn"`,
		base64.URLEncoding.EncodeToString([]byte(protected)), base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(id))))
	if returnRoute != "" {
		body += fmt.Sprintf(`, "~transport": {"return_route": %q}`, returnRoute)
	}
	return []byte(body + "}")
}

// idOf reads back the id of an inbound entry built from packed.
func idOf(entry string) (int, error) {
	var e struct{ Payload string }
	if err := json.Unmarshal([]byte(entry), &e); err != nil {
		return 0, err
	}
	body, err := base64.URLEncoding.DecodeString(e.Payload)
	if err != nil {
		return 0, err
	}
	var m struct{ Ciphertext string }
	if err := json.Unmarshal(body, &m); err != nil {
		return 0, err
	}
	b, err := base64.RawURLEncoding.DecodeString(m.Ciphertext)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(string(b))
}

type relayProc struct {
	*proc
	http, ws, status string
}

// startRelay runs `herald relay` with the reference environment plus extra, and waits until both
// listeners answer.
func startRelay(t *testing.T, redisURL, prefix string, extra ...string) relayProc {
	t.Helper()
	r := relayProc{http: freePort(t), ws: freePort(t), status: freePort(t)}
	env := append([]string{
		"REDIS_SERVER_URL=" + redisURL,
		"TOPIC_PREFIX=" + prefix,
		fmt.Sprintf(`INBOUND_TRANSPORT_CONFIG=[["http","127.0.0.1",%s],["ws","127.0.0.1",%s]]`, r.http, r.ws),
		"STATUS_ENDPOINT_HOST=127.0.0.1", "STATUS_ENDPOINT_PORT=" + r.status, "STATUS_ENDPOINT_API_KEY=k",
	}, extra...)
	r.proc = start(t, env, "relay")
	eventually(t, 15*time.Second, "the relay's listeners", func() bool {
		resp, err := http.Get("http://127.0.0.1:" + r.http + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		code, _ := status(t, r.status, "/status/ready", "k")
		return resp.StatusCode == 200 && code == 200
	})
	return r
}

func (r relayProc) post(t testing.TB, body []byte) (int, string, string) {
	t.Helper()
	resp, err := http.Post("http://127.0.0.1:"+r.http+"/", "application/ssi-agent-wire", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Content-Type")
}

func register(t testing.TB, c rueidis.Client, uid string) {
	t.Helper()
	if err := c.Do(context.Background(), c.B().Hset().Key(recipkey.UIDKeysMap).FieldValue().FieldValue(uid, "W10=").Build()).Error(); err != nil {
		t.Fatal(err)
	}
}

type relayVectors struct {
	Inbound []struct {
		List  string `json:"list"`
		Entry string `json:"entry"`
	} `json:"inbound"`
	DirectResponse []struct {
		Entry     string `json:"entry"`
		HTTPReply string `json:"http_reply_body"`
	} `json:"direct_response"`
	Body string `json:"inbound_request_body_packed_message"`
}

func loadRelayVectors(t *testing.T) relayVectors {
	b, err := os.ReadFile(filepath.Join("..", "..", "shared", "vectors", "acapy_queue_entries.json"))
	if err != nil {
		t.Fatalf("the shared test vectors must sit beside the repository: %v", err)
	}
	var v relayVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRelayVectorsStandalone(t *testing.T) {
	t.Parallel()
	testRelayVectors(t, redistest.Standalone(t).URL(), false)
}

func TestRelayVectorsCluster(t *testing.T) {
	t.Parallel()
	testRelayVectors(t, redistest.Cluster(t, 3).URL(), true)
}

// testRelayVectors starts the relay with the reference environment and checks every inbound
// vector byte for byte, the direct responses through both list names and both content-type
// spellings, and every kind of bad input.
func testRelayVectors(t *testing.T, url string, cluster bool) {
	v := loadRelayVectors(t)
	c := client(t, url)
	if cluster {
		// The relay refuses a cluster whose bookkeeping slots are spread, and says how to fix it.
		p := start(t, []string{"REDIS_SERVER_URL=" + url, `INBOUND_TRANSPORT_CONFIG=[["http","127.0.0.1",` + freePort(t) + `]]`}, "relay")
		if code := p.wait(20 * time.Second); code != 1 || !strings.Contains(p.log.String(), "--place-keys") {
			t.Fatalf("spread bookkeeping keys: exit %d, log %s", code, p.log.String())
		}
		place := start(t, []string{"REDIS_SERVER_URL=" + url}, "relay", "--place-keys")
		if code := place.wait(30 * time.Second); code != 0 {
			t.Fatalf("--place-keys: exit %d: %s", code, place.log.String())
		}
	}
	r := startRelay(t, url, "acapy", "HERALD_RESPONSE_WAIT=2s", "HERALD_MAX_BODY=4096")
	body := []byte(v.Body)
	list := v.Inbound[0].List

	// GET / as the reference answers it, with the invitation note for ?c_i=.
	for _, tc := range []struct{ path, body string }{{"/", ""}, {"/?c_i=eyJ0eXBlIjogImludml0YXRpb24ifQ", "You have received a connection invitation"}} {
		resp, err := http.Get("http://127.0.0.1:" + r.http + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), tc.body) || (tc.body == "" && len(b) != 0) {
			t.Errorf("GET %s: %d %q", tc.path, resp.StatusCode, b)
		}
	}

	// No ACA-Py instance yet: nobody would read the message.
	if code, reason, _ := r.post(t, body); code != 503 || !strings.Contains(reason, "no ACA-Py instance") {
		t.Fatalf("no instance: %d %q", code, reason)
	}
	register(t, c, "uid-1")

	// HTTP, no direct response: exactly the vector's entry.
	if code, _, _ := r.post(t, body); code != 200 {
		t.Fatalf("POST: %d", code)
	}
	// WebSocket, a binary frame: the ws vector.
	ws, _, err := websocket.DefaultDialer.Dial("ws://127.0.0.1:"+r.ws+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.BinaryMessage, body); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "two entries", func() bool { return llen(t, c, list) == 2 })
	got, _ := c.Do(context.Background(), c.B().Lrange().Key(list).Start(0).Stop(-1).Build()).AsStrSlice()
	if got[0] != v.Inbound[0].Entry || got[1] != v.Inbound[2].Entry {
		t.Fatalf("entries:\n got %s\n     %s\nwant %s\n     %s", got[0], got[1], v.Inbound[0].Entry, v.Inbound[2].Entry)
	}
	key := strings.TrimPrefix(list, "acapy_inbound_")
	if uid, _ := c.Do(context.Background(), c.B().Hget().Key(recipkey.KeyUIDMap).Field(key).Build()).ToString(); uid != "uid-1" {
		t.Errorf("recip_key_uid_map[%s] = %q", key, uid)
	}
	if n, _ := c.Do(context.Background(), c.B().Hget().Key(recipkey.PendingMap).Field("uid-1_"+key).Build()).AsInt64(); n != 2 {
		t.Errorf("pending count %d, want 2", n)
	}
	keys, _ := c.Do(context.Background(), c.B().Hget().Key(recipkey.UIDKeysMap).Field("uid-1").Build()).ToString()
	if dec, _ := base64.URLEncoding.DecodeString(keys); string(dec) != `["`+key+`"]` {
		t.Errorf("uid_recip_keys_map[uid-1] = %s (%s)", keys, dec)
	}

	_ = c.Do(context.Background(), c.B().Del().Key(list).Build())

	// Direct responses: ACA-Py answers on its default list with "content-type", or on the
	// reference relay's list with "content_type"; both reach the waiting request.
	rr := []byte(strings.TrimSuffix(v.Body, "}") + `, "~transport": {"return_route": "all"}}`)
	for _, tc := range []struct{ list, entry, ctype string }{
		{"acapy_inbound_direct_resp", v.DirectResponse[0].Entry, "application/didcomm-envelope-enc"},
		{"acapy_inbound_direct_response", strings.Replace(v.DirectResponse[0].Entry, `"content-type"`, `"content_type"`, 1), "application/didcomm-envelope-enc"},
	} {
		go answer(t, c, list, tc.list, tc.entry)
		code, reply, ctype := r.post(t, rr)
		if code != 200 || reply != v.DirectResponse[0].HTTPReply || ctype != tc.ctype {
			t.Errorf("direct response via %s: %d %q %q", tc.list, code, reply, ctype)
		}
	}
	// Over WebSocket the response comes back as a binary frame on the same connection.
	go answer(t, c, list, "acapy_inbound_direct_resp", v.DirectResponse[0].Entry)
	if err := ws.WriteMessage(websocket.TextMessage, rr); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if kind, reply, err := ws.ReadMessage(); err != nil || kind != websocket.BinaryMessage || string(reply) != v.DirectResponse[0].HTTPReply {
		t.Errorf("direct response over WebSocket: %v %d %q", err, kind, reply)
	}
	_ = ws.SetReadDeadline(time.Time{})

	// Nobody answers: 200 with no body once the wait is over.
	startWait := time.Now()
	if code, reply, _ := r.post(t, rr); code != 200 || reply != "" || time.Since(startWait) < 2*time.Second {
		t.Errorf("unanswered: %d %q after %s", code, reply, time.Since(startWait))
	}
	_ = c.Do(context.Background(), c.B().Del().Key(list).Build())

	// Bad input: 400 with a reason (413 when too large), nothing queued.
	before := pendingTotal(t, c)
	for _, tc := range []struct {
		body   string
		code   int
		reason string
	}{
		{`not json`, 400, "not JSON"},
		{`{"iv": "x"}`, 400, "no protected"},
		{`{"protected": "***"}`, 400, "base64"},
		{`{"protected": "` + base64.URLEncoding.EncodeToString([]byte(`{"recipients": []}`)) + `"}`, 400, "no recipients"},
		{`{"protected": "` + strings.Repeat("A", 5000) + `"}`, 413, ""},
	} {
		code, reason, _ := r.post(t, []byte(tc.body))
		if code != tc.code || !strings.Contains(reason, tc.reason) {
			t.Errorf("%.40s: %d %q, want %d with %q", tc.body, code, reason, tc.code, tc.reason)
		}
	}
	if n := llen(t, c, list); n != 0 || pendingTotal(t, c) != before {
		t.Errorf("bad input queued something: %d entries, pending %d -> %d", n, before, pendingTotal(t, c))
	}
	// A bad frame closes its own connection with the reason; other connections keep working.
	bad, _, err := websocket.DefaultDialer.Dial("ws://127.0.0.1:"+r.ws+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = bad.WriteMessage(websocket.TextMessage, []byte("not json"))
	_ = bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = bad.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseUnsupportedData || !strings.Contains(ce.Text, "not JSON") {
		t.Errorf("bad frame: %v, want a close frame with the reason", err)
	}
	if err := ws.WriteMessage(websocket.TextMessage, body); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the good connection's frame", func() bool { return llen(t, c, list) == 1 })

	// Same status endpoints as the deliverer.
	if code, b := status(t, r.status, "/status/live", "k"); code != 200 || b != `{"alive":true}` {
		t.Errorf("live: %d %s", code, b)
	}
	if code, b := status(t, r.status, "/metrics", "k"); code != 200 || !strings.Contains(b, `herald_relay_messages_total{outcome="queued",transport="http"}`) {
		t.Errorf("metrics: %d\n%s", code, b)
	}
	if code, _ := status(t, r.status, "/status/ready", "wrong"); code != 403 {
		t.Errorf("wrong key: %d", code)
	}
}

// answer plays ACA-Py for one direct response: it pops the message, and pushes the response
// entry with the message's txn_id onto respList.
func answer(t *testing.T, c rueidis.Client, list, respList, template string) {
	kv, err := c.Do(context.Background(), c.B().Blpop().Key(list).Timeout(5).Build()).AsStrSlice()
	if err != nil || len(kv) != 2 {
		t.Errorf("no message to answer: %v", err)
		return
	}
	var e struct {
		TxnID string `json:"txn_id"`
	}
	if err := json.Unmarshal([]byte(kv[1]), &e); err != nil || e.TxnID == "" {
		t.Errorf("entry without txn_id: %s", kv[1])
		return
	}
	var tmpl struct {
		TxnID string `json:"txn_id"`
	}
	_ = json.Unmarshal([]byte(template), &tmpl)
	resp := strings.Replace(template, tmpl.TxnID, e.TxnID, 1)
	_ = c.Do(context.Background(), c.B().Rpush().Key(respList).Element(resp).Build()).Error()
}

func pendingTotal(t testing.TB, c rueidis.Client) int64 {
	m, _ := c.Do(context.Background(), c.B().Hgetall().Key(recipkey.PendingMap).Build()).AsIntMap()
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// acapy plays one ACA-Py instance's redis_queue inbound transport: it registers its uid with an
// empty key list, then pops the lists of the keys assigned to it, writes its last access on each
// message and decrements the pending count, as the plugin does.
type acapyInstance struct {
	uid   string
	c     rueidis.Client
	topic string
	stop  chan struct{}
	done  chan struct{}

	mu  sync.Mutex
	got map[int]int
}

func runACAPy(t *testing.T, c rueidis.Client, uid, topic string) *acapyInstance {
	a := &acapyInstance{uid: uid, c: c, topic: topic, stop: make(chan struct{}), done: make(chan struct{}), got: map[int]int{}}
	register(t, c, uid)
	go a.loop(t)
	t.Cleanup(a.silence)
	return a
}

func (a *acapyInstance) silence() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.done
}

func (a *acapyInstance) loop(t *testing.T) {
	defer close(a.done)
	ctx := context.Background()
	for {
		select {
		case <-a.stop:
			return
		default:
		}
		enc, err := a.c.Do(ctx, a.c.B().Hget().Key(recipkey.UIDKeysMap).Field(a.uid).Build()).ToString()
		if err != nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		raw, _ := base64.URLEncoding.DecodeString(enc)
		var keys []string
		_ = json.Unmarshal(raw, &keys)
		if len(keys) == 0 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		for _, k := range keys {
			kv, err := a.c.Do(ctx, a.c.B().Blpop().Key(a.topic+"_"+k).Timeout(0.05).Build()).AsStrSlice()
			if err != nil || len(kv) != 2 {
				continue
			}
			id, err := idOf(kv[1])
			if err != nil {
				t.Errorf("%s popped a bad entry: %v", a.uid, err)
				continue
			}
			a.mu.Lock()
			a.got[id]++
			a.mu.Unlock()
			_ = a.c.Do(ctx, a.c.B().Hset().Key(recipkey.LastAccessMap).FieldValue().FieldValue(a.uid, recipkey.FormatAccess(time.Now())).Build()).Error()
			field := a.uid + "_" + k
			if n, err := a.c.Do(ctx, a.c.B().Hget().Key(recipkey.PendingMap).Field(field).Build()).AsInt64(); err == nil && n >= 1 {
				_ = a.c.Do(ctx, a.c.B().Hset().Key(recipkey.PendingMap).FieldValue().FieldValue(field, strconv.FormatInt(n-1, 10)).Build()).Error()
			}
		}
	}
}

func (a *acapyInstance) count() (ids, total int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range a.got {
		total += n
	}
	return len(a.got), total
}

func TestRelayTwoInstancesStandalone(t *testing.T) {
	t.Parallel()
	testRelayTwoInstances(t, redistest.Standalone(t).URL(), false)
}

func TestRelayTwoInstancesCluster(t *testing.T) {
	t.Parallel()
	testRelayTwoInstances(t, redistest.Cluster(t, 3).URL(), true)
}

// testRelayTwoInstances: two ACA-Py instances share ten recipient keys; every message reaches
// exactly one of them, and after one goes silent for 15 s its keys, with the messages queued for
// them meanwhile, move to the other.
func testRelayTwoInstances(t *testing.T, url string, cluster bool) {
	c := client(t, url)
	if cluster {
		if _, err := recipkey.Place(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	a := runACAPy(t, c, "uid-a", "acapy_inbound")
	b := runACAPy(t, c, "uid-b", "acapy_inbound")
	r := startRelay(t, url, "acapy")
	keys := make([]string, 10)
	for i := range keys {
		keys[i] = fmt.Sprintf("Key%02dH3C2AVvLMv6gmMNam3uVAjZpfk", i)
	}
	send := func(from, to int) {
		for id := from; id < to; id++ {
			if code, reason, _ := r.post(t, packed([]string{keys[id%len(keys)]}, id, "")); code != 200 {
				t.Fatalf("message %d: %d %s", id, code, reason)
			}
		}
	}
	received := func() (int, int) {
		ia, na := a.count()
		ib, nb := b.count()
		return ia + ib, na + nb
	}

	// As in the reference, an instance that has never popped counts as stale: the first message
	// of each key is sent alone, so that both instances stamp their last access before the burst.
	for id := range len(keys) {
		send(id, id+1)
		eventually(t, 10*time.Second, "a first message popped", func() bool { _, n := received(); return n > id })
	}
	send(len(keys), 200)
	eventually(t, 20*time.Second, "200 messages popped", func() bool { _, n := received(); return n >= 200 })
	if ia, _ := a.count(); ia == 0 {
		t.Fatal("instance a got no keys")
	}
	if ib, _ := b.count(); ib == 0 {
		t.Fatal("instance b got no keys")
	}

	// a goes silent. Messages keep coming for all ten keys for 18 s; once a has been silent
	// for 15 s, the next message for one of its keys moves all of them to b.
	a.silence()
	_, fromA := a.count()
	deadline := time.Now().Add(18 * time.Second)
	id := 200
	for time.Now().Before(deadline) {
		send(id, id+5)
		id += 5
		time.Sleep(300 * time.Millisecond)
	}
	eventually(t, 30*time.Second, "every message popped", func() bool { _, n := received(); return n >= id })
	time.Sleep(500 * time.Millisecond) // a duplicate would show up now
	distinct, total := received()
	if distinct != id || total != id {
		t.Fatalf("%d messages sent, %d distinct and %d in all popped: lost or duplicated", id, distinct, total)
	}
	if _, n := a.count(); n != fromA {
		t.Fatalf("the silent instance popped %d more", n-fromA)
	}
	owners, _ := c.Do(context.Background(), c.B().Hgetall().Key(recipkey.KeyUIDMap).Build()).AsStrMap()
	for _, k := range keys {
		if owners[k] != "uid-b" {
			t.Errorf("key %s still assigned to %s", k, owners[k])
		}
	}
	t.Logf("%d messages: %d popped by a before it went silent, %d by b", id, fromA, id-fromA)
}

// TestDeliverMediatorMode: with HERALD_MEDIATOR_MODE=true, `herald deliver` queues a packed
// outbound message on <prefix>_outbound_<recipient key> in the plugin's mediator format, with
// the relay's bookkeeping, and still POSTs the entries that are not packed messages.
func TestDeliverMediatorMode(t *testing.T) {
	t.Parallel()
	url := redistest.Standalone(t).URL()
	c := client(t, url)
	v := loadVectors(t)
	rv := loadRelayVectors(t)
	register(t, c, "uid-1")
	recv := newReceiver(t, 20)
	keys := fill(t, c, "acapy", recv, 0, 10)
	if err := c.Do(context.Background(), c.B().Rpush().Key(keys.Queue).Element(v.Outbound[0].Entry).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	fill(t, c, "acapy", recv, 10, 10)

	statusPort := freePort(t)
	start(t, append(referenceEnv(url, "acapy", statusPort, "k"), "HERALD_MEDIATOR_MODE=true"), "deliver")
	if !recv.WaitAll(15 * time.Second) {
		got, missing, dup := recv.Tally()
		t.Fatalf("webhooks: %d received, %d missing, %d duplicated", got, missing, dup)
	}
	list := strings.Replace(rv.Inbound[0].List, "acapy_inbound_", "acapy_outbound_", 1)
	eventually(t, 10*time.Second, "the mediator entry", func() bool { return llen(t, c, list) == 1 })
	got, _ := c.Do(context.Background(), c.B().Lindex().Key(list).Index(0).Build()).ToString()
	if want := strings.Replace(rv.Inbound[0].Entry, `, "transport_type": "http"`, "", 1); got != want {
		t.Fatalf("mediator entry\n got %s\nwant %s", got, want)
	}
	key := strings.TrimPrefix(list, "acapy_outbound_")
	if n, _ := c.Do(context.Background(), c.B().Hget().Key(recipkey.PendingMap).Field("uid-1_"+key).Build()).AsInt64(); n != 1 {
		t.Errorf("pending count %d, want 1", n)
	}
	eventually(t, 5*time.Second, "an empty queue", func() bool { return llen(t, c, keys.Queue) == 0 })
}
