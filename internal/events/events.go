// Package events is the `herald events` service: ACA-Py's events come in over HTTP (its
// --webhook-url posts, or Herald's own event format), are routed with the redis_events plugin's
// event_topic_maps and pushed, as the plugin pushes them, onto the lists the topic maps name;
// with deliver_webhook the mapped topics also become outbound entries that `herald deliver`
// delivers. A request is answered only once Redis has accepted every write it caused.
package events

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Service routes events and writes them to a broker.
type Service struct {
	cfg     config.Events
	pub     engine.Publisher
	router  *engine.Router
	keys    []*engine.Template // per route, nil when the sink keeps no key
	prefix  string             // put before a route's destination (a RabbitMQ exchange prefix)
	outDest string             // where deliver_webhook entries go, and with which key
	outKey  string
	webhook map[string]string // event topic -> webhook topic, when deliver_webhook is on
	log     *slog.Logger
	m       *metrics.Metrics

	received *prometheus.CounterVec // events by source
	rejected *prometheus.CounterVec // requests by reason
	routed   []prometheus.Counter   // entries pushed, per route
	unrouted prometheus.Counter
	webhooks prometheus.Counter
	up       prometheus.Gauge

	batches sync.Pool
}

// templateVars are the names an event_topic_maps template may use.
var templateVars = map[string]bool{"wallet_id": true, "state": true, "topic": true, "category": true}

// NewRouter compiles the topic maps. A pattern Go cannot run, or a template naming a value the
// plugin never has, is a configuration error naming it.
func NewRouter(maps []engine.Route) (*engine.Router, error) {
	r, err := engine.NewRouter(maps)
	if err != nil {
		return nil, &config.Error{Key: "event_topic_maps", Reason: err.Error()}
	}
	for i := range r.Len() {
		for _, v := range r.Template(i).Vars() {
			if !templateVars[v] {
				return nil, &config.Error{Key: "event_topic_maps", Reason: fmt.Sprintf("route %q: template %q names $%s; a template may name $wallet_id, $state, $topic and $category",
					maps[i].Pattern, maps[i].Template, v)}
			}
		}
	}
	return r, nil
}

// keyVars gives a key template the event's template values and, for any other name, the
// payload's top-level member of that name (a string or a number), empty when it has none.
type keyVars struct {
	ev      *acapy.EventVars
	payload []byte
	scratch []byte
}

func (k *keyVars) Var(name string) ([]byte, bool) {
	if v, ok := k.ev.Var(name); ok {
		return v, true
	}
	v, scratch, _ := acapy.ScalarMember(k.payload, k.scratch, name)
	k.scratch = scratch
	return v, true
}

// New returns a Service writing through pub, with its metrics on m.
func New(cfg config.Events, pub engine.Publisher, m *metrics.Metrics, log *slog.Logger) (*Service, error) {
	router, err := NewRouter(cfg.Plugin.EventTopicMaps)
	if err != nil {
		return nil, err
	}
	s := &Service{
		cfg: cfg, pub: pub, router: router, log: log, m: m, outDest: cfg.Plugin.OutboundTopic,
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "herald_events_received_total",
			Help: "Events taken in, by source (webhook: POST /topic/..., events: POST /v1/events)."}, []string{"source"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "herald_events_rejected_requests_total",
			Help: "Requests answered with an error, by status."}, []string{"status"}),
		unrouted: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_events_unrouted_total",
			Help: "Events no pattern of the topic maps matched."}),
		webhooks: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_events_webhook_entries_total",
			Help: "Outbound entries queued for deliver_webhook."}),
		up: m.BrokerUp,
	}
	routed := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "herald_events_routed_total",
		Help: "Entries pushed, per route of the topic maps."}, []string{"pattern", "template"})
	for _, rt := range cfg.Plugin.EventTopicMaps {
		s.routed = append(s.routed, routed.WithLabelValues(rt.Pattern, rt.Template))
	}
	if cfg.Plugin.DeliverWebhook && len(cfg.WebhookURLs) > 0 {
		s.webhook = cfg.Plugin.WebhookTopicMaps
	}
	switch cfg.Sink.Kind {
	case config.KindKafka, config.KindAMQP:
		for _, rt := range cfg.Plugin.EventTopicMaps {
			src := cfg.Key
			if k, ok := cfg.Keys[rt.Template]; ok {
				src = k
			}
			t, err := engine.ParseTemplate(src)
			if err != nil {
				return nil, &config.Error{Key: "HERALD_KEYS", Reason: fmt.Sprintf("route %q: %v", rt.Template, err)}
			}
			s.keys = append(s.keys, &t)
		}
	}
	if cfg.Sink.Kind == config.KindAMQP {
		// Routes name exchanges; the outbound queue is reached through the default exchange.
		s.prefix = cfg.ExchangePrefix
		s.outDest, s.outKey = "", cfg.Plugin.OutboundTopic
	}
	m.Registry().MustRegister(s.received, s.rejected, s.unrouted, s.webhooks, routed)
	return s, nil
}

