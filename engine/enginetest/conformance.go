// Package enginetest is the conformance suite of engine.Source and engine.Publisher: every broker
// adapter runs it against a real server, so that "at least once" means the same thing whatever
// the broker. A test of an adapter gives Run a factory of fresh queues; Run checks ordering,
// acknowledgment, redelivery after a crash, retry with delay, dead-lettering, release and
// backpressure. RunPublisher checks a Publisher's order, keys and buffer ownership.
package enginetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
)

// Queue is one fresh queue of the broker under test.
type Queue struct {
	// Produce appends entries to the queue, in order. Entry i carries Body(i) as its payload.
	Produce func(t testing.TB, entries [][]byte)
	// Entry builds the broker's entry for a payload (what a producer would enqueue).
	Entry func(payload []byte) []byte
	// Decode reads a taken message's payload and retry count (the entry format's decoder; the
	// suite applies engine.Decode's rule for the Source's own count).
	Decode engine.Decoder
	// Open starts a consumer as the service runs it, with whatever background work its Source
	// needs. crash ends it the way a killed process ends: nothing settled, nothing released, no
	// acknowledgment still buffered flushed.
	Open func(t testing.TB) (src engine.Source, crash func())
	// Dead lists what was dead-lettered: the original entries and their reasons.
	Dead func(t testing.TB) []DeadEntry
	// Ordered: the broker hands one queue's messages out in the order they were produced.
	Ordered bool
	// Redeliver bounds how long after a crash its unsettled messages come back.
	Redeliver time.Duration
}

// DeadEntry is one dead-lettered message as the broker keeps it.
type DeadEntry struct {
	Raw    []byte
	Reason string
}

// Body is the payload of the i-th message a suite test produces.
func Body(i int) []byte { return fmt.Appendf(nil, `{"n": %d}`, i) }

func bodyIndex(t testing.TB, q *Queue, m *engine.Message) int {
	t.Helper()
	if err := engine.Decode(q.Decode, m); err != nil {
		t.Fatalf("a taken message does not decode: %v (%q)", err, m.Raw)
	}
	var n int
	if _, err := fmt.Sscanf(string(m.Payload), `{"n": %d}`, &n); err != nil {
		t.Fatalf("unexpected payload %q", m.Payload)
	}
	return n
}

// Run runs the suite, its tests in parallel; fresh gives a new, empty queue each time it is
// called (queues of one broker must not share keys, subjects or topics).
func Run(t *testing.T, fresh func(t *testing.T) *Queue) {
	for _, tc := range []struct {
		name string
		test func(*testing.T, *Queue)
	}{
		{"ordered_and_acknowledged_once", orderedAndAcked},
		{"crash_redelivers_unsettled", crashRedelivers},
		{"retry_after_delay", retryAfterDelay},
		{"dead_letter_with_reason", deadLetter},
		{"release_goes_back_first", releaseFirst},
		{"backpressure_bounds_what_is_taken", backpressure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.test(t, fresh(t))
		})
	}
}

func produce(t testing.TB, q *Queue, from, to int) {
	entries := make([][]byte, 0, to-from)
	for i := from; i < to; i++ {
		entries = append(entries, q.Entry(Body(i)))
	}
	q.Produce(t, entries)
}

// take takes until it has n messages or until d passes.
func take(t testing.TB, src engine.Source, n int, d time.Duration) []*engine.Message {
	t.Helper()
	ctx := context.Background()
	var got []*engine.Message
	deadline := time.Now().Add(d)
	for len(got) < n && time.Now().Before(deadline) {
		var err error
		if got, err = src.Take(ctx, got, n-len(got)); err != nil {
			t.Fatalf("take: %v", err)
		}
	}
	return got
}

// takeAcking takes n messages, acknowledging each batch as it comes (a broker with a prefetch
// window sends no more while its window is full), and returns their indexes in the order taken.
func takeAcking(t testing.TB, q *Queue, src engine.Source, n int, d time.Duration) []int {
	t.Helper()
	var idx []int
	deadline := time.Now().Add(d)
	for len(idx) < n && time.Now().Before(deadline) {
		got := take(t, src, min(n-len(idx), 32), time.Until(deadline))
		for _, m := range got {
			idx = append(idx, bodyIndex(t, q, m))
		}
		ackAll(t, src, got)
	}
	return idx
}

// ackAll acknowledges ms and recycles them.
func ackAll(t testing.TB, src engine.Source, ms []*engine.Message) {
	t.Helper()
	for _, m := range ms {
		if err := src.Ack(context.Background(), m); err != nil {
			t.Fatalf("ack: %v", err)
		}
		engine.PutMessage(m)
	}
}

