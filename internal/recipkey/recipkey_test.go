package recipkey

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

// register does what the plugin's inbound transport does at start: its uid with no keys.
func register(t *testing.T, c rueidis.Client, uid string) {
	t.Helper()
	if err := c.Do(context.Background(), c.B().Hset().Key(UIDKeysMap).FieldValue().FieldValue(uid, "W10=").Build()).Error(); err != nil {
		t.Fatal(err)
	}
}

// popped does what the plugin does after a pop: it stamps its last access.
func popped(t *testing.T, c rueidis.Client, uid string, at time.Time) {
	t.Helper()
	if err := c.Do(context.Background(), c.B().Hset().Key(LastAccessMap).FieldValue().FieldValue(uid, FormatAccess(at)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
}

func hget(t *testing.T, c rueidis.Client, key, field string) string {
	t.Helper()
	v, err := c.Do(context.Background(), c.B().Hget().Key(key).Field(field).Build()).ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		t.Fatal(err)
	}
	return v
}

// keysOf decodes uid_recip_keys_map[uid] as the plugin does.
func keysOf(t *testing.T, c rueidis.Client, uid string) string {
	t.Helper()
	b, err := base64.URLEncoding.DecodeString(hget(t, c, UIDKeysMap, uid))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestAssignRoundRobinAndPending(t *testing.T) {
	c := redistest.Client(t, redistest.Standalone(t).URL())
	a := New(c, 0)
	ctx := context.Background()
	if _, err := a.Assign(ctx, "k1"); !errors.Is(err, ErrNoInstance) {
		t.Fatalf("no instance: %v", err)
	}
	register(t, c, "uid-a")
	register(t, c, "uid-b")
	popped(t, c, "uid-a", time.Now())
	popped(t, c, "uid-b", time.Now())

	for _, tc := range []struct{ key, uid string }{{"k1", "uid-a"}, {"k2", "uid-b"}, {"k3", "uid-a"}, {"k1", "uid-a"}, {"k2", "uid-b"}} {
		if uid, err := a.Assign(ctx, tc.key); err != nil || uid != tc.uid {
			t.Fatalf("%s: %q %v, want %s", tc.key, uid, err, tc.uid)
		}
	}
	if got := keysOf(t, c, "uid-a"); got != `["k1", "k3"]` {
		t.Errorf("keys of uid-a: %s", got)
	}
	for field, want := range map[string]string{"uid-a_k1": "2", "uid-b_k2": "2", "uid-a_k3": "1"} {
		if got := hget(t, c, PendingMap, field); got != want {
			t.Errorf("pending %s = %s, want %s", field, got, want)
		}
	}
	if got := hget(t, c, KeyUIDMap, "k3"); got != "uid-a" {
		t.Errorf("recip_key_uid_map[k3] = %s", got)
	}
}

// twoInstances registers uid-a and uid-b, both just popped, and returns an Assigner whose clock
// reads *now.
func twoInstances(t *testing.T) (rueidis.Client, *Assigner, *time.Time) {
	c := redistest.Client(t, redistest.Standalone(t).URL())
	a := New(c, 15*time.Second)
	now := new(time.Time)
	*now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.Local)
	a.now = func() time.Time { return *now }
	register(t, c, "uid-a")
	register(t, c, "uid-b")
	popped(t, c, "uid-a", *now)
	popped(t, c, "uid-b", *now)
	return c, a, now
}

func TestAssignMovesKeysOfSilentInstance(t *testing.T) {
	c, a, now := twoInstances(t)
	ctx := context.Background()
	for _, k := range []string{"k1", "k2", "k3"} { // a, b, a
		if _, err := a.Assign(ctx, k); err != nil {
			t.Fatal(err)
		}
	}

	// 14 s of silence with messages pending: not yet stale.
	*now = now.Add(14 * time.Second)
	popped(t, c, "uid-b", *now)
	if uid, _ := a.Assign(ctx, "k1"); uid != "uid-a" {
		t.Fatalf("after 14 s: %s", uid)
	}
	// 15 s: every key of a moves to b with its pending count, and a is forgotten.
	*now = now.Add(time.Second)
	if uid, _ := a.Assign(ctx, "k3"); uid != "uid-b" {
		t.Fatalf("after 15 s: %s", uid)
	}
	if got := keysOf(t, c, "uid-b"); got != `["k2", "k1", "k3"]` {
		t.Errorf("keys of uid-b: %s", got)
	}
	if v := hget(t, c, UIDKeysMap, "uid-a"); v != "" {
		t.Errorf("uid-a still registered: %s", v)
	}
	for field, want := range map[string]string{"uid-b_k1": "2", "uid-b_k3": "2", "uid-a_k1": "", "uid-a_k3": ""} {
		if got := hget(t, c, PendingMap, field); got != want {
			t.Errorf("pending %s = %q, want %q", field, got, want)
		}
	}
	for _, k := range []string{"k1", "k2", "k3"} {
		if got := hget(t, c, KeyUIDMap, k); got != "uid-b" {
			t.Errorf("recip_key_uid_map[%s] = %s", k, got)
		}
	}
}

func TestAssignKeepsSilentInstanceWithNothingPending(t *testing.T) {
	c := redistest.Client(t, redistest.Standalone(t).URL())
	a := New(c, 15*time.Second)
	ctx := context.Background()
	register(t, c, "uid-a")
	register(t, c, "uid-b")
	// uid-a has never popped, but its only key has nothing pending (the count starts at 0 and
	// this message is counted after the check): the reference keeps the key where it is.
	if uid, _ := a.Assign(ctx, "k1"); uid != "uid-a" {
		t.Fatalf("first: %s", uid)
	}
	// Now a has one pending and has never popped: the next message moves its keys.
	if uid, _ := a.Assign(ctx, "k1"); uid != "uid-b" {
		t.Fatalf("second: %s", uid)
	}
}

type recorder struct{ got []string }

func (r *recorder) Deliver(m *engine.Message) engine.Result {
	r.got = append(r.got, string(m.Payload))
	return engine.Result{}
}

func TestMediatorVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "vectors", "acapy_queue_entries.json"))
	if err != nil {
		t.Fatalf("the shared test vectors must sit beside the repository: %v", err)
	}
	var v struct {
		Inbound []struct{ List, Entry string } `json:"inbound"`
		Body    string                         `json:"inbound_request_body_packed_message"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	c := redistest.Client(t, redistest.Standalone(t).URL())
	register(t, c, "uid-a")
	next := &recorder{}
	m := &Mediator{Assigner: New(c, 0), Topic: "acapy_outbound", Next: next}

	// A packed message: the plugin's mediator entry, {"payload": ...} alone, on the list of its key.
	if r := m.Deliver(&engine.Message{Payload: []byte(v.Body)}); r.Err != nil {
		t.Fatal(r.Err)
	}
	list := strings.Replace(v.Inbound[0].List, "acapy_inbound_", "acapy_outbound_", 1)
	want := strings.Replace(v.Inbound[0].Entry, `, "transport_type": "http"`, "", 1)
	got, err := c.Do(context.Background(), c.B().Lrange().Key(list).Start(0).Stop(-1).Build()).AsStrSlice()
	if err != nil || len(got) != 1 || got[0] != want {
		t.Fatalf("%s: %q %v\nwant %s", list, got, err, want)
	}
	if n := hget(t, c, PendingMap, "uid-a_"+strings.TrimPrefix(list, "acapy_outbound_")); n != "1" {
		t.Errorf("pending count %q", n)
	}

	// Not a packed message (a webhook event): delivered as usual.
	if r := m.Deliver(&engine.Message{Payload: []byte(`{"state": "active"}`)}); r.Err != nil || len(next.got) != 1 {
		t.Fatalf("webhook: %v, next got %d", r.Err, len(next.got))
	}
	// A packed message with a broken header: dead-lettered with the reason, never retried.
	r := m.Deliver(&engine.Message{Payload: []byte(`{"protected": "***"}`)})
	if r.Err == nil || !r.Permanent || !strings.Contains(r.Err.Error(), "base64") {
		t.Fatalf("broken header: %+v", r)
	}
	// No instance registered: retried later, not lost.
	_ = c.Do(context.Background(), c.B().Del().Key(UIDKeysMap, KeyUIDMap).Build()).Error()
	if r := m.Deliver(&engine.Message{Payload: []byte(v.Body)}); r.Err == nil || r.Permanent {
		t.Fatalf("no instance: %+v", r)
	}
}

func TestQueueConcurrentStandalone(t *testing.T) {
	testQueueConcurrent(t, redistest.Standalone(t).URL(), false)
}

func TestQueueConcurrentCluster(t *testing.T) {
	testQueueConcurrent(t, redistest.Cluster(t, 3).URL(), true)
}

// testQueueConcurrent: many callers at once are committed in shared batches, and every message is
// in its list exactly once, with the pending counts adding up.
func testQueueConcurrent(t *testing.T, url string, cluster bool) {
	c := redistest.Client(t, url)
	ctx := context.Background()
	if cluster {
		if _, err := Place(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	register(t, c, "uid-a")
	register(t, c, "uid-b")
	popped(t, c, "uid-a", time.Now().Add(time.Hour))
	popped(t, c, "uid-b", time.Now().Add(time.Hour))
	a := New(c, 0)
	const workers, each, keys = 32, 100, 10
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				key := fmt.Sprintf("k%d", (w+i)%keys)
				if err := a.Queue(ctx, "acapy_inbound", key, fmt.Appendf(nil, "%d-%d", w, i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	var pending int64
	for k := range keys {
		key := fmt.Sprintf("k%d", k)
		got, err := c.Do(ctx, c.B().Lrange().Key("acapy_inbound_"+key).Start(0).Stop(-1).Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range got {
			if seen[e] {
				t.Fatalf("%s queued twice", e)
			}
			seen[e] = true
		}
		uid := hget(t, c, KeyUIDMap, key)
		n, _ := strconv.ParseInt(hget(t, c, PendingMap, uid+"_"+key), 10, 64)
		if n != int64(len(got)) {
			t.Errorf("%s: %d entries, pending count %d", key, len(got), n)
		}
		pending += n
	}
	if len(seen) != workers*each || pending != workers*each {
		t.Fatalf("%d distinct entries and %d pending for %d messages", len(seen), pending, workers*each)
	}
}

// TestKeyListsStayPythonBytes: the key lists are appended to in place (only their last bytes
// re-encoded); after many appends and a move of every key, each list is still exactly
// urlsafe_b64encode(json.dumps(keys)), as the plugin writes and reads it.
func TestKeyListsStayPythonBytes(t *testing.T) {
	c, a, now := twoInstances(t)
	ctx := context.Background()
	want := map[string][]string{}
	for i := range 61 { // odd and even counts, every padding length
		key := fmt.Sprintf("did:key:z6Mk%0*d", 1+i%7, i)
		uid, err := a.Assign(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		want[uid] = append(want[uid], key)
	}
	pyList := func(keys []string) string {
		b, _ := json.Marshal(keys)
		return base64.URLEncoding.EncodeToString([]byte(strings.ReplaceAll(string(b), `","`, `", "`)))
	}
	for uid, keys := range want {
		if got := hget(t, c, UIDKeysMap, uid); got != pyList(keys) {
			t.Fatalf("%s:\n got %s\nwant %s", uid, got, pyList(keys))
		}
	}
	// uid-a goes silent with messages pending: all its keys move to uid-b, appended in order.
	*now = now.Add(20 * time.Second)
	popped(t, c, "uid-b", *now)
	if _, err := a.Assign(ctx, want["uid-a"][0]); err != nil {
		t.Fatal(err)
	}
	moved := append(append([]string{}, want["uid-b"]...), want["uid-a"]...)
	if got := hget(t, c, UIDKeysMap, "uid-b"); got != pyList(moved) {
		t.Fatalf("after the move:\n got %s\nwant %s", got, pyList(moved))
	}
	if got := hget(t, c, UIDKeysMap, "uid-a"); got != "" {
		t.Fatalf("uid-a still registered: %s", got)
	}
}
