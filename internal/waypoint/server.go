package waypoint

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// Options shape a Server.
type Options struct {
	Auth       Auth
	Timeout    time.Duration // a stream with no match closes after this long
	Ping       time.Duration // keep-alive comment interval
	LookBack   time.Duration // look_back when the request gives none (or 0)
	MaxStreams int
	// Ready reports whether the event source is reachable, for /health/ready.
	Ready    func() bool
	Registry *prometheus.Registry // /metrics; the server's own collectors are added to it
	Log      *slog.Logger
}

// Server answers the SSE route and the health and metrics endpoints.
type Server struct {
	hub  *Hub
	opt  Options
	log  *slog.Logger
	srv  *fasthttp.Server
	prom fasthttp.RequestHandler

	open    atomic.Int64
	streams sync.WaitGroup

	openGauge                        prometheus.GaugeFunc
	matched, timedOut, gone, refused prometheus.Counter
	replayed                         prometheus.Counter
}

const route = "/v1/sse/"

// NewServer serves the waiters of hub.
func NewServer(hub *Hub, opt Options) *Server {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Registry == nil {
		opt.Registry = prometheus.NewRegistry()
	}
	s := &Server{hub: hub, opt: opt, log: opt.Log}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		opt.Registry.MustRegister(c)
		return c
	}
	s.openGauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "herald_sse_open_streams",
		Help: "Streams open now."}, func() float64 { return float64(s.open.Load()) })
	opt.Registry.MustRegister(s.openGauge)
	s.matched = counter("herald_sse_matched_total", "Streams answered with their event.")
	s.replayed = counter("herald_sse_replayed_total", "Streams answered from the replay window (look_back), a subset of matched.")
	s.timedOut = counter("herald_sse_timed_out_total", "Streams closed with no event at the timeout.")
	s.gone = counter("herald_sse_disconnected_total", "Streams whose client went away before their event.")
	s.refused = counter("herald_sse_refused_total", "Requests refused before a stream opened (bad path, authentication, limit).")
	s.prom = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(opt.Registry, promhttp.HandlerOpts{}))
	s.srv = &fasthttp.Server{
		Handler: s.handle,
		Name:    "herald",
		// A stream outlives any read timeout; the request itself must arrive promptly.
		ReadTimeout:                  10 * time.Second,
		IdleTimeout:                  60 * time.Second,
		MaxRequestBodySize:           4 << 10,
		DisablePreParseMultipartForm: true,
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			writeJSON(ctx, fasthttp.StatusBadRequest, `{"detail":"Malformed request"}`)
		},
	}
	return s
}

// Serve accepts on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// Shutdown stops accepting, closes every open stream (with no data, as a timeout would) and
// waits for them until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.hub.Close()
	err := s.srv.ShutdownWithContext(ctx)
	done := make(chan struct{})
	go func() { s.streams.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}

func writeJSON(ctx *fasthttp.RequestCtx, code int, body string) {
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	ctx.SetBodyString(body)
}

func (s *Server) refuse(ctx *fasthttp.RequestCtx, code int, body string) {
	s.refused.Inc()
	writeJSON(ctx, code, body)
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	if !ctx.IsGet() && !ctx.IsHead() {
		writeJSON(ctx, fasthttp.StatusMethodNotAllowed, `{"detail":"Method Not Allowed"}`)
		return
	}
	switch {
	case bytes.HasPrefix(path, []byte(route)):
		if !ctx.IsGet() {
			writeJSON(ctx, fasthttp.StatusMethodNotAllowed, `{"detail":"Method Not Allowed"}`)
			return
		}
		s.stream(ctx)
	case string(path) == "/health/live":
		writeJSON(ctx, fasthttp.StatusOK, `{"status":"live"}`)
	case string(path) == "/health/ready":
		if s.opt.Ready == nil || s.opt.Ready() {
			writeJSON(ctx, fasthttp.StatusOK, `{"status":"ready"}`)
		} else {
			writeJSON(ctx, fasthttp.StatusServiceUnavailable, `{"status":"not ready","detail":"event source unreachable"}`)
		}
	case string(path) == "/metrics":
		s.prom(ctx)
	default:
		writeJSON(ctx, fasthttp.StatusNotFound, `{"detail":"Not Found"}`)
	}
}

// segments splits the path after the route into its five segments, each percent-decoded on its
// own so that an encoded '/' cannot move a boundary.
func segments(raw []byte) ([5]string, error) {
	var out [5]string
	parts := strings.Split(string(raw), "/")
	if len(parts) != 5 {
		return out, errors.New("want /v1/sse/{wallet_id}/{topic}/{field}/{field_id}/{desired_state}")
	}
	for i, p := range parts {
		v, err := url.PathUnescape(p)
		if err != nil || v == "" {
			return out, errors.New("want /v1/sse/{wallet_id}/{topic}/{field}/{field_id}/{desired_state}, each segment non-empty and well escaped")
		}
		out[i] = v
	}
	return out, nil
}

// literal refuses what would widen a subject-based subscription upstream: wildcards, the subject
// separator and whitespace. Herald's index matches exactly anyway; the point is a clear 400
// rather than a stream that can never match.
func literal(name, v string) error {
	if v == "" || strings.ContainsAny(v, "*>. \t\r\n") {
		return errors.New(name + " must not be empty or contain '*', '>', '.' or whitespace")
	}
	return nil
}

// detail is the JSON body of a refusal; msg is one of this file's own messages, which need no
// escaping.
func detail(msg string) string { return `{"detail":"` + msg + `"}` }