// ackLinger is given to adapters that batch acknowledgments before a crash is simulated: an
// acknowledgment still in a buffer when the process dies is a redelivery, which at-least-once
// allows but these tests count.
const ackLinger = 300 * time.Millisecond

func orderedAndAcked(t *testing.T, q *Queue) {
	const n = 500
	produce(t, q, 0, n)
	src, crash := q.Open(t)
	idx := takeAcking(t, q, src, n, 20*time.Second)
	if len(idx) != n {
		t.Fatalf("took %d of %d", len(idx), n)
	}
	if q.Ordered && !slices.IsSorted(idx) {
		t.Fatalf("messages out of order: %v...", idx[:min(20, len(idx))])
	}
	slices.Sort(idx)
	if idx = slices.Compact(idx); len(idx) != n {
		t.Fatalf("%d distinct messages of %d", len(idx), n)
	}
	// Acknowledged messages never come back, even once the crashed consumer's are redelivered.
	nothingComesBack(t, q, crash, "an acknowledged message")
}

// nothingComesBack crashes a consumer that settled everything it took, once its
// acknowledgments had time to leave, and checks that another consumer is handed nothing.
func nothingComesBack(t *testing.T, q *Queue, crash func(), what string) {
	t.Helper()
	time.Sleep(ackLinger)
	crash()
	src, crash2 := q.Open(t)
	defer crash2()
	if again := take(t, src, 1, q.Redeliver+2*time.Second); len(again) != 0 {
		t.Fatalf("%s came back: %q", what, again[0].Raw)
	}
}

func crashRedelivers(t *testing.T, q *Queue) {
	const n, taken, acked = 100, 40, 10
	produce(t, q, 0, n)
	a, crashA := q.Open(t)
	held := take(t, a, taken, 10*time.Second)
	if len(held) != taken {
		t.Fatalf("took %d of %d", len(held), taken)
	}
	ackedIDs := map[int]bool{}
	for _, m := range held[:acked] {
		ackedIDs[bodyIndex(t, q, m)] = true
	}
	ackAll(t, a, held[:acked])
	time.Sleep(ackLinger)
	crashA() // holding 30 unsettled

	b, crashB := q.Open(t)
	defer crashB()
	seen := map[int]int{}
	for _, i := range takeAcking(t, q, b, n-acked, q.Redeliver+10*time.Second) {
		seen[i]++
	}
	for i := range n {
		switch {
		case ackedIDs[i] && seen[i] > 0:
			t.Errorf("message %d was acknowledged and came back", i)
		case !ackedIDs[i] && seen[i] == 0:
			t.Errorf("message %d lost after the crash", i)
		case seen[i] > 1:
			t.Errorf("message %d handed out %d times to one consumer", i, seen[i])
		}
	}
}

func retryAfterDelay(t *testing.T, q *Queue) {
	produce(t, q, 0, 1)
	src, crash := q.Open(t)
	defer crash()
	got := take(t, src, 1, 10*time.Second)
	if len(got) != 1 {
		t.Fatal("nothing to take")
	}
	bodyIndex(t, q, got[0])
	retries := got[0].Retries
	const delay = 2 * time.Second
	start := time.Now()
	if err := src.Retry(context.Background(), got[0], retries+1, delay); err != nil {
		t.Fatalf("retry: %v", err)
	}
	engine.PutMessage(got[0])
	again := take(t, src, 1, delay+5*time.Second)
	took := time.Since(start)
	if len(again) != 1 {
		t.Fatal("the retried message never came back")
	}
	if took < delay-time.Second { // brokers may round delays to whole seconds
		t.Errorf("the retried message came back after %s, before its delay of %s", took, delay)
	}
	if n := bodyIndex(t, q, again[0]); n != 0 || again[0].Retries != retries+1 {
		t.Errorf("retried message %d with retry count %d, want 0 and %d", n, again[0].Retries, retries+1)
	}
	ackAll(t, src, again)
}

