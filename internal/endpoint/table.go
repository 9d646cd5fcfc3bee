package endpoint

import (
	"bytes"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/prometheus/client_golang/prometheus"
)

// Errors a Table settles a refused delivery with; their text is the dead-letter reason.
var (
	// ErrGone is a delivery to an endpoint that answered 410 Gone.
	ErrGone = errors.New("endpoint disabled: it answered 410 Gone")
	// ErrOpen is a delivery refused while the endpoint's circuit is open.
	ErrOpen = errors.New("endpoint circuit open after consecutive failures")
)

// ConcurrencyWait is how long a delivery over its endpoint's concurrency limit is held back.
// The Redis retry set keeps whole seconds, so a shorter wait would come back at once.
const ConcurrencyWait = time.Second

// maxStates bounds the endpoints a Table remembers; past it, idle ones are forgotten.
const maxStates = 1 << 16

// Table applies rules to endpoints and keeps each endpoint's limits, breaker and 410 state. It
// is safe for concurrent use and is the engine.Gate of a pipeline.
type Table struct {
	rules    []*compiled // longest prefix first
	fallback *compiled   // for URLs no rule matches: 410 disables, nothing else
	log      *slog.Logger
	m        *Metrics
	now      func() int64

	mu     sync.Mutex
	states map[string]*state
	gone   atomic.Int64 // endpoints disabled: while zero, stateless rules skip the map
}

// state is one endpoint's memory.
type state struct {
	rule      *compiled
	tat       int64 // when the rate limiter is next free (GCRA's theoretical arrival time)
	deferTat  int64 // the same for deliveries it held back, so that they come back spread out
	inflight  int
	failures  int   // consecutive failed attempts
	openUntil int64 // the circuit is open until then; 0 when closed
	probing   bool  // half-open: one probe is in flight, the others are refused
	gone      bool
}

// NewTable compiles rules (they were checked by ParseRules; an error here is a bug of the
// caller) and registers the metrics on reg when it is not nil.
func NewTable(rules []Rule, reg prometheus.Registerer, log *slog.Logger) (*Table, error) {
	if log == nil {
		log = slog.Default()
	}
	t := &Table{log: log, m: newMetrics(reg), states: map[string]*state{},
		now: func() int64 { return time.Now().UnixNano() }}
	t.fallback, _ = compile(Rule{})
	for _, r := range rules {
		c, err := compile(r)
		if err != nil {
			return nil, err
		}
		if r.URL == "" {
			t.fallback = c
			continue
		}
		t.rules = append(t.rules, c)
	}
	// Longest prefix first, so that the first match is the most specific.
	for i := 1; i < len(t.rules); i++ {
		for j := i; j > 0 && len(t.rules[j].prefix) > len(t.rules[j-1].prefix); j-- {
			t.rules[j], t.rules[j-1] = t.rules[j-1], t.rules[j]
		}
	}
	return t, nil
}

func (t *Table) match(url []byte) *compiled {
	for _, r := range t.rules {
		if bytes.HasPrefix(url, r.prefix) {
			return r
		}
	}
	return t.fallback
}

// Acquire decides whether a delivery to url may start now. When ok is false, r says why: a
// Deferred result with the wait (rate or concurrency limit), ErrOpen (counts as a failed
// attempt), or a Permanent ErrGone. Every Acquire that returned ok must be followed by Release.
func (t *Table) Acquire(url []byte) (r engine.Result, ok bool) { return t.acquire(url, t.match(url)) }

func (t *Table) acquire(url []byte, rule *compiled) (engine.Result, bool) {
	if !rule.stateful && t.gone.Load() == 0 {
		return engine.Result{}, true
	}
	now := t.now()
	t.mu.Lock()
	s := t.states[string(url)]
	if s == nil {
		if !rule.stateful {
			t.mu.Unlock()
			return engine.Result{}, true
		}
		s = t.add(url, rule, now)
	}
	switch {
	case s.gone:
		t.mu.Unlock()
		t.m.refused.WithLabelValues("gone").Inc()
		return engine.Result{Err: ErrGone, Status: 410, Permanent: true}, false
	case s.rule.BreakAfter > 0 && s.openUntil != 0 && (now < s.openUntil || s.probing):
		t.mu.Unlock()
		t.m.refused.WithLabelValues("circuit_open").Inc()
		return engine.Result{Err: ErrOpen}, false
	case s.rule.Concurrency > 0 && s.inflight >= s.rule.Concurrency:
		t.mu.Unlock()
		t.m.deferred.WithLabelValues("concurrency").Inc()
		return engine.Result{Deferred: true, RetryAfter: ConcurrencyWait}, false
	}
	if s.rule.interval > 0 {
		tat := max(s.tat, now)
		if tat-now > s.rule.window {
			// Held back: each deferral takes the next free slot after the others held back,
			// so a backlog returns at the rate it may be sent instead of all at once.
			s.deferTat = max(s.deferTat, tat) + s.rule.interval
			wait := time.Duration(s.deferTat - now)
			t.mu.Unlock()
			t.m.deferred.WithLabelValues("rate_limit").Inc()
			return engine.Result{Deferred: true, RetryAfter: wait}, false
		}
		s.tat = tat + s.rule.interval
	}
	probe := s.openUntil != 0 // the cooldown passed: this delivery is the probe
	if probe {
		s.probing = true
	}
	s.inflight++
	t.mu.Unlock()
	if probe {
		t.m.transitions.WithLabelValues("half_open").Inc()
		t.log.Info("endpoint circuit half-open: sending one probe", "url", string(url))
	}
	return engine.Result{}, true
}

