// Package deliver is the `herald deliver` service: the drop-in replacement for the reference
// deliverer of ACA-Py's redis_events plugin. It wires the Redis queue, the ACA-Py entry format,
// the HTTP/WebSocket sink, metrics and the status endpoints into one engine pipeline.
package deliver

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/recipkey"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/sink"
	"github.com/heraldhq/herald/internal/status"
)

// Run serves until ctx is cancelled, then drains: started deliveries finish (bounded by the
// drain timeout), unstarted messages go back to the queue's head. Redis being down at start or
// later is waited out, never fatal; only a status listener that cannot bind is an error.
func Run(ctx context.Context, cfg config.Deliver, log *slog.Logger) error {
	obs := &metrics.Observer{M: metrics.New("deliver")}
	m := obs.M
	var queue atomic.Pointer[redisq.Queue]

	stopStatus, err := status.Serve(cfg.Status.Host, cfg.Status.Port, cfg.Status.APIKey, status.Checks{
		Ready: obs.Ready,
		Live: func(ctx context.Context) bool {
			q := queue.Load()
			return q != nil && q.Ping(ctx) == nil
		},
	}, m.Registry(), log)
	if err != nil {
		return err
	}
	defer stopStatus()

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
	queue.Store(q)
	log.Info("herald deliver starting",
		"redis", config.RedactURL(cfg.Redis.URL), "queue", keys.Queue, "retry_set", keys.RetrySet,
		"dead_letter", keys.Dead, "mode", mode.String(), "instance", q.Instance(),
		"concurrency", cfg.Concurrency, "batch", cfg.Batch, "deny_private", cfg.DenyPrivate)

	var out engine.Sink = sink.New(sink.Options{Timeout: cfg.Timeout, MaxConnsPerHost: cfg.Concurrency, DenyPrivate: cfg.DenyPrivate})
	if cfg.MediatorMode {
		if err := recipkey.CheckPlacement(ctx, client); err != nil {
			return err
		}
		topic := cfg.Redis.TopicPrefix + "_outbound"
		out = &recipkey.Mediator{Assigner: recipkey.New(client, cfg.Stale), Topic: topic, Timeout: cfg.Timeout, Next: out}
		log.Info("mediator mode: packed messages go to the list of their recipient key", "lists", topic+"_<recipient key>")
	}

	// The lease is written before the first take so that a crash right after it is visible.
	for ctx.Err() == nil {
		if err := q.Register(ctx); err == nil {
			break
		} else {
			log.Warn("registering the instance lease failed; retrying", "err", err)
			sleep(ctx, time.Second)
		}
	}

	bg, stopBg := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); q.Run(bg) }()
	go func() { defer wg.Done(); watchDepth(bg, q, m, keys) }()

	p := &engine.Pipeline{
		Source:       q,
		Decode:       acapy.DecodeOutbound,
		Sink:         out,
		Policy:       engine.RetryPolicy{MaxRetries: acapy.MaxRetries, Interval: 5, Backoff: 0.25, DropExhausted: cfg.DropExhausted},
		Observer:     obs,
		Log:          log,
		Workers:      cfg.Concurrency,
		Batch:        cfg.Batch,
		DrainTimeout: cfg.DrainTimeout,
	}
	obs.SetReady(true)
	err = p.Run(ctx)
	obs.SetReady(false)

	stopBg()
	wg.Wait()
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if cerr := q.Close(cctx); cerr != nil {
		log.Error("returning unfinished messages failed; they return when the lease expires", "err", cerr)
	}
	log.Info("herald deliver stopped")
	return err
}

// watchDepth refreshes the queue depth gauges; it is cheap (three commands every two seconds).
func watchDepth(ctx context.Context, q *redisq.Queue, m *metrics.Metrics, keys redisq.Keys) {
	for sleep(ctx, 2*time.Second) {
		queued, retry, inflight, err := q.Depth(ctx)
		if err != nil {
			continue
		}
		m.QueueDepth.WithLabelValues(keys.Queue).Set(float64(queued))
		m.QueueDepth.WithLabelValues(keys.RetrySet).Set(float64(retry))
		m.QueueDepth.WithLabelValues("inflight").Set(float64(inflight))
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
