package events

import (
	"context"
	"errors"
	"fmt"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/broker"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/metrics"
)

// bridge routes the events read from another broker (bridge mode) as if they had been POSTed to
// /v1/events, one per message: the message is acknowledged only once its entries are stored; an
// entry that is not an event is dead-lettered with the reason; a sink that fails is retried on
// the reference schedule.
func (s *Service) bridge(ctx context.Context, from config.Broker) error {
	src, err := broker.OpenSource(ctx, from, broker.SourceOptions{Group: "herald-events", Instance: "herald-events"}, s.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("HERALD_FROM %s: %w", from.Redacted(), err)
	}
	defer src.Close()
	s.log.Info("bridge: routing the events of another broker", append([]any{"from", from.Redacted()}, src.Names...)...)
	p := &engine.Pipeline{
		Source: src,
		// The sink parses the event itself: one pass over the entry.
		Decode: func(*engine.Message) error { return nil },
		Sink:   bridgeSink{s},
		Policy: engine.ReferenceRetryPolicy,
		// The bridge's deliveries count in the service's delivery metrics.
		Observer: &metrics.Observer{M: s.m},
		Log:      s.log.With("bridge", from.Kind),
		Workers:  32,
		Batch:    64,
	}
	return p.Run(ctx)
}

// bridgeSink routes and publishes the event of one message.
type bridgeSink struct{ s *Service }

func (b bridgeSink) Deliver(m *engine.Message) engine.Result {
	bt := b.s.getBatch()
	bt.events = append(bt.events, acapy.Event{})
	var err error
	if cap(bt.strs) < len(m.Raw) {
		bt.strs = make([]byte, 0, len(m.Raw))
	}
	if bt.strs, err = acapy.ParseEvent(m.Raw, bt.strs, &bt.events[0]); err != nil {
		b.s.putBatch(bt)
		return engine.Result{Err: fmt.Errorf("not an event: %w", err), Permanent: true}
	}
	if _, err := b.s.ingest(context.Background(), bt, "bridge"); err != nil {
		var bad *badInput
		return engine.Result{Err: err, Permanent: errors.As(err, &bad)}
	}
	return engine.Result{}
}