func (s *Server) stream(ctx *fasthttp.RequestCtx) {
	seg, err := segments(ctx.URI().PathOriginal()[len(route):])
	if err != nil {
		s.refuse(ctx, fasthttp.StatusNotFound, detail(err.Error()))
		return
	}
	wallet, topic, field, fieldID, state := seg[0], seg[1], seg[2], seg[3], seg[4]
	args := ctx.QueryArgs()
	group := string(args.Peek("group_id"))
	for _, c := range [...]struct{ name, v string }{{"wallet_id", wallet}, {"topic", topic}, {"desired_state", state}} {
		if err := literal(c.name, c.v); err != nil {
			s.refuse(ctx, fasthttp.StatusBadRequest, detail(err.Error()))
			return
		}
	}
	if args.Has("group_id") {
		if err := literal("group_id", group); err != nil {
			s.refuse(ctx, fasthttp.StatusBadRequest, detail(err.Error()))
			return
		}
	}
	lookBack := s.opt.LookBack
	if args.Has("look_back") {
		n, err := strconv.Atoi(string(args.Peek("look_back")))
		if err != nil || n < 0 {
			s.refuse(ctx, fasthttp.StatusBadRequest, detail("look_back must be a whole number of seconds, 0 for the default"))
			return
		}
		if n > 0 {
			lookBack = time.Duration(n) * time.Second
		}
	}
	key := ctx.Request.Header.Peek("x-api-key")
	group, denied := s.opt.Auth.Check(key, key != nil, wallet, group)
	if denied != nil {
		s.log.Debug("SSE request refused", "status", denied.Status, "remote", ctx.RemoteAddr().String())
		s.refuse(ctx, denied.Status, denied.Body)
		return
	}
	if s.opt.MaxStreams > 0 && s.open.Load() >= int64(s.opt.MaxStreams) {
		ctx.Response.Header.Set("Retry-After", "1")
		s.refuse(ctx, fasthttp.StatusServiceUnavailable, `{"detail":"too many open streams"}`)
		return
	}
	w := NewWaiter(wallet, topic, state, field, fieldID, group, lookBack)
	s.open.Add(1)
	s.streams.Add(1)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		defer s.streams.Done()
		defer s.open.Add(-1)
		s.serve(c, w)
	})
}

const head = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: text/event-stream; charset=utf-8\r\n" +
	"Cache-Control: no-store\r\n" +
	"X-Accel-Buffering: no\r\n" +
	"Transfer-Encoding: chunked\r\n" +
	"Connection: close\r\n" +
	"Server: herald\r\n\r\n"

// lastChunk ends the chunked body: the stream is over.
const lastChunk = "0\r\n\r\n"

// writeWait bounds every write: a client that stopped reading is dropped, not waited for.
const writeWait = 10 * time.Second

// serve runs one stream on its hijacked connection, in the one goroutine the stream has: it
// sleeps in Read, which returns when the client goes away, when the deadline set for the next
// ping or the timeout passes, or when Publish pokes the deadline because the event came.
func (s *Server) serve(c net.Conn, w *Waiter) {
	w.conn = c
	buf := make([]byte, 0, 512)
	buf = append(buf, head...)
	if e := s.hub.Wait(w); e != nil {
		s.replayed.Inc()
		s.answer(c, buf, e)
		return
	}
	if w.closed.Load() {
		s.write(c, append(buf, lastChunk...))
		return
	}
	if !s.write(c, buf) {
		s.hub.Cancel(w)
		return
	}
	now := time.Now()
	deadline := now.Add(s.opt.Timeout)
	nextPing := now.Add(s.opt.Ping)
	var rb [64]byte
	for {
		_ = c.SetReadDeadline(minTime(deadline, nextPing))
		// Publish stores the event before it pokes the deadline, so once the deadline above is
		// set, either the event is visible here or the poke is still to come.
		if e := w.ev.Load(); e != nil {
			s.answer(c, buf[:0], e)
			return
		}
		if w.closed.Load() {
			s.write(c, append(buf[:0], lastChunk...))
			return
		}
		_, err := c.Read(rb[:])
		if err == nil {
			continue // the client may send anything after its request: it is not read
		}
		if !isTimeout(err) {
			if s.hub.Cancel(w) {
				s.gone.Inc()
				return
			}
			continue // the event (or shutdown) came first: try to write it
		}
		now = time.Now()
		if !now.Before(deadline) {
			if s.hub.Cancel(w) {
				s.timedOut.Inc()
				s.write(c, append(buf[:0], lastChunk...))
				return
			}
			continue
		}
		if !now.Before(nextPing) {
			nextPing = now.Add(s.opt.Ping)
			if !s.write(c, appendPing(buf[:0], now)) {
				if s.hub.Cancel(w) {
					s.gone.Inc()
					return
				}
			}
		}
	}
}

// answer writes e's frame as one chunk, then ends the body.
func (s *Server) answer(c net.Conn, buf []byte, e *Event) {
	s.matched.Inc()
	buf = strconv.AppendInt(buf, int64(len(e.Frame)), 16)
	buf = append(buf, "\r\n"...)
	buf = append(buf, e.Frame...)
	buf = append(buf, "\r\n"+lastChunk...)
	s.write(c, buf)
}

func appendPing(buf []byte, now time.Time) []byte {
	var line [64]byte
	l := append(line[:0], ": ping - "...)
	l = now.UTC().AppendFormat(l, "2006-01-02 15:04:05.000000+00:00")
	l = append(l, "\n\n"...)
	buf = strconv.AppendInt(buf, int64(len(l)), 16)
	buf = append(buf, "\r\n"...)
	buf = append(buf, l...)
	return append(buf, "\r\n"...)
}

func (s *Server) write(c net.Conn, b []byte) bool {
	_ = c.SetWriteDeadline(time.Now().Add(writeWait))
	_, err := c.Write(b)
	return err == nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
