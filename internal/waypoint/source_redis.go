package waypoint

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/broker"
	"github.com/heraldhq/herald/internal/config"
	"github.com/prometheus/client_golang/prometheus"
)

// ListSource feeds the hub from a Redis list that `herald events` (or the redis_events plugin)
// fills with event entries: an event_topic_maps route such as "^acapy::record::" -> "waypoint".
// A list hands each entry to one reader, so one waypoint reads it. An entry is acknowledged once
// its event is in the hub; one that is not an event is dead-lettered with the reason.
type ListSource struct {
	src           *broker.Source
	hub           *Hub
	log           *slog.Logger
	received, bad prometheus.Counter
}

// OpenListSource connects to the Redis of b, waiting for it until ctx ends.
func OpenListSource(ctx context.Context, b config.Broker, hub *Hub, reg *prometheus.Registry, log *slog.Logger) (*ListSource, error) {
	src, err := broker.OpenSource(ctx, b, broker.SourceOptions{Instance: "waypoint"}, log)
	if err != nil {
		return nil, err
	}
	log.Info("reading events from Redis", append([]any{"redis", b.Redacted()}, src.Names...)...)
	s := &ListSource{src: src, hub: hub, log: log,
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_sse_events_total", Help: "Events read from the source."}),
		bad:      prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_sse_bad_events_total", Help: "Entries dead-lettered because they are not events."}),
	}
	if reg != nil {
		reg.MustRegister(s.received, s.bad)
	}
	return s, nil
}

// Ready reports whether Redis answers.
func (s *ListSource) Ready() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.src.Live(ctx)
}

// Run takes entries until ctx ends, then closes the connection.
func (s *ListSource) Run(ctx context.Context) {
	defer s.src.Close()
	p := &engine.Pipeline{
		Source:  s.src,
		Decode:  func(*engine.Message) error { return nil }, // the sink parses: one pass
		Sink:    listSink{s},
		Policy:  engine.ReferenceRetryPolicy,
		Log:     s.log,
		Workers: 1, // one at a time keeps the list's order, which "the first event" depends on
		Batch:   256,
	}
	if err := p.Run(ctx); err != nil && ctx.Err() == nil {
		s.log.Error("reading events from Redis stopped", "err", err)
	}
}

type listSink struct{ s *ListSource }

func (l listSink) Deliver(m *engine.Message) engine.Result {
	l.s.received.Inc()
	e, err := ParseEntry(m.Raw, time.Now())
	if err != nil {
		l.s.bad.Inc()
		return engine.Result{Err: fmt.Errorf("not an event entry: %w", err), Permanent: true}
	}
	l.s.hub.Publish(e)
	return engine.Result{}
}
