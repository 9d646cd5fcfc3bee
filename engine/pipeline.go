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
	Source   Source
	Decode   Decoder
	Sink     Sink
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

	work := make(chan *Message, batch)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				p.handle(settleCtx, m)
			}
		}()
	}

	p.takeLoop(ctx, work, batch)

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
	close(work)
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

// takeLoop feeds work until ctx is cancelled. Because work is small and the workers pull from it,
// a slow sink stops the taking: backpressure instead of memory.
func (p *Pipeline) takeLoop(ctx context.Context, work chan<- *Message, batch int) {
	buf := make([]*Message, 0, batch)
	var backoff time.Duration
	for ctx.Err() == nil {
		var err error
		buf, err = p.Source.Take(ctx, buf[:0], batch)
		p.Observer.SourceHealth(err)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			backoff = nextBackoff(backoff)
			p.Log.Warn("taking from the source failed; backing off", "err", err, "retry_in", backoff)
			sleepCtx(ctx, backoff)
			continue
		}
		backoff = 0
		if len(buf) == 0 {
			continue
		}
		p.Observer.Taken(len(buf))
		for i, m := range buf {
			select {
			case work <- m:
			case <-ctx.Done():
				// Unsent messages go back in one call; the ones already handed over are
				// released by Run from the channel or delivered by the workers.
				rest := buf[i:]
				if err := p.Source.Release(context.Background(), rest); err != nil {
					p.Log.Error("could not release unstarted messages; they return when this instance's lease expires",
						"count", len(rest), "err", err)
				}
				for _, m := range rest {
					p.Observer.Settled(Released, sinceTaken(m))
					PutMessage(m)
				}
				return
			}
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
	start := time.Now()
	r := p.Sink.Deliver(m)
	p.Observer.Attempted(r, time.Since(start))
	switch {
	case r.Err == nil:
		p.settle(ctx, m, Delivered, 0, 0, Failure{})
	case r.Permanent:
		p.settle(ctx, m, DeadLettered, 0, 0, Failure{Reason: r.Err.Error(), Status: r.Status})
	case m.Retries < p.Policy.MaxRetries:
		n := m.Retries + 1
		p.settle(ctx, m, Retried, n, p.Policy.Delay(n), Failure{})
	case p.Policy.DropExhausted:
		p.Log.Error("exceeded max retries; dropping as configured", "url", string(m.URL), "err", r.Err)
		p.settle(ctx, m, Dropped, 0, 0, Failure{})
	default:
		p.settle(ctx, m, DeadLettered, 0, 0, Failure{
			Reason: "exceeded max retries: " + r.Err.Error(), Status: r.Status,
		})
	}
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
		sleepCtx(ctx, backoff)
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

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
