package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// AsyncSink is a Sink that runs its own delivery loops instead of blocking one goroutine per
// delivery. A goroutine per delivery costs a park and a wake-up through the runtime's network
// poller for every answer; a loop that waits on many connections at once pays neither, which on
// a small machine is a large share of what one delivery costs.
//
// The pipeline calls Serve once, from its own goroutine, in place of starting workers.
type AsyncSink interface {
	Sink
	// Serve delivers what f hands out, at most limit at a time, and reports every delivery it
	// started to f.Done. It returns once f is closed and every started delivery was reported,
	// or soon after f.Abandoned says so.
	Serve(f *Feed, limit int)
}

// Feed is the pipeline's side of an AsyncSink: it hands out decoded messages without blocking,
// wakes the sink's loops when messages arrive, and settles what the sink reports done. Settling
// a delivered message runs inline (an ack is cheap for every Source Herald has); retries, dead
// letters and settlements that failed move to a goroutine of their own, so a loop never waits
// on a broker's round trip.
type Feed struct {
	p      *Pipeline
	ctx    context.Context
	work   chan *Message
	room   *room
	closed atomic.Bool

	mu      sync.Mutex                // serialises Subscribe
	waiters atomic.Pointer[[]*waiter] // copied on Subscribe, so that wake reads it without a lock
	pending sync.WaitGroup            // slow-path settlements still running
}

// waiter is one subscribed loop.
type waiter struct {
	hungry atomic.Bool
	wake   func()
}

func (f *Feed) loops() []*waiter {
	if w := f.waiters.Load(); w != nil {
		return *w
	}
	return nil
}

// Subscribe registers a loop's wake-up function and returns the loop's number for Idle. wake is
// called when messages arrive after the loop said it was idle, and when the feed closes; it must
// not block.
func (f *Feed) Subscribe(wake func()) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	ws := append(append([]*waiter(nil), f.loops()...), &waiter{wake: wake})
	f.waiters.Store(&ws)
	return len(ws) - 1
}

// Next returns the next message to deliver, decoded and admitted by the pipeline's Gate, or nil
// when none is waiting. open is false once the feed is closed and empty: the loop finishes what
// it started and returns. A message that cannot be decoded is dead-lettered here, and one the
// Gate holds back is settled here, never returned.
func (f *Feed) Next() (m *Message, open bool) {
	for {
		select {
		case m, open = <-f.work:
			if !open {
				return nil, false
			}
		default:
			return nil, true
		}
		if err := Decode(f.p.Decode, m); err != nil {
			f.slow(m, DeadLettered, Failure{Reason: "malformed entry: " + err.Error()}, 0, 0)
			continue
		}
		if g := f.p.Gate; g != nil {
			if r, ok := g.Admit(m); !ok {
				o, retries, delay, fail := f.p.outcome(m, r)
				f.slow(m, o, fail, retries, delay)
				continue
			}
		}
		return m, true
	}
}

// Idle tells the feed that loop i found nothing to do and is about to wait. It returns false when
// messages arrived meanwhile (call Next again); when it returns true, the loop's wake function
// is called as soon as there is work or the feed closes.
func (f *Feed) Idle(i int) bool {
	w := f.loops()[i]
	w.hungry.Store(true)
	if len(f.work) > 0 || f.closed.Load() {
		w.hungry.Store(false)
		return false
	}
	return true
}

// Abandoned reports that the pipeline stopped waiting for the sink (its drain timeout passed):
// the sink should drop what it still has in flight, unsettled, and return.
func (f *Feed) Abandoned() bool { return f.ctx.Err() != nil }

// Done settles m after its delivery ended with r, took after it started. m belongs to the feed
// again: the sink must not touch it afterwards.
func (f *Feed) Done(m *Message, r Result, took time.Duration) {
	p := f.p
	if p.Gate != nil {
		r = p.Gate.Done(m, r)
	}
	p.Observer.Attempted(r, took)
	if r.Err == nil {
		if err := p.Source.Ack(f.ctx, m); err == nil {
			p.Observer.Settled(Delivered, sinceTaken(m))
			f.finish(m)
			return
		}
		f.slow(m, Delivered, Failure{}, 0, 0)
		return
	}
	o, retries, delay, fail := p.outcome(m, r)
	f.slow(m, o, fail, retries, delay)
}

// ServeEach serves f the plain way: a goroutine per delivery calling deliver, at most limit at
// once. It is for an AsyncSink that cannot start loops of its own, and returns like Serve.
func (f *Feed) ServeEach(limit int, deliver func(*Message) Result) {
	wake := make(chan struct{}, 1)
	id := f.Subscribe(func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	slots := make(chan struct{}, limit)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		m, open := f.Next()
		if !open {
			return
		}
		if m == nil {
			if f.Idle(id) {
				<-wake
			}
			continue
		}
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			r := deliver(m)
			<-slots
			f.Done(m, r, time.Since(start))
		}()
	}
}

// slow settles m on a goroutine of its own. The room keeps their number bounded: m holds its
// place until it is settled.
func (f *Feed) slow(m *Message, o Outcome, fail Failure, retries int, delay time.Duration) {
	f.pending.Add(1)
	go func() {
		defer f.pending.Done()
		f.p.settle(f.ctx, m, o, retries, delay, fail)
		f.finish(m)
	}()
}

func (f *Feed) finish(m *Message) {
	PutMessage(m)
	f.room.give(1)
}

// wake calls the wake functions of up to n loops that said they were idle: n messages arrived, and
// waking a loop for which there is no message costs a system call and a pass through the
// scheduler for nothing. A loop left hungry is woken by the next arrival.
func (f *Feed) wake(n int) {
	for _, w := range f.loops() {
		if n <= 0 {
			return
		}
		if w.hungry.Load() && w.hungry.CompareAndSwap(true, false) {
			w.wake()
			n--
		}
	}
}

// close ends the feed: loops see open == false once the work channel is empty.
func (f *Feed) close() {
	f.closed.Store(true)
	close(f.work)
	for _, w := range f.loops() {
		w.wake()
	}
}
