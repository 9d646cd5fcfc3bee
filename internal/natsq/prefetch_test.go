package natsq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/nats-io/nats.go/jetstream"
)

// prefetchQueue opens a fresh queue holding n entries, with an ack wait far beyond the test.
func prefetchQueue(t *testing.T, n int) (Options, *Queue) {
	t.Helper()
	name := fmt.Sprintf("HERALDTEST%d", rand.Uint64())
	o := Options{
		Stream: name, Subject: name + ".outbound", Consumer: "deliver",
		DeadStream: name + "_DEAD", DeadSubject: name + ".dead",
		AckWait: time.Minute, Instance: "prefetch", EncodeDead: acapy.EncodeDead,
	}
	admin := connect(t)
	dropStream(t, admin, o.Stream)
	dropStream(t, admin, o.DeadStream)
	producer, err := Open(context.Background(), admin, o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := producer.Publish(context.Background(), acapy.AppendOutbound(nil, "http://receiver/", nil, enginetest.Body(i))); err != nil {
			t.Fatal(err)
		}
	}
	return o, producer
}

// TestPrefetchBoundedAndGivenBack: a consumer holds no more than its prefetch window beyond what
// it handed out, and once the context of its takes ends it gives that window back, so that
// another consumer gets those messages at once rather than after the ack wait.
func TestPrefetchBoundedAndGivenBack(t *testing.T) {
	const n = 1000
	o, producer := prefetchQueue(t, n)
	nc := connect(t)
	a, err := Open(context.Background(), nc, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	got, err := a.Take(ctx, nil, 10)
	if err != nil || len(got) == 0 {
		t.Fatalf("take: %d messages, %v", len(got), err)
	}
	for _, m := range got {
		if err := a.Ack(ctx, m); err != nil {
			t.Fatal(err)
		}
		engine.PutMessage(m)
	}
	// The pulls are answered at once; the wait is for a loaded machine. Messages still on the
	// wire when the consumer stops would come back only after the ack wait.
	var info *jetstream.ConsumerInfo
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if info, err = producer.cons.Info(context.Background()); err != nil {
			t.Fatal(err)
		}
		if info.Delivered.Consumer >= minPrefetch || time.Now().After(deadline) {
			break
		}
	}
	if info.NumAckPending > maxPrefetch {
		t.Errorf("%d messages pending acknowledgment after a take of 10: more than the prefetch window of %d", info.NumAckPending, maxPrefetch)
	}
	t.Logf("after a take of 10: %d pending acknowledgment", info.NumAckPending)

	stop()
	b := connect(t)
	q, err := Open(context.Background(), b, o)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second) // well within the ack wait of a minute
	for len(seen) < n-len(got) && time.Now().Before(deadline) {
		ms, err := q.Take(context.Background(), nil, 64)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			seen[string(m.Raw)] = true
			if err := q.Ack(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			engine.PutMessage(m)
		}
	}
	if len(seen) != n-len(got) {
		t.Fatalf("the second consumer took %d of the %d left: the first one's prefetched messages were not given back", len(seen), n-len(got))
	}
}

// TestTakeWaitsAtMostASecond: on an empty queue Take comes back empty after about a second,
// which is what lets a pipeline notice its shutdown.
func TestTakeWaitsAtMostASecond(t *testing.T) {
	_, producer := prefetchQueue(t, 0)
	start := time.Now()
	got, err := producer.Take(context.Background(), nil, 10)
	if err != nil || len(got) != 0 {
		t.Fatalf("take from an empty queue: %d messages, %v", len(got), err)
	}
	if took := time.Since(start); took < 900*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("take from an empty queue returned after %s, want about a second", took)
	}
}
