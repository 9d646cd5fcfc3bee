package events

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/heraldhq/herald/internal/broker"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/service"
	"github.com/valyala/fasthttp"
)

// Handler serves the ingest endpoints:
//
//	POST /topic/{topic}/   an ACA-Py --webhook-url post: the record JSON, x-wallet-id when multitenant
//	POST /v1/events        {"topic", "payload", "wallet_id"}, or NDJSON of them
//
// 202 with {"events", "pushed", "webhooks"} once the broker has every entry; 400 with the reason
// when the request is malformed (nothing written); 503 when the broker failed.
func (s *Service) Handler(ctx *fasthttp.RequestCtx) {
	if !ctx.IsPost() {
		s.fail(ctx, fasthttp.StatusMethodNotAllowed, "POST /topic/{topic}/ or POST /v1/events")
		return
	}
	path := ctx.Path()
	b := s.getBatch()
	var source string
	var err error
	switch {
	case string(path) == "/v1/events":
		source = "events"
		err = s.parseEvents(b, ctx.PostBody())
	case len(path) > len("/topic/") && string(path[:len("/topic/")]) == "/topic/":
		source = "webhook"
		topic := path[len("/topic/"):]
		if len(topic) > 0 && topic[len(topic)-1] == '/' {
			topic = topic[:len(topic)-1]
		}
		if len(topic) == 0 || bytes.IndexByte(topic, '/') >= 0 {
			err = errors.New("want POST /topic/{topic}/ with one path segment as the topic")
			break
		}
		err = s.webhookEvents(b, topic, ctx.Request.Header.Peek("x-wallet-id"), ctx.PostBody())
	default:
		s.putBatch(b)
		s.fail(ctx, fasthttp.StatusNotFound, "POST /topic/{topic}/ or POST /v1/events")
		return
	}
	if err != nil {
		s.putBatch(b)
		s.fail(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	}
	res, err := s.ingest(ctx, b, source)
	var bad *badInput
	switch {
	case errors.As(err, &bad) || errors.Is(err, errNoEvents):
		s.fail(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	case err != nil:
		s.log.Warn("writing events to Redis failed; answering 503", "err", err)
		ctx.Response.Header.Set("Retry-After", "1")
		s.fail(ctx, fasthttp.StatusServiceUnavailable, "redis unavailable")
		return
	}
	ctx.SetStatusCode(fasthttp.StatusAccepted)
	ctx.SetContentType("application/json")
	var buf [96]byte
	out := append(buf[:0], `{"events": `...)
	out = strconv.AppendInt(out, int64(res.Events), 10)
	out = append(out, `, "pushed": `...)
	out = strconv.AppendInt(out, int64(res.Pushed), 10)
	out = append(out, `, "webhooks": `...)
	out = strconv.AppendInt(out, int64(res.Webhooks), 10)
	ctx.SetBody(append(out, "}\n"...))
}

func (s *Service) fail(ctx *fasthttp.RequestCtx, code int, reason string) {
	s.rejected.WithLabelValues(strconv.Itoa(code)).Inc()
	ctx.Error(reason+"\n", code)
}

// requestError answers what fasthttp could not read: 413 over the size limit, 400 otherwise.
func (s *Service) requestError(ctx *fasthttp.RequestCtx, err error) {
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		s.fail(ctx, fasthttp.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than the limit of %d bytes (HERALD_MAX_BODY)", s.cfg.MaxBody))
		return
	}
	s.fail(ctx, fasthttp.StatusBadRequest, "malformed HTTP request: "+err.Error())
}

type discard struct{}

func (discard) Printf(string, ...any) {}

// Run serves until ctx ends, then lets open requests finish (at most 5 s) and, in bridge mode,
// started deliveries too.
func Run(ctx context.Context, cfg config.Events, log *slog.Logger) error {
	// The topic maps are checked before anything else: a bad pattern is a configuration error.
	if _, err := NewRouter(cfg.Plugin.EventTopicMaps); err != nil {
		return err
	}
	var popts broker.PublisherOptions
	if cfg.Sink.Kind == config.KindNATS {
		var templates []string
		for _, rt := range cfg.Plugin.EventTopicMaps {
			templates = append(templates, rt.Template)
		}
		subjects, err := broker.Subjects(templates)
		if err != nil {
			return &config.Error{Key: "event_topic_maps", Reason: err.Error()}
		}
		popts = broker.PublisherOptions{NATSStream: cfg.NATSStream, NATSSubjects: subjects}
	}
	if cfg.Plugin.DeliverWebhook && len(cfg.WebhookURLs) > 0 {
		popts.Queues = []string{cfg.Plugin.OutboundTopic}
	}
	st, err := service.StartStatus("events", cfg.Status, log)
	if err != nil {
		return err
	}
	defer st.Stop()
	pub, err := broker.OpenPublisher(ctx, cfg.Sink, popts, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the broker
		}
		return fmt.Errorf("HERALD_SINK %s: %w", cfg.Sink.Redacted(), err)
	}
	defer pub.Close()
	st.SetLive(pub.Live)
	st.Metrics.BrokerUp.Set(1)
	s, err := New(cfg, pub, st.Metrics, log)
	if err != nil {
		return err
	}
	for _, k := range cfg.Plugin.Ignored {
		log.Warn("plugin configuration: ignored, as the plugin ignores it", "key", k, "file", cfg.PluginFile)
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("HERALD_LISTEN: %w", err)
	}
	srv := &fasthttp.Server{
		Handler:              s.Handler,
		Name:                 "herald",
		MaxRequestBodySize:   cfg.MaxBody,
		ReadTimeout:          cfg.ReadTimeout,
		WriteTimeout:         30 * time.Second,
		IdleTimeout:          2 * time.Minute,
		NoDefaultContentType: true,
		CloseOnShutdown:      true,
		Logger:               discard{},
		ErrorHandler:         s.requestError,
	}
	errs := make(chan error, 1)
	go func() { errs <- srv.Serve(ln) }()
	st.Listening.Store(true)
	webhookURLs := make([]string, len(cfg.WebhookURLs))
	for i, w := range cfg.WebhookURLs {
		webhookURLs[i] = w.URL // the API keys stay out of the log
	}
	log.Info("herald events listening", "addr", ln.Addr().String(), "sink", cfg.Sink.Redacted(),
		"routes", len(cfg.Plugin.EventTopicMaps), "plugin_config", cfg.PluginFile, "deliver_webhook", s.webhook != nil,
		"webhook_urls", webhookURLs, "outbound_topic", cfg.Plugin.OutboundTopic, "record_events", cfg.RecordEvents)

	bridgeDone := make(chan error, 1)
	bctx, stopBridge := context.WithCancel(ctx)
	defer stopBridge()
	if cfg.From.Kind != "" {
		go func() { bridgeDone <- s.bridge(bctx, cfg.From) }()
	} else {
		close(bridgeDone)
	}

	select {
	case <-ctx.Done():
	case err := <-errs:
		log.Error("the listener stopped", "err", err)
	}
	st.Listening.Store(false)
	log.Info("herald events stopping: no new requests; waiting for open ones (at most 5 s)")
	stopBridge()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.ShutdownWithContext(sctx)
	return <-bridgeDone
}
