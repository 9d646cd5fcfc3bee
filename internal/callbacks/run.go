package callbacks

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/heraldhq/herald/internal/broker"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/endpoint"
	"github.com/heraldhq/herald/internal/kafkaq"
	"github.com/heraldhq/herald/internal/service"
	"github.com/heraldhq/herald/internal/sign"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// metrics are the service's counters, by destination (consumer group).
type metrics struct {
	events, delivered, failures, deadLettered *prometheus.CounterVec
	skipped                                   *prometheus.CounterVec
	latency                                   *prometheus.HistogramVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append([]string{"destination"}, labels...))
		reg.MustRegister(c)
		return c
	}
	m := &metrics{
		events:       vec("herald_callbacks_events_total", "Events read, per destination."),
		delivered:    vec("herald_callbacks_delivered_total", "Callbacks accepted (2xx or 3xx)."),
		failures:     vec("herald_callbacks_failed_attempts_total", "Callback attempts that failed."),
		deadLettered: vec("herald_callbacks_dead_lettered_total", "Events given up on, in the dead-letter topic."),
		skipped:      vec("herald_callbacks_skipped_total", "Events not sent: malformed, no type, or nothing for this destination.", "reason"),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "herald_callbacks_attempt_duration_seconds",
			Help: "Time one callback attempt took.", Buckets: prometheus.ExponentialBucketsRange(0.001, 30, 14)}, []string{"destination"}),
	}
	reg.MustRegister(m.latency)
	return m
}

// destinations builds what the configuration enables; a bad secret is a configuration error.
func destinations(c config.Callbacks) ([]destination, error) {
	var ds []destination
	if c.BusinessServer {
		d, err := businessServer(c)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	if c.ClientCallbacks {
		signer, err := sign.NewAnchor(c.SigningSeed)
		if err != nil {
			return nil, &config.Error{Key: "SECRET_SEP10_SIGNING_SEED", Reason: err.Error()}
		}
		for _, cl := range c.Clients {
			ds = append(ds, clientCallbacks(cl, signer))
		}
	}
	return ds, nil
}

// Run serves `herald callbacks` until ctx ends.
func Run(ctx context.Context, c config.Callbacks, log *slog.Logger) error {
	ds, err := destinations(c)
	if err != nil {
		return err
	}
	st, err := service.StartStatus("callbacks", c.Status, log)
	if err != nil {
		return err
	}
	defer st.Stop()
	m := newMetrics(st.Metrics.Registry())
	endpoints, err := endpoint.NewTable(c.Endpoints, st.Metrics.Registry(), log)
	if err != nil {
		return &config.Error{Key: "HERALD_ENDPOINTS", Reason: err.Error()}
	}
	admin, err := kafkaq.NewPublisher(kafkaq.PublisherOptions{Seeds: c.Seeds})
	if err != nil {
		return err
	}
	defer admin.Close()
	topics := []string{c.Topic}
	for _, d := range ds {
		topics = append(topics, retryTopic(c.Topic, d.group), deadTopic(c.Topic, d.group))
	}
	if err := broker.CreateKafkaTopics(ctx, admin, topics, log); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	client := &fasthttp.Client{Name: "herald-callbacks", MaxConnsPerHost: 4 * c.Lanes,
		ReadTimeout: c.Timeout, WriteTimeout: c.Timeout, MaxIdleConnDuration: 30 * time.Second}
	opt := options{Timeout: c.Timeout, Attempts: c.Attempts, BackoffBase: c.BackoffBase, BackoffCap: c.BackoffCap, Lanes: c.Lanes}
	var wg sync.WaitGroup
	var queues []*kafkaq.Queue
	for _, d := range ds {
		q, err := kafkaq.Open(kafkaq.Options{Topic: c.Topic, RetryTopic: retryTopic(c.Topic, d.group),
			DeadTopic: deadTopic(c.Topic, d.group), Group: d.group, Seeds: c.Seeds, EncodeDead: encodeDead, Instance: "herald-callbacks"})
		if err != nil {
			return err
		}
		queues = append(queues, q)
		p := newProcessor(d, q, client, endpoints, opt, m, log)
		log.Info("delivering events", "destination", d.group, "topic", c.Topic, "dead_letter_topic", deadTopic(c.Topic, d.group))
		wg.Add(1)
		go func() { defer wg.Done(); p.run(ctx) }()
	}
	st.SetLive(func(ctx context.Context) bool { return admin.Ping(ctx) == nil })
	st.SetReady(func() bool {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return admin.Ping(c) == nil
	})
	<-ctx.Done()
	wg.Wait()
	for _, q := range queues {
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = q.Flush(fctx) // what was settled is committed before leaving
		cancel()
		q.Close()
	}
	return nil
}

// retryTopic is consumed by the queue but never written: retries stay in the lane, in order.
func retryTopic(topic, group string) string { return topic + "." + group + ".retry" }

// deadTopic holds what a destination gave up on.
func deadTopic(topic, group string) string { return topic + "." + group + ".dead" }
