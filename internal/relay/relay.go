// Package relay is the `herald relay` service: the drop-in replacement for the reference relay of
// ACA-Py's redis_events plugin. It takes DIDComm messages over HTTP and WebSocket, queues each on
// the list of its recipient key with the plugin's bookkeeping (atomic, in one script call), and
// answers requests that ask for a direct response with the response ACA-Py queues for them.
package relay

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/recipkey"
	"github.com/heraldhq/herald/internal/service"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
	"github.com/valyala/fasthttp"
)

// Relay queues inbound messages. Handlers of every listener share one.
type Relay struct {
	cfg     config.Relay
	ctx     context.Context // ends when the relay shuts down; WebSocket sessions run under it
	c       rueidis.Client
	assign  *recipkey.Assigner
	waiters waiters
	log     *slog.Logger

	requests  *prometheus.CounterVec // by transport and outcome
	responses *prometheus.CounterVec // direct responses by outcome
	queueTime prometheus.Histogram   // bookkeeping and RPUSH of one message
	up        prometheus.Gauge
	bufs      sync.Pool

	wsPing, wsIdle time.Duration // WebSocket keepalive
}

// Outcome of one inbound message, as the metrics and logs name it.
const (
	outQueued      = "queued"
	outRejected    = "rejected"
	outUnavailable = "unavailable"
)

// New returns a Relay on client c, registering its metrics on m.
func New(cfg config.Relay, c rueidis.Client, m *metrics.Metrics, log *slog.Logger) *Relay {
	r := &Relay{
		cfg:    cfg,
		ctx:    context.Background(),
		c:      c,
		assign: recipkey.New(c, cfg.Stale),
		log:    log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "herald_relay_messages_total",
			Help: "Inbound messages by transport and outcome (queued, rejected, unavailable)."}, []string{"transport", "outcome"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "herald_relay_direct_responses_total",
			Help: "Direct responses by outcome: answered, timeout, forwarded (popped here for a request on another relay)."}, []string{"outcome"}),
		up: m.BrokerUp,
	}
	r.waiters.m = map[string]chan acapy.DirectResponse{}
	r.wsPing, r.wsIdle = wsPing, wsIdle
	r.queueTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "herald_relay_queue_seconds",
		Help:    "Time to book and queue one message in Redis, from the relay's side (direct-response waits excluded).",
		Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .02, .05, .1, .5, 1, 5}})
	m.Registry().MustRegister(r.requests, r.responses, r.queueTime)
	return r
}

// Result is what the relay answers for one message.
type Result struct {
	Status   int                   // HTTP status: 200, 400 with Reason, 503 with Reason
	Reason   string                // why the message was not queued
	Response *acapy.DirectResponse // the direct response, when one was asked for and came in time
}

// Handle queues one message that arrived over transport and, when it asks for a direct response,
// waits for it (at most the configured wait, or until ctx ends).
func (r *Relay) Handle(ctx context.Context, body []byte, transport string) Result {
	p, err := acapy.ParsePacked(body)
	if err != nil {
		r.requests.WithLabelValues(transport, outRejected).Inc()
		return Result{Status: 400, Reason: err.Error()}
	}
	return r.queue(ctx, p, body, transport)
}

// queue is Handle for a message already parsed.
func (r *Relay) queue(ctx context.Context, p acapy.Packed, body []byte, transport string) Result {
	start := time.Now()
	var txn string
	var reply chan acapy.DirectResponse
	if p.ReturnRoute {
		txn = newTxnID()
		reply = r.waiters.add(txn)
		defer r.waiters.remove(txn)
	}
	bp, _ := r.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	entry := acapy.AppendInbound((*bp)[:0], body, txn, transport)
	err := r.assign.Queue(ctx, r.cfg.InboundTopic, p.RecipientKey, entry)
	*bp = entry
	r.bufs.Put(bp)
	if err != nil {
		r.requests.WithLabelValues(transport, outUnavailable).Inc()
		if errors.Is(err, recipkey.ErrNoInstance) {
			return Result{Status: 503, Reason: err.Error()}
		}
		r.up.Set(0)
		r.log.Warn("queueing an inbound message failed; answering 503", "err", err)
		return Result{Status: 503, Reason: "redis unavailable"}
	}
	r.up.Set(1)
	r.requests.WithLabelValues(transport, outQueued).Inc()
	r.queueTime.Observe(time.Since(start).Seconds())
	if reply == nil {
		return Result{Status: 200}
	}
	t := time.NewTimer(r.cfg.ResponseWait)
	defer t.Stop()
	select {
	case resp := <-reply:
		r.responses.WithLabelValues("answered").Inc()
		return Result{Status: 200, Response: &resp}
	case <-t.C:
		r.responses.WithLabelValues("timeout").Inc()
		return Result{Status: 200}
	case <-ctx.Done():
		return Result{Status: 200}
	}
}

// newTxnID is a random UUID version 4, as Python's uuid4.
func newTxnID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// waiters maps a transaction id to the request waiting for its direct response. One reader per
// list fills it; no request polls.
type waiters struct {
	mu sync.Mutex
	m  map[string]chan acapy.DirectResponse
}

