package waypoint

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// NATSSource tails the state stream with one ordered consumer for the whole process, however
// many streams are open: the reference opens one consumer per request.
type NATSSource struct {
	nc              *nats.Conn
	js              jetstream.JetStream
	stream, subject string
	window          time.Duration
	hub             *Hub
	log             *slog.Logger

	consuming     atomic.Bool
	streamFound   atomic.Bool
	received, bad prometheus.Counter
}

// NewNATSSource feeds hub with the events of stream under subject, starting window ago so that
// look_back works from the first request. reg receives its counters.
func NewNATSSource(nc *nats.Conn, stream, subject string, window time.Duration, hub *Hub, reg *prometheus.Registry, log *slog.Logger) (*NATSSource, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &NATSSource{nc: nc, js: js, stream: stream, subject: subject, window: window, hub: hub, log: log,
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_sse_events_total",
			Help: "Events read from the source."}),
		bad: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_sse_bad_events_total",
			Help: "Events skipped because they are not a valid envelope."}),
	}
	if reg != nil {
		reg.MustRegister(s.received, s.bad)
	}
	return s, nil
}

// Ready reports whether the connection is up, the stream there and the consumer reading.
func (s *NATSSource) Ready() bool {
	return s.consuming.Load() && s.streamFound.Load() && s.nc.IsConnected()
}

// checkEvery is how often the stream's existence is confirmed: an ordered consumer whose stream
// was deleted keeps trying quietly, and readiness must not say all is well meanwhile.
const checkEvery = 2 * time.Second

func (s *NATSSource) watchStream(ctx context.Context) {
	t := time.NewTicker(checkEvery)
	defer t.Stop()
	for {
		c, cancel := context.WithTimeout(ctx, checkEvery)
		_, err := s.js.Stream(c, s.stream)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if found := err == nil; found != s.streamFound.Swap(found) && !found {
			s.log.Warn("the state stream cannot be found; not ready", "stream", s.stream, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Run reads until ctx ends. A missing stream or a lost consumer is retried every second, resuming
// at the time of the last event read; the ordered consumer itself rides out reconnections.
func (s *NATSSource) Run(ctx context.Context) {
	start := time.Now().Add(-s.window)
	failures := 0
	watch, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go s.watchStream(watch)
	for ctx.Err() == nil {
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{s.subject + ".>"},
			DeliverPolicy: jetstream.DeliverNewPolicy}
		if s.window > 0 {
			cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
		}
		it, err := s.open(ctx, cfg)
		if err != nil {
			if failures%30 == 0 && ctx.Err() == nil {
				s.log.Warn("cannot read the state stream; retrying every second", "stream", s.stream, "err", err, "attempts", failures+1)
			}
			failures++
			engine.Sleep(ctx, time.Second)
			continue
		}
		if failures > 0 {
			s.log.Info("reading the state stream", "stream", s.stream, "subject", s.subject+".>")
		}
		failures = 0
		s.consuming.Store(true)
		s.streamFound.Store(true)
		stop := context.AfterFunc(ctx, it.Stop)
		for {
			msg, err := it.Next()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					s.log.Warn("state stream consumer stopped; recreating it", "stream", s.stream, "err", err)
				}
				break
			}
			at := time.Now()
			if md, err := msg.Metadata(); err == nil {
				at = md.Timestamp
			}
			s.received.Inc()
			e, err := ParseEvent(msg.Data(), at)
			if err != nil {
				s.bad.Inc()
				s.log.Debug("skipping a state event that is not a valid envelope", "subject", msg.Subject(), "err", err)
				continue
			}
			s.hub.Publish(e)
			start = at
		}
		stop()
		it.Stop()
		s.consuming.Store(false)
	}
}

func (s *NATSSource) open(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (jetstream.MessagesContext, error) {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cons, err := s.js.OrderedConsumer(c, s.stream, cfg)
	if err != nil {
		return nil, err
	}
	return cons.Messages()
}
