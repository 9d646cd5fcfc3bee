package callbacks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/endpoint"
	"github.com/heraldhq/herald/internal/kafkaq"
	"github.com/valyala/fasthttp"
)

// processor feeds one destination from its consumer group. Events are grouped in lanes by
// Event.Key: a lane delivers its events one after the other, retrying the head until it succeeds
// or is dead-lettered, while up to Lanes lanes run at once. Offsets are committed by the queue
// only up to the oldest event not yet settled, so a crash redelivers, never skips.
type processor struct {
	dest   destination
	q      *kafkaq.Queue
	client *fasthttp.Client
	// endpoints applies HERALD_ENDPOINTS: limits, breaker, 410 and Standard Webhooks signing.
	endpoints *endpoint.Table
	opt       options
	log       *slog.Logger
	m         *metrics
	slots     chan struct{} // one per lane running
	pending   chan struct{} // one per event taken and not yet settled: bounds memory

	mu    sync.Mutex
	lanes map[string]*lane
	wg    sync.WaitGroup
}

type options struct {
	Timeout     time.Duration
	Attempts    int
	BackoffBase time.Duration
	BackoffCap  time.Duration
	Lanes       int
	now         func() time.Time
}

type lane struct{ queue []item }

type item struct {
	m *engine.Message
	e *Event
}

func newProcessor(dest destination, q *kafkaq.Queue, client *fasthttp.Client, endpoints *endpoint.Table, opt options, m *metrics, log *slog.Logger) *processor {
	if opt.now == nil {
		opt.now = time.Now
	}
	return &processor{dest: dest, q: q, client: client, endpoints: endpoints, opt: opt, m: m, log: log.With("destination", dest.group),
		slots: make(chan struct{}, opt.Lanes), pending: make(chan struct{}, 16*opt.Lanes), lanes: map[string]*lane{}}
}

// run takes events until ctx ends, then waits for the lanes to stop (an event being retried is
// left unsettled, for the next start to deliver).
func (p *processor) run(ctx context.Context) {
	defer p.wg.Wait()
	var batch []*engine.Message
	for ctx.Err() == nil {
		room := cap(p.pending) - len(p.pending)
		if room == 0 {
			select { // full: wait for a settlement
			case p.pending <- struct{}{}:
				<-p.pending
			case <-ctx.Done():
				return
			}
			continue
		}
		var err error
		batch, err = p.q.Take(ctx, batch[:0], min(room, 256))
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("reading the events failed; retrying", "err", err)
				engine.Sleep(ctx, time.Second)
			}
			continue
		}
		for _, m := range batch {
			p.m.events.WithLabelValues(p.dest.group).Inc()
			e, err := ParseEvent(m.Raw)
			if err != nil {
				reason := "malformed"
				if errors.Is(err, errNoType) {
					reason = "no_type"
				}
				p.m.skipped.WithLabelValues(p.dest.group, reason).Inc()
				p.log.Warn("skipping an event that cannot be read", "reason", reason, "err", err)
				p.settle(ctx, m, nil)
				continue
			}
			p.pending <- struct{}{}
			p.enqueue(ctx, item{m, e})
		}
	}
}

func (p *processor) enqueue(ctx context.Context, it item) {
	k := it.e.Key()
	p.mu.Lock()
	l, running := p.lanes[k]
	if !running {
		l = &lane{}
		p.lanes[k] = l
	}
	l.queue = append(l.queue, it)
	p.mu.Unlock()
	if !running {
		p.wg.Add(1)
		go p.drain(ctx, k, l)
	}
}

// drain delivers a lane's events in order, then retires the lane.
func (p *processor) drain(ctx context.Context, k string, l *lane) {
	defer p.wg.Done()
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-p.slots }()
	for {
		p.mu.Lock()
		if len(l.queue) == 0 || ctx.Err() != nil {
			delete(p.lanes, k)
			p.mu.Unlock()
			return
		}
		it := l.queue[0]
		p.mu.Unlock()
		if !p.deliver(ctx, it) {
			return // shutting down: the lane's events stay unsettled
		}
		<-p.pending
		p.mu.Lock()
		l.queue[0] = item{}
		l.queue = l.queue[1:]
		p.mu.Unlock()
	}
}