func (w *waiters) add(txn string) chan acapy.DirectResponse {
	ch := make(chan acapy.DirectResponse, 1)
	w.mu.Lock()
	w.m[txn] = ch
	w.mu.Unlock()
	return ch
}

func (w *waiters) remove(txn string) {
	w.mu.Lock()
	delete(w.m, txn)
	w.mu.Unlock()
}

// deliver hands resp to its waiter; false when nobody waits for it (any more).
func (w *waiters) deliver(resp acapy.DirectResponse) bool {
	w.mu.Lock()
	ch, ok := w.m[resp.TxnID]
	delete(w.m, resp.TxnID)
	w.mu.Unlock()
	if ok {
		ch <- resp
	}
	return ok
}

// readResponses pops direct responses from list until ctx ends. A blocking pop with a short
// timeout, so that shutdown is prompt and an outage is noticed.
func (r *Relay) readResponses(ctx context.Context, list string) {
	var backoff time.Duration
	for ctx.Err() == nil {
		kv, err := r.c.Do(ctx, r.c.B().Blpop().Key(list).Timeout(1).Build()).AsStrSlice()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			r.log.Warn("reading direct responses failed; retrying", "list", list, "err", err, "retry_in", backoff)
			engine.Sleep(ctx, backoff)
			continue
		}
		backoff = 0
		if len(kv) != 2 {
			continue
		}
		resp, err := acapy.ParseDirectResponse([]byte(kv[1]))
		if err != nil {
			r.log.Error("malformed direct response dropped", "list", list, "err", err)
			continue
		}
		if r.waiters.deliver(resp) {
			continue
		}
		// Not waited for here: the request may be on another relay reading the same list.
		// Every relay listens on the forwarding channel and takes what is its own.
		if err := r.c.Do(ctx, r.c.B().Publish().Channel(r.forwardChannel()).Message(kv[1]).Build()).Error(); err != nil {
			r.log.Warn("forwarding a direct response to the other relays failed", "txn_id", resp.TxnID, "err", err)
		}
		r.responses.WithLabelValues("forwarded").Inc()
	}
}

// forwardChannel is the pub/sub channel through which relays sharing a Redis hand each other the
// direct responses one of them popped for a request another one holds.
func (r *Relay) forwardChannel() string { return "herald:" + r.cfg.InboundTopic + ":direct_responses" }

// listenForwarded delivers the direct responses other relays forward, until ctx ends. A response
// for a request that is not here either is dropped: it timed out, or its relay is gone.
func (r *Relay) listenForwarded(ctx context.Context) {
	for ctx.Err() == nil {
		err := r.c.Receive(ctx, r.c.B().Subscribe().Channel(r.forwardChannel()).Build(), func(msg rueidis.PubSubMessage) {
			if resp, err := acapy.ParseDirectResponse([]byte(msg.Message)); err == nil {
				r.waiters.deliver(resp)
			}
		})
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("listening for forwarded direct responses failed; retrying in 1 s", "err", err)
		engine.Sleep(ctx, time.Second)
	}
}

// Run serves until ctx is cancelled, then stops accepting and lets requests finish (at most 5 s).
func Run(ctx context.Context, cfg config.Relay, log *slog.Logger) error {
	base, ok, err := service.Start(ctx, "relay", cfg.Status, cfg.Redis.URL, log)
	if !ok {
		return err
	}
	defer base.Close()
	client, m := base.Client, base.Metrics
	if err := recipkey.CheckPlacement(ctx, client); err != nil {
		return err
	}
	r := New(cfg, client, m, log)
	sessions, endSessions := context.WithCancel(context.Background())
	defer endSessions()
	r.ctx = sessions
	readCtx, stopReading := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	for _, list := range cfg.DirectResponses {
		readers.Add(1)
		go func() { defer readers.Done(); r.readResponses(readCtx, list) }()
	}
	readers.Add(1)
	go func() { defer readers.Done(); r.listenForwarded(readCtx) }()
	defer func() { stopReading(); readers.Wait() }()

	servers := make([]*fasthttp.Server, 0, len(cfg.Listeners))
	errs := make(chan error, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		ln, err := net.Listen("tcp", l.Addr())
		if err != nil {
			for _, s := range servers {
				_ = s.Shutdown()
			}
			return fmt.Errorf("INBOUND_TRANSPORT_CONFIG: %s listener on %s: %w", l.Transport, l.Addr(), err)
		}
		s := r.server(l.Transport)
		servers = append(servers, s)
		go func() { errs <- s.Serve(ln) }()
		log.Info("herald relay listening", "transport", l.Transport, "addr", ln.Addr().String())
	}
	base.Listening.Store(true)
	log.Info("herald relay started", "redis", config.RedactURL(cfg.Redis.URL), "inbound_topic", cfg.InboundTopic,
		"direct_response_lists", cfg.DirectResponses, "response_wait", cfg.ResponseWait, "max_body", cfg.MaxBody)

	select {
	case <-ctx.Done():
	case err := <-errs:
		log.Error("a listener stopped", "err", err)
	}
	base.Listening.Store(false)
	log.Info("herald relay stopping: no new requests; waiting for open ones (at most 5 s)")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.ShutdownWithContext(sctx)
	}
	return nil
}
