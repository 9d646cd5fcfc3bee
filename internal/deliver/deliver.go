// Package deliver is the `herald deliver` service: the drop-in replacement for the reference
// deliverer of ACA-Py's redis_events plugin. It wires the Redis queue, the ACA-Py entry format,
// the HTTP/WebSocket sink, metrics and the status endpoints into one engine pipeline.
package deliver

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/broker"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/endpoint"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/recipkey"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/service"
	"github.com/heraldhq/herald/internal/sink"
	"github.com/redis/rueidis"
)

// Run serves until ctx is cancelled, then drains: started deliveries finish (bounded by the
// drain timeout), unstarted messages go back to the queue's head. Redis being down at start or
// later is waited out, never fatal; only a status listener that cannot bind is an error.
func Run(ctx context.Context, cfg config.Deliver, log *slog.Logger) error {
	st, err := service.StartStatus("deliver", cfg.Status, log)
	if err != nil {
		return err
	}
	defer st.Stop()
	obs := &metrics.Observer{M: st.Metrics}
	st.SetReady(obs.Ready)
	gate, err := endpoint.NewTable(cfg.Endpoints, st.Metrics.Registry(), log)
	if err != nil {
		return &config.Error{Key: "HERALD_ENDPOINTS", Reason: err.Error()}
	}
	if cfg.Source.Kind != config.KindRedis {
		return runBroker(ctx, cfg, st, obs, gate, log)
	}
	m := obs.M

	client, err := redisq.Connect(ctx, cfg.Redis.URL, log)
	if err != nil {
		return nil // cancelled while waiting for Redis: nothing was taken, nothing to drain
	}
	defer client.Close()

	mode, _ := redisq.ParseMode(cfg.Mode)
	keys := redisq.NewKeys(cfg.Redis.TopicPrefix+"_outbound", cfg.Redis.TopicPrefix+"_outbound_retry", cfg.DeadLetter)
	q := redisq.New(client, redisq.Options{
		Keys:        keys,
		Mode:        mode,
		Instance:    cfg.Instance,
		Lease:       cfg.Lease,
		EncodeRetry: acapy.AppendRetryMember,
		EncodeDead:  acapy.EncodeDead,
		Log:         log,
	})
	st.SetLive(func(ctx context.Context) bool { return q.Ping(ctx) == nil })
	log.Info("herald deliver starting",
		"redis", config.RedactURL(cfg.Redis.URL), "queue", keys.Queue, "retry_set", keys.RetrySet,
		"dead_letter", keys.Dead, "mode", mode.String(), "instance", q.Instance(),
		"concurrency", cfg.Concurrency, "batch", cfg.Batch, "deny_private", cfg.DenyPrivate,
		"endpoint_rules", len(cfg.Endpoints))

	out, err := newSink(ctx, cfg, client, log)
	if err != nil {
		return err
	}

	stopQueue, err := q.Start(ctx)
	if err != nil {
		return nil // cancelled before the lease was written: nothing was taken
	}
	depth, stopDepth := context.WithCancel(context.Background())
	depthDone := make(chan struct{})
	go func() { defer close(depthDone); watchDepth(depth, q, m, keys) }()

	p := pipeline(cfg, q, out, obs, gate, log)
	obs.SetReady(true)
	err = p.Run(ctx)
	obs.SetReady(false)

	stopDepth()
	<-depthDone
	stopQueue()
	log.Info("herald deliver stopped")
	return err
}

// newSink is the HTTP/WebSocket sink, behind the recipient-key router in mediator mode.
func newSink(ctx context.Context, cfg config.Deliver, client rueidis.Client, log *slog.Logger) (engine.Sink, error) {
	o := sink.Options{Timeout: cfg.Timeout, MaxConnsPerHost: cfg.Concurrency, DenyPrivate: cfg.DenyPrivate}
	if cfg.PooledClient {
		o.Loops = -1
	}
	out := sink.NewLoop(o)
	if cfg.MediatorMode {
		if err := recipkey.CheckPlacement(ctx, client); err != nil {
			return nil, err
		}
		topic := cfg.Redis.TopicPrefix + "_outbound"
		out = &recipkey.Mediator{Assigner: recipkey.New(client, cfg.Stale), Topic: topic, Timeout: cfg.Timeout, Next: out}
		log.Info("mediator mode: packed messages go to the list of their recipient key", "lists", topic+"_<recipient key>")
	}
	return out, nil
}

func pipeline(cfg config.Deliver, src engine.Source, out engine.Sink, obs engine.Observer, gate *endpoint.Table, log *slog.Logger) *engine.Pipeline {
	return &engine.Pipeline{
		Source:       src,
		Decode:       acapy.DecodeOutbound,
		Sink:         out,
		Gate:         gate,
		Policy:       engine.RetryPolicy{MaxRetries: acapy.MaxRetries, Interval: 5, Backoff: 0.25, DropExhausted: cfg.DropExhausted},
		Observer:     obs,
		Log:          log,
		Workers:      cfg.Concurrency,
		Batch:        cfg.Batch,
		DrainTimeout: cfg.DrainTimeout,
	}
}

// runBroker delivers from NATS, Kafka or RabbitMQ: the same pipeline, sink and policy as from
// Redis, with retries and dead letters kept the broker's own way (see internal/broker).
func runBroker(ctx context.Context, cfg config.Deliver, st *service.Status, obs *metrics.Observer, gate *endpoint.Table, log *slog.Logger) error {
	var client rueidis.Client
	if cfg.MediatorMode {
		var err error
		if client, err = redisq.Connect(ctx, cfg.Redis.URL, log); err != nil {
			return nil // cancelled while waiting for Redis
		}
		defer client.Close()
	}
	out, err := newSink(ctx, cfg, client, log)
	if err != nil {
		return err
	}
	instance := cfg.Instance
	if instance == "" {
		instance = "herald-deliver"
	}
	// A delivery may take the timeout and its settling a little more; past AckWait NATS hands
	// the message to another deliverer.
	src, err := broker.OpenSource(ctx, cfg.Source, broker.SourceOptions{
		Queue: cfg.Redis.TopicPrefix + "_outbound", Group: broker.DeliverGroup, Instance: instance,
		AckWait: 2*cfg.Timeout + 10*time.Second,
	}, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("HERALD_SOURCE %s: %w", cfg.Source.Redacted(), err)
	}
	defer src.Close()
	st.SetLive(src.Live)
	log.Info("herald deliver starting", append([]any{"source", cfg.Source.Redacted()}, append(src.Names,
		"concurrency", cfg.Concurrency, "batch", cfg.Batch, "deny_private", cfg.DenyPrivate,
		"endpoint_rules", len(cfg.Endpoints))...)...)

	p := pipeline(cfg, src, out, obs, gate, log)
	obs.SetReady(true)
	err = p.Run(ctx)
	obs.SetReady(false)
	log.Info("herald deliver stopped")
	return err
}

// watchDepth refreshes the queue depth gauges; it is cheap (three commands every two seconds).
func watchDepth(ctx context.Context, q *redisq.Queue, m *metrics.Metrics, keys redisq.Keys) {
	for engine.Sleep(ctx, 2*time.Second) {
		queued, retry, inflight, err := q.Depth(ctx)
		if err != nil {
			continue
		}
		m.QueueDepth.WithLabelValues(keys.Queue).Set(float64(queued))
		m.QueueDepth.WithLabelValues(keys.RetrySet).Set(float64(retry))
		m.QueueDepth.WithLabelValues("inflight").Set(float64(inflight))
	}
}
