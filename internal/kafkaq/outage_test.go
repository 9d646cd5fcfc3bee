package kafkaq

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/kafkaq/kafkatest"
	"github.com/heraldhq/herald/internal/proctest"
	"github.com/twmb/franz-go/pkg/kgo"
)

// countingSink counts deliveries per payload, taking a little time over each so that it falls
// behind the producer and holds messages when the broker goes.
type countingSink struct {
	mu   sync.Mutex
	seen map[string]int
	n    atomic.Int64
}

func (s *countingSink) Deliver(m *engine.Message) engine.Result {
	time.Sleep(10 * time.Millisecond)
	s.mu.Lock()
	s.seen[string(m.Payload)]++
	s.mu.Unlock()
	s.n.Add(1)
	return engine.Result{}
}

// healthObserver keeps what the pipeline last said of its source, and when it first said the
// source failed.
type healthObserver struct {
	engine.NopObserver
	mu        sync.Mutex
	last      error
	calls     int
	firstFail time.Time
}

func (o *healthObserver) SourceHealth(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.last = err
	o.calls++
	if err != nil && o.firstFail.IsZero() {
		o.firstFail = time.Now()
	}
}

func (o *healthObserver) state() (last error, calls int, firstFail time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last, o.calls, o.firstFail
}

// TestConnectionLoss runs a pipeline over a Queue while a producer writes 2000 entries, and
// restarts the broker with its data after three seconds down in the middle: the pipeline reports
// the source unhealthy within a couple of seconds of the broker going and healthy once it is
// back, every entry is delivered, and every settlement is committed in the end, so that a new
// consumer of the group finds nothing left.
func TestConnectionLoss(t *testing.T) {
	t.Parallel()
	connectionLoss(t, 3*time.Second)
}

// TestConnectionLossBeyondSession is TestConnectionLoss with an outage longer than the group's
// session: the consumer loses its partition and, once back, fetches again from the committed
// offset what it still holds or has settled.
func TestConnectionLossBeyondSession(t *testing.T) {
	if testing.Short() {
		t.Skip("an outage of 8 s and the rejoin after it")
	}
	t.Parallel()
	connectionLoss(t, 8*time.Second)
}

func connectionLoss(t *testing.T, down time.Duration) {
	const n, perBatch = 2000, 20 // produced at about 500 a second, delivered at 400
	const topic = "herald-outage"
	o := Options{Topic: topic, RetryTopic: topic + ".retry", DeadTopic: topic + ".dead", Group: "deliver",
		Instance: "outage", EncodeDead: acapy.EncodeDead}
	c := kafkatest.Start(t, o.Topic, o.RetryTopic, o.DeadTopic)
	o.Seeds = c.Seeds()

	q, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	sink := &countingSink{seen: map[string]int{}}
	obs := &healthObserver{}
	p := &engine.Pipeline{Source: q, Decode: acapy.DecodeOutbound, Sink: sink, Observer: obs,
		Policy: engine.RetryPolicy{MaxRetries: 3, Interval: 1}, Workers: 4, Batch: 32, DrainTimeout: 5 * time.Second,
		Log: proctest.Log(t)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() { _ = p.Run(ctx); close(ran) }()
	defer func() { cancel(); <-ran }() // the pipeline logs to t, which must outlive it

	// The producer writes batches at a steady pace, each until the broker acknowledges it, so
	// that producing spans the outage and every entry is stored in the end.
	producer, err := kgo.NewClient(kgo.SeedBrokers(o.Seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	var produced atomic.Int64
	produceErr := make(chan error, 1)
	go func() {
		defer close(produceErr)
		for i := 0; i < n; i += perBatch {
			recs := make([]*kgo.Record, 0, perBatch)
			for j := i; j < i+perBatch; j++ {
				recs = append(recs, &kgo.Record{Topic: topic, Value: acapy.AppendOutbound(nil, "http://receiver/", nil, enginetest.Body(j))})
			}
			for {
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				err := producer.ProduceSync(pctx, recs...).FirstErr()
				cancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil || errors.Is(err, kgo.ErrClientClosed) {
					produceErr <- err
					return
				}
			}
			produced.Add(perBatch)
			time.Sleep(40 * time.Millisecond)
		}
	}()

	waitFor(t, 20*time.Second, "half the entries produced", func() bool { return produced.Load() >= n/2 })
	c.Stop()
	stopped := time.Now()
	q.mu.Lock()
	held := len(q.held)
	q.mu.Unlock()
	t.Logf("broker stopped with %d produced, %d delivered, %d held", produced.Load(), sink.n.Load(), held)
	if held == 0 {
		t.Error("the consumer held nothing when the broker stopped: the test does not settle across an outage")
	}
	time.Sleep(down)
	last, _, firstFail := obs.state()
	switch {
	case firstFail.IsZero() || last == nil:
		t.Errorf("%s into the outage the source's health is %v (first failure at %v)", down, last, firstFail)
	case firstFail.Before(stopped):
		t.Errorf("the source failed before the outage: %v", last)
	case firstFail.Sub(stopped) > 2500*time.Millisecond:
		t.Errorf("the outage was reported %s after it began", firstFail.Sub(stopped))
	default:
		t.Logf("outage reported after %s: %v", firstFail.Sub(stopped).Round(time.Millisecond), last)
	}
	c.Restart()
	restarted := time.Now()

	waitFor(t, 40*time.Second, "every entry delivered", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return len(sink.seen) == n
	})
	t.Logf("all delivered %s after the restart, %d deliveries for %d entries",
		time.Since(restarted).Round(time.Millisecond), sink.n.Load(), n)
	// Healthy again: a report made after everything was delivered says so.
	_, calls, _ := obs.state()
	waitFor(t, 5*time.Second, "the source reported healthy", func() bool {
		last, now, _ := obs.state()
		return now > calls && last == nil
	})
	if err := <-produceErr; err != nil {
		t.Fatalf("producing: %v", err)
	}
	cancel()
	<-ran

	flushedNothingBack(t, q, o, 10*time.Second, "settled entries")
}

// flushedNothingBack commits what q owes (within d), closes it, and checks that a new consumer of
// the group is handed none of what was settled (what names it in the failure).
func flushedNothingBack(t *testing.T, q *Queue, o Options, d time.Duration, what string) {
	t.Helper()
	fctx, fcancel := context.WithTimeout(context.Background(), d)
	defer fcancel()
	if err := q.Flush(fctx); err != nil {
		t.Fatalf("flushing the commits owed since the outage: %v", err)
	}
	q.Close()
	again, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		ms, err := again.Take(context.Background(), nil, 10)
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("taking after the flush: %v", err)
		}
		if len(ms) > 0 {
			t.Fatalf("%d %s came back to a new consumer, the first %q", len(ms), what, ms[0].Raw)
		}
	}
}

