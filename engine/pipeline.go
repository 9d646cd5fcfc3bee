package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Pipeline moves messages from a Source through a Decoder to a Sink with a fixed number of
// concurrent deliveries, and settles every message it took: acked, retried, dead-lettered,
// dropped, or released back to the queue on shutdown.
type Pipeline struct {
	Source Source
	Decode Decoder
	Sink   Sink
	// Gate, when set, admits each delivery and sees how it ended (see Gate).
	Gate     Gate
	Policy   RetryPolicy
	Observer Observer
	Log      *slog.Logger

	// Workers is the number of deliveries in flight at once.
	Workers int
	// Batch is the most messages taken from the source in one call.
	Batch int
	// DrainTimeout bounds how long Run waits for started deliveries after ctx is cancelled.
	DrainTimeout time.Duration
}

// Run delivers until ctx is cancelled, then stops taking, lets started deliveries finish (at most
// DrainTimeout), releases the messages it had not started and returns. Source errors never end
// it: it backs off and tries again.
func (p *Pipeline) Run(ctx context.Context) error {
	if p.Source == nil || p.Sink == nil || p.Decode == nil {
		return errors.New("engine: pipeline needs a Source, a Decoder and a Sink")
	}
	if p.Observer == nil {
		p.Observer = NopObserver{}
	}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	workers := max(p.Workers, 1)
	batch := max(p.Batch, 1)

	// Settling uses its own context so that a shutdown does not abandon the acks of deliveries
	// that already happened; it ends once the drain deadline passes.
	settleCtx, cancelSettle := context.WithCancel(context.Background())
	defer cancelSettle()

	// The pipeline holds at most one message per worker plus two batches read ahead; room
	// counts what is left of that, so taking never outruns delivery and a stalled sink stops the
	// taking. Two batches rather than one: deliveries drain one batch while the next take is on
	// its way, and with a single batch ahead an event-loop sink ran dry in half its rounds.
	r := newRoom(workers + 2*batch)
	work := make(chan *Message, workers+2*batch)
	var wg sync.WaitGroup
	var feed *Feed
	if as, ok := p.Sink.(AsyncSink); ok {
		feed = &Feed{p: p, ctx: settleCtx, work: work, room: r}
		wg.Add(1)
		go func() {
			defer wg.Done()
			as.Serve(feed, workers)
			feed.pending.Wait()
		}()
	} else {
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for m := range work {
					p.handle(settleCtx, m)
					r.give(1)
				}
			}()
		}
	}

	p.takeLoop(ctx, work, r, batch, feed)

	// Messages still queued in work were taken but not started: give them back.
	var pending []*Message
	draining := true
	for draining {
		select {
		case m := <-work:
			pending = append(pending, m)
		default:
			draining = false
		}
	}
	if feed != nil {
		feed.close()
	} else {
		close(work)
	}
	if len(pending) > 0 {
		if err := p.Source.Release(settleCtx, pending); err != nil {
			p.Log.Error("could not release unstarted messages; they return when this instance's lease expires",
				"count", len(pending), "err", err)
		} else {
			p.Log.Info("released unstarted messages to the queue", "count", len(pending))
		}
		for _, m := range pending {
			p.Observer.Settled(Released, sinceTaken(m))
			PutMessage(m)
		}
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	drain := p.DrainTimeout
	if drain <= 0 {
		drain = 15 * time.Second
	}
	select {
	case <-done:
	case <-time.After(drain):
		p.Log.Warn("drain timeout: deliveries still running are left in flight and will be redelivered",
			"timeout", drain)
		cancelSettle()
	}
	return nil
}

// takeLoop feeds work until ctx is cancelled. Each take asks for as many messages as there is
// room for, up to batch: under load the room that frees while one take is on its way is what the
// next one fetches, so the supply keeps up with the workers however slow the round trip gets
// (on a busy machine it is the scheduler's latency, not Redis, that stretches it); when the sink
// is slow the takes shrink, and when it stalls they stop.
func (p *Pipeline) takeLoop(ctx context.Context, work chan<- *Message, r *room, batch int, feed *Feed) {
	buf := make([]*Message, 0, batch)
	var backoff time.Duration
	for ctx.Err() == nil {
		n := r.take(ctx, batch)
		if n == 0 {
			return // ctx is done
		}
		var err error
		buf, err = p.Source.Take(ctx, buf[:0], n)
		p.Observer.SourceHealth(err)
		r.give(n - len(buf))
		// What a failed take still brought is delivered; on shutdown Run releases it.
		p.dispatch(work, buf)
		if feed != nil && len(buf) > 0 {
			feed.wake(len(buf))
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = nextBackoff(backoff)
			p.Log.Warn("taking from the source failed; backing off", "err", err, "retry_in", backoff)
			Sleep(ctx, backoff)
			continue
		}
		backoff = 0
	}
}