// batch is the work of one request: its events, and the entries they make, written into one
// arena that is only read once complete.
type batch struct {
	events  []acapy.Event
	strs    []byte // unescaped strings and built topics the events point into
	payload []byte // the envelope payload of the event being routed
	arena   []byte // destinations, keys and entries
	spans   []span
	matched []int
	pubs    []engine.Publication
	vars    acapy.EventVars
	kv      keyVars
}

// span locates one publication in the arena.
type span struct {
	dest, key, entry [2]int
	route            int // index of the route, -1 for a webhook entry
}

func (s *Service) getBatch() *batch {
	if b, ok := s.batches.Get().(*batch); ok {
		return b
	}
	return &batch{}
}

func (s *Service) putBatch(b *batch) {
	b.events, b.strs, b.payload, b.arena = b.events[:0], b.strs[:0], b.payload[:0], b.arena[:0]
	b.spans, b.matched = b.spans[:0], b.matched[:0]
	clear(b.pubs)
	b.pubs = b.pubs[:0]
	b.kv.payload, b.kv.scratch = nil, b.kv.scratch[:0]
	s.batches.Put(b)
}

// errNoEvents is the reason given for a body without any event.
var errNoEvents = errors.New("no event in the body")

// route builds the entries of every event of b. Nothing is written: an error leaves Redis as it
// was.
func (s *Service) route(b *batch) error {
	for i := range b.events {
		e := &b.events[i]
		var err error
		b.payload, err = acapy.AppendEventPayload(b.payload[:0], e, &b.vars)
		if err != nil {
			return fmt.Errorf("event %d (%s): %w", i+1, e.Topic, err)
		}
		b.matched = s.router.Match(b.matched[:0], e.Topic)
		if len(b.matched) == 0 {
			s.unrouted.Inc()
		}
		for _, r := range b.matched {
			sp := span{route: r}
			sp.dest[0] = len(b.arena)
			b.arena = append(b.arena, s.prefix...)
			if b.arena, err = s.router.Template(r).Append(b.arena, &b.vars); err != nil {
				return fmt.Errorf("event %d (%s): %w", i+1, e.Topic, err)
			}
			sp.dest[1], sp.key[0] = len(b.arena), len(b.arena)
			if s.keys != nil {
				b.kv.ev, b.kv.payload = &b.vars, e.Payload
				if b.arena, err = s.keys[r].Append(b.arena, &b.kv); err != nil {
					return fmt.Errorf("event %d (%s): key: %w", i+1, e.Topic, err)
				}
			}
			sp.key[1], sp.entry[0] = len(b.arena), len(b.arena)
			b.arena = acapy.AppendEnvelope(b.arena, b.payload, e.WalletID)
			sp.entry[1] = len(b.arena)
			b.spans = append(b.spans, sp)
		}
		if wt, ok := s.webhook[string(e.Topic)]; ok {
			s.appendWebhooks(b, e, wt)
		}
	}
	return nil
}

// appendWebhooks queues the plugin's deliver_webhook entries of e: one outbound entry per
// webhook URL, to {url}/topic/{webhook topic}/, with x-wallet-id and x-api-key as the plugin
// sets them, the envelope payload as body.
func (s *Service) appendWebhooks(b *batch, e *acapy.Event, webhookTopic string) {
	var hdrs [2]engine.Header
	for _, w := range s.cfg.WebhookURLs {
		h := hdrs[:0]
		if len(e.WalletID) > 0 {
			h = append(h, engine.Header{Name: []byte("x-wallet-id"), Value: e.WalletID})
		}
		if w.APIKey != "" {
			h = append(h, engine.Header{Name: []byte("x-api-key"), Value: []byte(w.APIKey)})
		}
		sp := span{route: -1}
		sp.dest[0] = len(b.arena)
		b.arena = append(b.arena, s.outDest...)
		sp.dest[1], sp.key[0] = len(b.arena), len(b.arena)
		b.arena = append(b.arena, s.outKey...)
		sp.key[1], sp.entry[0] = len(b.arena), len(b.arena)
		b.arena = acapy.AppendOutbound(b.arena, w.URL+"/topic/"+webhookTopic+"/", h, b.payload)
		sp.entry[1] = len(b.arena)
		b.spans = append(b.spans, sp)
	}
}