// TestAckAfterCommitFailure settles messages while no broker answers: Ack succeeds at once,
// and the commits it owes go out once the broker is back.
func TestAckAfterCommitFailure(t *testing.T) {
	t.Parallel()
	const topic = "herald-ack-outage"
	o := Options{Topic: topic, RetryTopic: topic + ".retry", DeadTopic: topic + ".dead", Group: "deliver",
		Instance: "ack", EncodeDead: acapy.EncodeDead}
	c := kafkatest.Start(t, o.Topic, o.RetryTopic, o.DeadTopic)
	o.Seeds = c.Seeds()
	producer, err := kgo.NewClient(kgo.SeedBrokers(o.Seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	var recs []*kgo.Record
	for i := range 10 {
		recs = append(recs, &kgo.Record{Topic: topic, Value: acapy.AppendOutbound(nil, "http://receiver/", nil, enginetest.Body(i))})
	}
	if err := producer.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	q, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var held []*engine.Message
	for deadline := time.Now().Add(10 * time.Second); len(held) < 10 && time.Now().Before(deadline); {
		if held, err = q.Take(context.Background(), held, 10-len(held)); err != nil {
			t.Fatalf("take: %v", err)
		}
	}
	if len(held) != 10 {
		t.Fatalf("took %d of 10", len(held))
	}

	c.Stop()
	for _, m := range held {
		if err := q.Ack(context.Background(), m); err != nil {
			t.Fatalf("ack with the broker down: %v", err)
		}
	}
	if err := q.Ack(context.Background(), held[0]); err == nil {
		t.Error("a second ack of a settled message succeeded")
	}
	fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Second)
	err = q.Flush(fctx)
	fcancel()
	if err == nil {
		t.Fatal("offsets committed with the broker down")
	}
	t.Logf("flush while down: %v", err)
	var terr error
	for deadline := time.Now().Add(3 * time.Second); terr == nil && time.Now().Before(deadline); {
		_, terr = q.Take(context.Background(), nil, 1)
	}
	if terr == nil {
		t.Error("Take reported no error with the broker down")
	}

	c.Restart()
	flushedNothingBack(t, q, o, 15*time.Second, "entries acknowledged during the outage")
}

func waitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
	}
}

// TestRefetchSkipsWhatWasHandedOut feeds track what a consumer sees when it gets its partition
// back after losing it: the records from the committed offset on, again. Those it holds or has
// settled are not handed out a second time, and settling the ones it holds moves the offset to
// commit past all of them.
func TestRefetchSkipsWhatWasHandedOut(t *testing.T) {
	q := &Queue{kick: make(chan struct{}, 1), held: map[uint64]*taken{}, parts: map[partition]*partState{}}
	rec := func(off int64) *kgo.Record { return &kgo.Record{Topic: "t", Offset: off, LeaderEpoch: 1} }
	var first []*taken
	for off := range int64(5) {
		first = append(first, q.track(rec(off)))
	}
	ack := func(tk *taken) {
		t.Helper()
		if err := q.Ack(context.Background(), &engine.Message{Token: tk.id}); err != nil {
			t.Fatal(err)
		}
	}
	ack(first[0])
	ack(first[1]) // settled, so 2 is the offset to commit; the consumer then loses the partition

	for off := range int64(5) { // fetched again from the committed offset, say 0
		if tk := q.track(rec(off)); tk != nil {
			t.Fatalf("offset %d handed out again while held or settled", off)
		}
	}
	late := q.track(rec(5))
	if late == nil {
		t.Fatal("a new offset was not handed out")
	}
	for _, tk := range append(first[2:], late) {
		ack(tk)
	}
	want := map[string]map[int32]kgo.EpochOffset{"t": {0: {Epoch: 1, Offset: 6}}}
	if got := q.uncommittedLocked(); !reflect.DeepEqual(got, want) {
		t.Fatalf("to commit: %v, want %v", got, want)
	}
	if len(q.held) != 0 || len(q.parts[partition{"t", 0}].taken) != 0 {
		t.Fatalf("still held: %d, still taken: %v", len(q.held), q.parts[partition{"t", 0}].taken)
	}
}
