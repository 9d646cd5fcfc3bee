package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
)

// asyncSink serves a Feed with a goroutine per delivery (Feed.ServeEach), counting the
// deliveries in flight: the feed's contract, without an event loop.
type asyncSink struct {
	deliver  func(m *engine.Message) engine.Result
	inFlight atomic.Int64
	peak     atomic.Int64
}

func (s *asyncSink) Deliver(m *engine.Message) engine.Result { return s.deliver(m) }

func (s *asyncSink) Serve(f *engine.Feed, limit int) {
	f.ServeEach(limit, func(m *engine.Message) engine.Result {
		n := s.inFlight.Add(1)
		for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
		}
		defer s.inFlight.Add(-1)
		return s.deliver(m)
	})
}

func bodies(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%d", i)
	}
	return out
}

func asyncPipeline(src engine.Source, s *asyncSink) *engine.Pipeline {
	return &engine.Pipeline{Source: src, Sink: s, Workers: 8, Batch: 16,
		Decode: func(m *engine.Message) error {
			if string(m.Raw) == "bad" {
				return errors.New("not an entry")
			}
			m.Payload = append(m.Payload[:0], m.Raw...)
			return nil
		},
		Policy:       engine.RetryPolicy{MaxRetries: 1, Interval: 1},
		DrainTimeout: 5 * time.Second}
}

// TestAsyncSinkSettlesEverything: through an AsyncSink every message is settled exactly once,
// by its outcome, with no more deliveries in flight than the pipeline's workers.
func TestAsyncSinkSettlesEverything(t *testing.T) {
	const n = 3000
	msgs := append(bodies(n), []byte("bad"))
	src := enginetest.NewMemory(msgs...)
	s := &asyncSink{deliver: func(m *engine.Message) engine.Result {
		time.Sleep(50 * time.Microsecond)
		switch string(m.Payload) {
		case "7":
			return engine.Result{Err: errors.New("refused"), Status: 503}
		case "8":
			return engine.Result{Err: errors.New("no such scheme"), Permanent: true}
		}
		return engine.Result{Status: 200}
	}}
	p := asyncPipeline(src, s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	deadline := time.Now().Add(20 * time.Second)
	for src.Settled() < n+1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if inFlight, queued := src.Unsettled(); inFlight != 0 || queued != 0 {
		t.Fatalf("%d messages unsettled, %d still queued", inFlight, queued)
	}
	for i := range n {
		b := fmt.Sprint(i)
		switch i {
		case 7:
			if src.Retried[b] != 1 {
				t.Fatalf("message 7 failed with 503 but was retried %d times", src.Retried[b])
			}
		case 8:
			if src.Dead[b] == "" {
				t.Fatal("message 8 failed permanently but was not dead-lettered")
			}
		default:
			if src.Acked[b] != 1 {
				t.Fatalf("message %d acked %d times", i, src.Acked[b])
			}
		}
	}
	if reason := src.Dead["bad"]; reason != "malformed entry: not an entry" {
		t.Fatalf("the undecodable entry was dead-lettered with %q", reason)
	}
	if peak := s.peak.Load(); peak > 8 {
		t.Fatalf("%d deliveries in flight at once, more than the 8 workers", peak)
	}
}

// TestAsyncSinkShutdown: on shutdown the deliveries in flight finish and are settled, and what
// was taken but never started goes back to the queue. Nothing is left in between.
func TestAsyncSinkShutdown(t *testing.T) {
	src := enginetest.NewMemory(bodies(500)...)
	gate := make(chan struct{})
	s := &asyncSink{deliver: func(m *engine.Message) engine.Result {
		<-gate
		return engine.Result{Status: 200}
	}}
	p := asyncPipeline(src, s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	for s.inFlight.Load() < 8 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	time.Sleep(20 * time.Millisecond)
	close(gate)
	<-done
	inFlight, queued := src.Unsettled()
	if inFlight != 0 {
		t.Fatalf("%d messages left in flight", inFlight)
	}
	if acked := src.Settled(); acked < 8 || acked+queued != 500 {
		t.Fatalf("%d acked and %d queued of 500 (released %d)", acked, queued, src.Released)
	}
	if src.Released == 0 {
		t.Fatal("nothing was released: the read-ahead should have gone back to the queue")
	}
}