// add remembers a new endpoint; t.mu is held.
func (t *Table) add(url []byte, rule *compiled, now int64) *state {
	if len(t.states) >= maxStates {
		for k, s := range t.states {
			if !s.gone && s.inflight == 0 && s.failures == 0 && s.openUntil == 0 && s.tat <= now && s.deferTat <= now {
				delete(t.states, k)
			}
		}
	}
	s := &state{rule: rule}
	t.states[string(url)] = s
	return s
}

// Release is told how a delivery Acquire let through ended, and returns the result to settle it
// with: a 410 from an endpoint whose rule disables it becomes a Permanent ErrGone.
func (t *Table) Release(url []byte, r engine.Result) engine.Result {
	if r.RetryAfter > 0 {
		t.m.retryAfter.Inc()
	}
	rule := t.match(url)
	gone := r.Status == 410 && rule.disable
	if !rule.stateful && !gone {
		return r
	}
	now := t.now()
	t.mu.Lock()
	s := t.states[string(url)]
	if s == nil {
		s = t.add(url, rule, now)
	}
	if rule.stateful {
		s.inflight = max(s.inflight-1, 0)
	}
	var event string
	if gone && !s.gone {
		s.gone = true
		t.gone.Add(1)
		event = "gone"
	}
	if s.rule.BreakAfter > 0 && !gone {
		switch {
		case countsAsDown(r):
			s.failures++
			if s.probing || (s.openUntil == 0 && s.failures >= s.rule.BreakAfter) {
				if s.openUntil == 0 {
					event = "open"
				} else {
					event = "reopen"
				}
				s.openUntil = now + s.rule.cooldown
				s.probing = false
			}
		case r.Err != nil && r.Status == 0:
			// A failure Herald decided on its own (a refused address): says nothing of the
			// receiver.
		default:
			// An answer, even a 4xx, means the endpoint is up.
			if s.openUntil != 0 {
				event = "closed"
			}
			s.failures, s.openUntil, s.probing = 0, 0, false
		}
	}
	failures := s.failures
	t.mu.Unlock()

	switch event {
	case "gone":
		t.m.disabled.Inc()
		t.log.Warn("endpoint answered 410 Gone: disabled until restart; its deliveries are dead-lettered",
			"url", string(url))
	case "open", "reopen":
		if event == "open" {
			t.m.open.Inc()
		}
		t.m.transitions.WithLabelValues("open").Inc()
		t.log.Warn("endpoint circuit opened: deliveries fail fast until a probe succeeds",
			"url", string(url), "consecutive_failures", failures, "probe_in", time.Duration(rule.cooldown), "err", r.Err)
	case "closed":
		t.m.open.Dec()
		t.m.transitions.WithLabelValues("closed").Inc()
		t.log.Info("endpoint circuit closed: the probe succeeded", "url", string(url))
	}
	if gone {
		return engine.Result{Err: ErrGone, Status: 410, Permanent: true}
	}
	return r
}

// countsAsDown reports whether r says the receiver is unreachable or failing: no answer at all,
// a 5xx, 408 or 429. Other 4xx answers come from a receiver that is up.
func countsAsDown(r engine.Result) bool {
	if r.Err == nil || r.Permanent {
		return false
	}
	return r.Status == 0 || r.Status >= 500 || r.Status == 408 || r.Status == 429
}

// Metrics are a Table's collectors. Endpoints are not a label: there may be thousands; the log
// names the endpoint of every transition.
type Metrics struct {
	deferred    *prometheus.CounterVec
	refused     *prometheus.CounterVec
	transitions *prometheus.CounterVec
	open        prometheus.Gauge
	disabled    prometheus.Gauge
	signed      prometheus.Counter
	retryAfter  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		deferred: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "herald_endpoint_deferred_total",
			Help: "Deliveries held back by an endpoint's rate_limit or concurrency limit (not counted as attempts)."}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "herald_endpoint_refused_total",
			Help: "Deliveries not attempted: circuit_open (counted as a failed attempt) or gone (dead-lettered)."}, []string{"reason"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "herald_endpoint_circuit_transitions_total",
			Help: "Circuit breaker changes: open, half_open, closed."}, []string{"to"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{Name: "herald_endpoint_circuits_open",
			Help: "Endpoints whose circuit is open or half-open."}),
		disabled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "herald_endpoint_disabled",
			Help: "Endpoints disabled by a 410 Gone answer."}),
		signed: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_endpoint_signed_total",
			Help: "Deliveries signed the Standard Webhooks way."}),
		retryAfter: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_endpoint_retry_after_total",
			Help: "429 or 503 answers whose Retry-After set the next attempt's time."}),
	}
	if reg != nil {
		reg.MustRegister(m.deferred, m.refused, m.transitions, m.open, m.disabled, m.signed, m.retryAfter)
	}
	return m
}
