// Package status serves the reference services' status endpoints (/status/ready, /status/live,
// guarded by the access_token header), plus Prometheus /metrics and Go's /debug/pprof behind the
// same key, on one fasthttp listener.
package status

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// Checks are what the status endpoints report.
type Checks struct {
	// Ready answers /status/ready.
	Ready func() bool
	// Live answers /status/live; it is given a context with a 2 s deadline.
	Live func(ctx context.Context) bool
}

// Server is the status listener.
type Server struct {
	addr    string
	keySum  [sha256.Size]byte
	checks  Checks
	log     *slog.Logger
	srv     *fasthttp.Server
	ln      net.Listener
	metrics fasthttp.RequestHandler
	pprof   fasthttp.RequestHandler
}

// New prepares a status server on addr; Start listens.
func New(addr, apiKey string, checks Checks, reg *prometheus.Registry, log *slog.Logger) *Server {
	s := &Server{addr: addr, keySum: sha256.Sum256([]byte(apiKey)), checks: checks, log: log}
	s.metrics = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	s.pprof = fasthttpadaptor.NewFastHTTPHandler(mux)
	s.srv = &fasthttp.Server{
		Handler:            s.handle,
		Name:               "herald",
		ReadTimeout:        10 * time.Second,
		WriteTimeout:       60 * time.Second, // a CPU profile streams for up to 30 s
		IdleTimeout:        60 * time.Second,
		MaxRequestBodySize: 64 << 10,
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				writeJSON(ctx, fasthttp.StatusRequestEntityTooLarge, `{"detail":"Request body too large"}`)
				return
			}
			writeJSON(ctx, fasthttp.StatusBadRequest, `{"detail":"Malformed request"}`)
		},
	}
	return s
}

// ListenAddr joins host and port, rejecting a port that is not a number in range.
func ListenAddr(host, port string) (string, error) {
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", fmt.Errorf("STATUS_ENDPOINT_PORT: want a port number, got %q", port)
	}
	return net.JoinHostPort(host, port), nil
}

// Start binds the listener (an error is returned at once) and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.ln = ln
	go func() {
		if err := s.srv.Serve(ln); err != nil {
			s.log.Error("status server stopped", "err", err)
		}
	}()
	return nil
}

// Addr is the bound address.
func (s *Server) Addr() string {
	if s.ln == nil {
		return s.addr
	}
	return s.ln.Addr().String()
}

// Shutdown stops the server, waiting for open requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.ln == nil {
		return nil
	}
	return s.srv.ShutdownWithContext(ctx)
}

// authorized compares digests so that neither the key's content nor its length leaks by timing.
func (s *Server) authorized(ctx *fasthttp.RequestCtx) bool {
	got := sha256.Sum256(ctx.Request.Header.Peek("access_token"))
	return subtle.ConstantTimeCompare(got[:], s.keySum[:]) == 1
}

func writeJSON(ctx *fasthttp.RequestCtx, code int, body string) {
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	ctx.SetBodyString(body)
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	known := path == "/status/ready" || path == "/status/live" || path == "/metrics" ||
		strings.HasPrefix(path, "/debug/pprof/")
	if !known {
		writeJSON(ctx, fasthttp.StatusNotFound, `{"detail":"Not Found"}`)
		return
	}
	if !ctx.IsGet() && !ctx.IsHead() && !(ctx.IsPost() && path == "/debug/pprof/symbol") {
		writeJSON(ctx, fasthttp.StatusMethodNotAllowed, `{"detail":"Method Not Allowed"}`)
		return
	}
	if !s.authorized(ctx) {
		s.log.Debug("status request with a wrong or missing access_token", "path", path, "remote", ctx.RemoteAddr().String())
		writeJSON(ctx, fasthttp.StatusForbidden, `{"detail":"Could not validate key"}`)
		return
	}
	switch path {
	case "/status/ready":
		writeJSON(ctx, fasthttp.StatusOK, `{"ready":`+strconv.FormatBool(s.checks.Ready != nil && s.checks.Ready())+`}`)
	case "/status/live":
		alive := false
		if s.checks.Live != nil {
			c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			alive = s.checks.Live(c)
			cancel()
		}
		writeJSON(ctx, fasthttp.StatusOK, `{"alive":`+strconv.FormatBool(alive)+`}`)
	case "/metrics":
		s.metrics(ctx)
	default:
		s.pprof(ctx)
	}
}

// Serve starts the status listener when host, port and key are all set (the reference serves
// nothing otherwise) and returns the function that stops it; with the listener off it returns a
// no-op. A listener that cannot bind is an error.
func Serve(host, port, apiKey string, checks Checks, reg *prometheus.Registry, log *slog.Logger) (stop func(), err error) {
	if host == "" || port == "" || apiKey == "" {
		return func() {}, nil
	}
	addr, err := ListenAddr(host, port)
	if err != nil {
		return nil, err
	}
	srv := New(addr, apiKey, checks, reg, log)
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("status endpoint: %w", err)
	}
	log.Info("status endpoint listening", "addr", srv.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