// deliver sends one event until it is accepted, needs nothing, or has used its attempts (then
// it is dead-lettered). It reports false when ctx ended first.
func (p *processor) deliver(ctx context.Context, it item) bool {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	wait := p.opt.BackoffBase
	var pauseFor time.Duration
	var sigBuf []byte
	var sigHeaders []engine.Header
	var permanent bool
	var last error
	status := 0
	for attempt := 1; attempt <= p.opt.Attempts; attempt++ {
		req.Reset()
		req.Header.SetMethod(fasthttp.MethodPost)
		req.Header.SetContentType("application/json")
		now := p.opt.now()
		send, err := p.dest.prepare(it.e, now, req)
		if err != nil {
			last = err
			break
		}
		if !send {
			p.m.skipped.WithLabelValues(p.dest.group, "not_for_destination").Inc()
			p.settle(ctx, it.m, nil)
			return true
		}
		url := req.RequestURI()
		if r, ok := p.endpoints.Acquire(url); !ok {
			if r.Permanent {
				last, status = r.Err, r.Status
				break
			}
			if r.Deferred { // a rate or concurrency limit: wait, without spending an attempt
				attempt--
				if !engine.Sleep(ctx, r.RetryAfter) {
					return false
				}
				continue
			}
			err = r.Err // the circuit is open: a failed attempt that was never sent
		} else {
			var signed bool
			if sigHeaders, sigBuf, signed = p.endpoints.SignHeaders(sigHeaders[:0], append(sigBuf[:0], it.e.ID...), url, now.Unix(), req.Body()); signed {
				for _, h := range sigHeaders {
					req.Header.SetBytesKV(h.Name, h.Value)
				}
			}
			start := time.Now()
			err = p.client.DoTimeout(req, resp, p.opt.Timeout)
			status = resp.StatusCode()
			p.m.latency.WithLabelValues(p.dest.group).Observe(time.Since(start).Seconds())
			res := engine.Result{Err: err, Status: status}
			if err == nil && (status < 200 || status >= 400) {
				res.Err = fmt.Errorf("answered %d", status)
				if endpoint.Throttled(status) {
					res.RetryAfter = endpoint.ParseRetryAfter(resp.Header.Peek("Retry-After"), time.Now())
				}
			}
			res = p.endpoints.Release(url, res)
			if res.Err == nil {
				p.m.delivered.WithLabelValues(p.dest.group).Inc()
				p.settle(ctx, it.m, nil)
				return true
			}
			// A Retry-After is the receiver saying when; a Permanent failure ends the attempts.
			err, pauseFor, permanent = res.Err, res.RetryAfter, res.Permanent
		}
		last = err
		p.m.failures.WithLabelValues(p.dest.group).Inc()
		if permanent || attempt == p.opt.Attempts {
			break
		}
		pause := wait
		if pauseFor > 0 {
			pause, pauseFor = min(pauseFor, p.opt.BackoffCap), 0
		}
		p.log.Debug("callback failed; retrying", "event", it.e.ID, "attempt", attempt, "err", err, "in", pause)
		if !engine.Sleep(ctx, pause) {
			return false
		}
		wait = min(2*wait, p.opt.BackoffCap)
	}
	p.m.deadLettered.WithLabelValues(p.dest.group).Inc()
	p.log.Warn("callback dead-lettered", "event", it.e.ID, "type", it.e.Type, "attempts", p.opt.Attempts, "err", last)
	p.settle(ctx, it.m, &engine.Failure{Reason: last.Error(), Status: status})
	return true
}

// settle acknowledges m, or dead-letters it when f is set; a failure to do so is logged and the
// event will be read again after a restart.
func (p *processor) settle(ctx context.Context, m *engine.Message, f *engine.Failure) {
	var err error
	if f == nil {
		err = p.q.Ack(ctx, m)
	} else {
		err = p.q.DeadLetter(ctx, m, *f)
	}
	if err != nil && ctx.Err() == nil {
		p.log.Warn("settling an event failed; it will be delivered again after a restart", "err", err)
	}
}

// encodeDead is the dead-letter record: why, where, when, and the event as it came.
func encodeDead(dst []byte, m *engine.Message, f engine.Failure, instance string, at time.Time) []byte {
	rec := struct {
		Reason   string          `json:"reason"`
		Status   int             `json:"status,omitempty"`
		Instance string          `json:"instance"`
		At       string          `json:"at"`
		Event    json.RawMessage `json:"event"`
	}{f.Reason, f.Status, instance, at.UTC().Format(time.RFC3339Nano), m.Raw}
	if !json.Valid(m.Raw) {
		rec.Event, _ = json.Marshal(string(m.Raw))
	}
	b, _ := json.Marshal(rec)
	return append(dst, b...)
}
