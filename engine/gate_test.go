package engine_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
)

// retryLog records how each message was retried.
type retryLog struct {
	*enginetest.Memory
	mu    sync.Mutex
	calls map[string][2]int64 // payload -> retries, delay
}

func (r *retryLog) Retry(ctx context.Context, m *engine.Message, retries int, delay time.Duration) error {
	r.mu.Lock()
	r.calls[string(m.Raw)] = [2]int64{int64(retries), int64(delay)}
	r.mu.Unlock()
	return r.Memory.Retry(ctx, m, retries, delay)
}

// testGate defers "defer", refuses "open" as a failed attempt, and turns the 410 of "gone"
// into a permanent failure.
type testGate struct{}

func (testGate) Admit(m *engine.Message) (engine.Result, bool) {
	switch string(m.Payload) {
	case "defer":
		return engine.Result{Deferred: true, RetryAfter: 3 * time.Second}, false
	case "open":
		return engine.Result{Err: errors.New("circuit open")}, false
	}
	return engine.Result{}, true
}

func (testGate) Done(m *engine.Message, r engine.Result) engine.Result {
	if r.Status == 410 {
		return engine.Result{Err: errors.New("gone"), Status: 410, Permanent: true}
	}
	return r
}

// plainSink is a Sink without loops of its own: the pipeline's workers call it.
type plainSink struct {
	deliver func(*engine.Message) engine.Result
}

func (s plainSink) Deliver(m *engine.Message) engine.Result { return s.deliver(m) }

// TestGate: through the worker pipeline and through an AsyncSink's feed, a deferred message is
// retried after the Gate's wait without counting a retry, a refused one counts one on the
// policy's schedule, Done's verdict settles the message, and a receiver's Retry-After replaces
// the policy's delay. Nothing the Gate held back reaches the sink.
func TestGate(t *testing.T) {
	deliver := func(sent *sync.Map) func(m *engine.Message) engine.Result {
		return func(m *engine.Message) engine.Result {
			sent.Store(string(m.Payload), true)
			switch string(m.Payload) {
			case "gone":
				return engine.Result{Err: errors.New("410"), Status: 410}
			case "busy":
				return engine.Result{Err: errors.New("429"), Status: 429, RetryAfter: 7 * time.Second}
			}
			return engine.Result{Status: 200}
		}
	}
	for _, async := range []bool{false, true} {
		var sent sync.Map
		src := &retryLog{Memory: enginetest.NewMemory([]byte("defer"), []byte("open"), []byte("gone"), []byte("busy"), []byte("ok")),
			calls: map[string][2]int64{}}
		var sink engine.Sink = plainSink{deliver(&sent)}
		if async {
			sink = &asyncSink{deliver: deliver(&sent)}
		}
		p := asyncPipeline(src, nil)
		p.Source, p.Sink, p.Gate = src, sink, testGate{}
		p.Policy = engine.RetryPolicy{MaxRetries: 5, Interval: 5, Backoff: 0.25}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = p.Run(ctx); close(done) }()
		deadline := time.Now().Add(10 * time.Second)
		for src.Settled() < 5 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		<-done
		src.mu.Lock()
		if c := src.calls["defer"]; c != [2]int64{0, int64(3 * time.Second)} {
			t.Errorf("async %v: deferred message retried as %v, want retries 0 after 3s", async, c)
		}
		if c := src.calls["open"]; c != [2]int64{1, int64(5 * time.Second)} {
			t.Errorf("async %v: refused message retried as %v, want retry 1 after the policy's 5s", async, c)
		}
		if c := src.calls["busy"]; c != [2]int64{1, int64(7 * time.Second)} {
			t.Errorf("async %v: 429 retried as %v, want retry 1 after Retry-After's 7s", async, c)
		}
		src.mu.Unlock()
		if src.Dead["gone"] != "gone" || src.Acked["ok"] != 1 {
			t.Errorf("async %v: gone dead-lettered %q, ok acked %d", async, src.Dead["gone"], src.Acked["ok"])
		}
		for _, held := range []string{"defer", "open"} {
			if _, ok := sent.Load(held); ok {
				t.Errorf("async %v: %q reached the sink", async, held)
			}
		}
	}
}