// write publishes every entry of b in one call (one pipelined round for Redis) and returns once
// the broker stored them all. Entries for one destination keep the order of the events.
func (s *Service) write(ctx context.Context, b *batch) error {
	if len(b.spans) == 0 {
		return nil
	}
	for _, sp := range b.spans {
		b.pubs = append(b.pubs, engine.Publication{
			Dest: b.arena[sp.dest[0]:sp.dest[1]],
			Key:  b.arena[sp.key[0]:sp.key[1]],
			Body: b.arena[sp.entry[0]:sp.entry[1]],
		})
	}
	if err := s.pub.Publish(ctx, b.pubs); err != nil {
		s.up.Set(0)
		return err
	}
	s.up.Set(1)
	for _, sp := range b.spans {
		if sp.route >= 0 {
			s.routed[sp.route].Inc()
		} else {
			s.webhooks.Inc()
		}
	}
	return nil
}

// writeTimeout bounds the Redis writes of one request.
const writeTimeout = 10 * time.Second

// Result is what one request did.
type Result struct {
	Events, Pushed, Webhooks int
}

// Ingest routes and writes the events of b and recycles b.
func (s *Service) ingest(ctx context.Context, b *batch, source string) (Result, error) {
	defer s.putBatch(b)
	if len(b.events) == 0 {
		return Result{}, errNoEvents
	}
	if err := s.route(b); err != nil {
		return Result{}, &badInput{err}
	}
	// A Redis that stops answering (rather than refusing) must not hold the request forever.
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	err := s.write(wctx, b)
	cancel()
	if err != nil {
		return Result{}, err
	}
	s.received.WithLabelValues(source).Add(float64(len(b.events)))
	res := Result{Events: len(b.events)}
	for _, sp := range b.spans {
		if sp.route >= 0 {
			res.Pushed++
		} else {
			res.Webhooks++
		}
	}
	return res, nil
}

// badInput marks an error of the request, answered 400, as opposed to Redis failing (503).
type badInput struct{ err error }

func (e *badInput) Error() string { return e.err.Error() }

// parseEvents reads a /v1/events body: one JSON event, or NDJSON, one per line.
func (s *Service) parseEvents(b *batch, body []byte) error {
	if cap(b.strs) < len(body) {
		b.strs = make([]byte, 0, len(body))
	}
	line := 0
	for len(body) > 0 {
		var l []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			l, body = body[:i], body[i+1:]
		} else {
			l, body = body, nil
		}
		line++
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		b.events = append(b.events, acapy.Event{})
		var err error
		if b.strs, err = acapy.ParseEvent(l, b.strs, &b.events[len(b.events)-1]); err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
	}
	return nil
}

// webhookEvents makes the events of an ACA-Py webhook POST to /topic/{topic}/: the webhook event
// acapy::webhook::{topic}, and, when the record has a state, acapy::record::{topic}::{state}.
func (s *Service) webhookEvents(b *batch, topic, wallet, body []byte) error {
	need := 2*len(topic) + len(wallet) + 2*len(body) + 64 // never grown while events point into it
	if cap(b.strs) < need {
		b.strs = make([]byte, 0, need)
	}
	start := len(b.strs)
	b.strs = append(b.strs, wallet...)
	w := b.strs[start:len(b.strs)]
	start = len(b.strs)
	b.strs = append(append(b.strs, "acapy::webhook::"...), topic...)
	b.events = append(b.events, acapy.Event{Topic: b.strs[start:len(b.strs)], WalletID: w, Payload: body})
	if !s.cfg.RecordEvents {
		return nil
	}
	state, strs, ok := acapy.StringMember(body, b.strs, "state")
	b.strs = strs
	if !ok || len(state) == 0 {
		return nil
	}
	start = len(b.strs)
	b.strs = append(append(append(append(b.strs, "acapy::record::"...), topic...), "::"...), state...)
	b.events = append(b.events, acapy.Event{Topic: b.strs[start:len(b.strs)], WalletID: w, Payload: body})
	return nil
}
