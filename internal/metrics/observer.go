package metrics

import (
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/engine"
)

// Observer feeds engine pipeline events into Metrics and tracks readiness: ready while the last
// call to the broker succeeded.
type Observer struct {
	M     *Metrics
	ready atomic.Bool
}

// Ready reports whether the last broker call succeeded.
func (o *Observer) Ready() bool { return o.ready.Load() }

// SetReady forces readiness, for start and shutdown.
func (o *Observer) SetReady(v bool) { o.ready.Store(v) }

// Taken implements engine.Observer.
func (o *Observer) Taken(n int) {
	o.M.Received.Add(float64(n))
	o.M.InFlight.Add(float64(n))
}

// Attempted implements engine.Observer.
func (o *Observer) Attempted(r engine.Result, took time.Duration) {
	o.M.DeliveryLatency.Observe(took.Seconds())
	if r.Err != nil {
		o.M.Failed.Inc()
	}
}

// Settled implements engine.Observer.
func (o *Observer) Settled(out engine.Outcome, age time.Duration) {
	o.M.InFlight.Dec()
	o.M.Age.Observe(age.Seconds())
	switch out {
	case engine.Delivered:
		o.M.Delivered.Inc()
	case engine.Retried:
		o.M.Retried.Inc()
	case engine.DeadLettered:
		o.M.DeadLettered.Inc()
	case engine.Dropped:
		o.M.Dropped.Inc()
	}
}

// SourceHealth implements engine.Observer.
func (o *Observer) SourceHealth(err error) {
	up := err == nil
	if o.ready.Load() != up {
		o.ready.Store(up)
	}
	if up {
		o.M.BrokerUp.Set(1)
	} else {
		o.M.BrokerUp.Set(0)
	}
}