// dispatch hands taken messages to the workers. It never blocks: room reserved a place for each.
func (p *Pipeline) dispatch(work chan<- *Message, ms []*Message) {
	if len(ms) == 0 {
		return
	}
	p.Observer.Taken(len(ms))
	for _, m := range ms {
		work <- m
	}
}

// room counts the messages the pipeline may still take.
type room struct {
	mu   sync.Mutex
	free int
	wake chan struct{}
}

func newRoom(n int) *room { return &room{free: n, wake: make(chan struct{}, 1)} }

// give returns n places.
func (r *room) give(n int) {
	if n <= 0 {
		return
	}
	r.mu.Lock()
	r.free += n
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// take reserves up to max places and returns how many, 0 only when ctx is done. It waits for
// half of max to be free, so that a slow sink's trickle of finished deliveries is not fetched one
// message per round trip. The workers cannot run dry meanwhile: with one place per worker and
// 2*max more, fewer than max/2 free places means more than max messages wait for a worker.
func (r *room) take(ctx context.Context, max int) int {
	want := (max + 1) / 2
	for {
		r.mu.Lock()
		n := min(r.free, max)
		if n >= want {
			r.free -= n
			r.mu.Unlock()
			return n
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-ctx.Done():
			return 0
		}
	}
}

// handle delivers one message and settles it.
func (p *Pipeline) handle(ctx context.Context, m *Message) {
	defer PutMessage(m)
	if err := Decode(p.Decode, m); err != nil {
		p.settle(ctx, m, DeadLettered, 0, 0, Failure{Reason: "malformed entry: " + err.Error()})
		return
	}
	if p.Gate != nil {
		if r, ok := p.Gate.Admit(m); !ok {
			o, retries, delay, f := p.outcome(m, r)
			p.settle(ctx, m, o, retries, delay, f)
			return
		}
	}
	start := time.Now()
	r := p.Sink.Deliver(m)
	if p.Gate != nil {
		r = p.Gate.Done(m, r)
	}
	p.Observer.Attempted(r, time.Since(start))
	o, retries, delay, f := p.outcome(m, r)
	p.settle(ctx, m, o, retries, delay, f)
}

// outcome decides how a delivery attempt that ended with r settles m.
func (p *Pipeline) outcome(m *Message, r Result) (o Outcome, retries int, delay time.Duration, f Failure) {
	switch {
	case r.Deferred:
		return Retried, m.Retries, r.RetryAfter, Failure{}
	case r.Err == nil:
		return Delivered, 0, 0, Failure{}
	case r.Permanent:
		return DeadLettered, 0, 0, Failure{Reason: r.Err.Error(), Status: r.Status}
	case m.Retries < p.Policy.MaxRetries:
		n := m.Retries + 1
		delay = p.Policy.Delay(n)
		if r.RetryAfter > 0 {
			delay = r.RetryAfter
		}
		return Retried, n, delay, Failure{}
	case p.Policy.DropExhausted:
		p.Log.Error("exceeded max retries; dropping as configured", "url", string(m.URL), "err", r.Err)
		return Dropped, 0, 0, Failure{}
	}
	return DeadLettered, 0, 0, Failure{Reason: "exceeded max retries: " + r.Err.Error(), Status: r.Status}
}

// settle records the outcome at the source, retrying while the source is unreachable: giving up
// would leave a delivered message in flight, which is a duplicate later but never a loss.
func (p *Pipeline) settle(ctx context.Context, m *Message, o Outcome, retries int, delay time.Duration, f Failure) {
	var backoff time.Duration
	for {
		var err error
		switch o {
		case Delivered, Dropped:
			err = p.Source.Ack(ctx, m)
		case Retried:
			err = p.Source.Retry(ctx, m, retries, delay)
		case DeadLettered:
			err = p.Source.DeadLetter(ctx, m, f)
		}
		if err == nil {
			p.Observer.Settled(o, sinceTaken(m))
			if o == DeadLettered {
				p.Log.Warn("dead-lettered", "url", string(m.URL), "reason", f.Reason, "status", f.Status)
			}
			return
		}
		p.Observer.SourceHealth(err)
		if ctx.Err() != nil {
			p.Log.Error("could not settle message before shutdown; it stays in flight and will be redelivered",
				"outcome", o.String(), "err", err)
			return
		}
		backoff = nextBackoff(backoff)
		p.Log.Warn("settling failed; retrying", "outcome", o.String(), "err", err, "retry_in", backoff)
		Sleep(ctx, backoff)
	}
}

func sinceTaken(m *Message) time.Duration {
	if m.TakenAt == 0 {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - m.TakenAt)
}

// nextBackoff doubles from 100 ms up to 5 s, so an outage costs a few wake-ups a second at most.
func nextBackoff(d time.Duration) time.Duration {
	if d <= 0 {
		return 100 * time.Millisecond
	}
	return min(2*d, 5*time.Second)
}

// Sleep waits for d, or until ctx ends; it reports whether the whole wait passed. Every service's
// backoff and polling waits go through it, so that none outlives a shutdown.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
