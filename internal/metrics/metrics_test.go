package metrics

import (
	"errors"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestObserver(t *testing.T) {
	o := &Observer{M: New("test")}
	o.SourceHealth(nil)
	o.Taken(3)
	o.Attempted(engine.Result{Err: errors.New("x")}, time.Millisecond)
	o.Settled(engine.Delivered, time.Millisecond)
	o.Settled(engine.Retried, time.Millisecond)
	o.Settled(engine.DeadLettered, time.Millisecond)
	if !o.Ready() {
		t.Error("not ready after a healthy call")
	}
	for name, c := range map[string]float64{
		"received": testutil.ToFloat64(o.M.Received), "delivered": testutil.ToFloat64(o.M.Delivered),
		"failed": testutil.ToFloat64(o.M.Failed), "in flight": testutil.ToFloat64(o.M.InFlight),
	} {
		want := map[string]float64{"received": 3, "delivered": 1, "failed": 1, "in flight": 0}[name]
		if c != want {
			t.Errorf("%s = %v, want %v", name, c, want)
		}
	}
	o.SourceHealth(errors.New("down"))
	if o.Ready() || testutil.ToFloat64(o.M.BrokerUp) != 0 {
		t.Error("still ready after a failed call")
	}
}

func BenchmarkObserverHotPath(b *testing.B) {
	o := &Observer{M: New("bench")}
	b.ReportAllocs()
	for b.Loop() {
		o.Taken(1)
		o.Attempted(engine.Result{}, time.Millisecond)
		o.Settled(engine.Delivered, time.Millisecond)
		o.SourceHealth(nil)
	}
}
