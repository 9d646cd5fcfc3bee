package waypoint

import (
	"fmt"
	"testing"
	"time"
)

func ev(t *testing.T, wallet, state, id string, at time.Time) *Event {
	t.Helper()
	e, err := ParseEvent([]byte(fmt.Sprintf(`{"wallet_id":%q,"topic":"proofs","group_id":"g","payload":{"state":%q,"proof_id":%q}}`, wallet, state, id)), at)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestHubMatchesOnceAndForgets(t *testing.T) {
	h := NewHub(time.Minute, 100)
	a := NewWaiter("w1", "proofs", "done", "proof_id", "p1", "", time.Minute)
	b := NewWaiter("w1", "proofs", "done", "proof_id", "p1", "other-group", time.Minute)
	c := NewWaiter("w1", "proofs", "done", "proof_id", "p2", "", time.Minute)
	for _, w := range []*Waiter{a, b, c} {
		if e := h.Wait(w); e != nil {
			t.Fatal("matched an empty window")
		}
	}
	if n := h.Publish(ev(t, "w1", "done", "p1", time.Now())); n != 1 || a.ev.Load() == nil || b.ev.Load() != nil {
		t.Fatalf("publish woke %d; a %v b %v", n, a.ev.Load(), b.ev.Load())
	}
	if h.Cancel(a) {
		t.Fatal("Cancel of an answered waiter reported it still waiting")
	}
	if n := h.Publish(ev(t, "w1", "done", "p1", time.Now())); n != 0 {
		t.Fatalf("a second event woke %d", n)
	}
	if !h.Cancel(b) || !h.Cancel(c) || h.Open() != 0 || len(h.waiters) != 0 {
		t.Fatalf("after cancelling: %d open, %d keys", h.Open(), len(h.waiters))
	}
}

func TestHubReplayWindowIsBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	h := NewHub(10*time.Second, 3)
	h.now = func() time.Time { return now }
	for i := range 5 { // the first two fall out by count
		h.Publish(ev(t, "w1", "done", fmt.Sprint("p", i), now.Add(time.Duration(i-5)*time.Second)))
	}
	if h.recent.len() != 3 {
		t.Fatalf("window holds %d, want 3", h.recent.len())
	}
	for i, want := range []bool{false, false, true, true, true} {
		w := NewWaiter("w1", "proofs", "done", "proof_id", fmt.Sprint("p", i), "", time.Minute)
		if got := h.Wait(w) != nil; got != want {
			t.Errorf("p%d replayed: %v, want %v", i, got, want)
		}
		h.Cancel(w)
	}
	// look_back narrows the window: p2 is 3 s old.
	if e := h.Wait(NewWaiter("w1", "proofs", "done", "proof_id", "p2", "", 2*time.Second)); e != nil {
		t.Error("an event older than look_back was replayed")
	}
	now = now.Add(20 * time.Second) // everything expires by age
	h.Publish(ev(t, "w9", "x", "q", now))
	if h.recent.len() != 1 || len(h.perKey) != 1 {
		t.Fatalf("after expiry: %d events, %d keys", h.recent.len(), len(h.perKey))
	}
}

func TestHubCloseWakesEveryone(t *testing.T) {
	h := NewHub(0, 0)
	w := NewWaiter("w1", "proofs", "done", "proof_id", "p1", "", 0)
	h.Wait(w)
	h.Close()
	if !w.closed.Load() || h.Open() != 0 || h.Cancel(w) {
		t.Fatal("Close left the waiter waiting")
	}
	w2 := NewWaiter("w1", "proofs", "done", "proof_id", "p1", "", 0)
	if h.Wait(w2) != nil || !w2.closed.Load() {
		t.Fatal("a waiter was accepted after Close")
	}
}

// BenchmarkPublishWithManyWaiters shows an event's cost does not grow with the open streams.
func BenchmarkPublishWithManyWaiters(b *testing.B) {
	for _, n := range []int{10, 10000} {
		b.Run(fmt.Sprint(n, "-waiters"), func(b *testing.B) {
			h := NewHub(0, 0)
			for i := range n {
				h.Wait(NewWaiter(fmt.Sprint("w", i%1000), "proofs", "done", "proof_id", fmt.Sprint("p", i), "", 0))
			}
			e, _ := ParseEvent([]byte(`{"wallet_id":"w1","topic":"proofs","group_id":"g","payload":{"state":"done","proof_id":"nobody"}}`), time.Now())
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				h.Publish(e)
			}
		})
	}
}