func deadLetter(t *testing.T, q *Queue) {
	produce(t, q, 0, 2)
	src, crash := q.Open(t)
	got := take(t, src, 2, 10*time.Second)
	if len(got) != 2 {
		t.Fatalf("took %d of 2", len(got))
	}
	raw := append([]byte(nil), got[0].Raw...)
	if err := src.DeadLetter(context.Background(), got[0], engine.Failure{Reason: "conformance: given up", Status: 410}); err != nil {
		t.Fatalf("dead-letter: %v", err)
	}
	engine.PutMessage(got[0])
	ackAll(t, src, got[1:])
	dead := q.Dead(t)
	if len(dead) != 1 || string(dead[0].Raw) != string(raw) || dead[0].Reason != "conformance: given up" {
		t.Fatalf("dead-letter list: %+v, want the original entry with its reason", dead)
	}
	nothingComesBack(t, q, crash, "a dead-lettered or acknowledged message")
}

// releaseFirst: released messages are handed out again, none lost, the released ones in their
// order. (Whether they come before messages a prefetch window already holds is the broker's.)
func releaseFirst(t *testing.T, q *Queue) {
	produce(t, q, 0, 5)
	src, crash := q.Open(t)
	defer crash()
	got := take(t, src, 3, 10*time.Second)
	if len(got) != 3 {
		t.Fatalf("took %d of 3", len(got))
	}
	var released []int
	for _, m := range got {
		released = append(released, bodyIndex(t, q, m))
	}
	if err := src.Release(context.Background(), got); err != nil {
		t.Fatalf("release: %v", err)
	}
	for _, m := range got {
		engine.PutMessage(m)
	}
	idx := takeAcking(t, q, src, 5, 10*time.Second)
	all := slices.Clone(idx)
	slices.Sort(all)
	if !slices.Equal(all, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("after release: %v, want each of 0-4 once", idx)
	}
	if q.Ordered {
		var order []int
		for _, i := range idx {
			if slices.Contains(released, i) {
				order = append(order, i)
			}
		}
		if !slices.Equal(order, released) {
			t.Fatalf("released %v came back as %v", released, order)
		}
	}
}

// blockingSink holds every delivery until open is closed, counting them.
type blockingSink struct {
	open      chan struct{}
	mu        sync.Mutex
	delivered map[string]int
}

func (s *blockingSink) Deliver(m *engine.Message) engine.Result {
	<-s.open
	s.mu.Lock()
	s.delivered[string(m.Payload)]++
	s.mu.Unlock()
	return engine.Result{}
}

// countingObserver counts what the pipeline took and settled.
type countingObserver struct {
	engine.NopObserver
	taken, settled atomic.Int64
}

func (o *countingObserver) Taken(n int)                           { o.taken.Add(int64(n)) }
func (o *countingObserver) Settled(engine.Outcome, time.Duration) { o.settled.Add(1) }

// backpressure runs the engine's pipeline over the Source into a sink that stops answering: what
// the pipeline takes stays bounded by its workers and batches (the rest waits in the broker, not
// in memory), and once the sink answers again every message is delivered.
func backpressure(t *testing.T, q *Queue) {
	const n, workers, batch = 2000, 8, 16
	produce(t, q, 0, n)
	src, crash := q.Open(t)
	defer crash()
	sink := &blockingSink{open: make(chan struct{}), delivered: map[string]int{}}
	obs := &countingObserver{}
	p := &engine.Pipeline{Source: src, Sink: sink, Observer: obs, Workers: workers, Batch: batch,
		Decode:       func(m *engine.Message) error { return q.Decode(m) },
		Policy:       engine.RetryPolicy{MaxRetries: 1, Interval: 1},
		DrainTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()

	// The pipeline holds at most one message per worker and two batches read ahead.
	const bound = workers + 2*batch
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if got := obs.taken.Load(); got > bound {
			t.Fatalf("with the sink stalled the pipeline took %d messages, more than %d", got, bound)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if obs.taken.Load() == 0 {
		t.Fatal("the pipeline took nothing")
	}
	close(sink.open)
	// Distinct deliveries are counted, not settlements: a broker may redeliver what the stalled
	// workers held once its ack wait passed, and those duplicates settle too.
	distinct := func() int {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return len(sink.delivered)
	}
	for deadline = time.Now().Add(30 * time.Second); time.Now().Before(deadline) && distinct() < n; {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for i := range n {
		if sink.delivered[string(Body(i))] == 0 {
			t.Fatalf("message %d not delivered after the sink recovered (%d of %d settled)", i, obs.settled.Load(), n)
		}
	}
}

// Crash turns stop, which ends a consumer the way a killed process ends, into the crash function
// Open returns: it runs once, and at the end of t if the test did not call it.
func Crash(t testing.TB, stop func()) func() {
	var once sync.Once
	crash := func() { once.Do(stop) }
	t.Cleanup(crash)
	return crash
}
