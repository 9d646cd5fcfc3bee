package waypoint

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/natsq"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Run serves `herald waypoint` until ctx ends: the listener first, so that /health answers (not
// ready) while NATS is still out of reach, then the source.
func Run(ctx context.Context, cfg config.Waypoint, log *slog.Logger) error {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return &config.Error{Key: "HERALD_LISTEN", Reason: err.Error()}
	}
	m := metrics.New("waypoint")
	hub := NewHub(cfg.LookBack, cfg.ReplayMax)
	var ready atomic.Pointer[source] // set once the source is open: not ready until then
	srv := NewServer(hub, Options{
		Auth: Auth{GovernanceKey: cfg.GovernanceKey, TenantAdminKey: cfg.TenantAdminKey,
			TenantAdminGroup: cfg.TenantAdminGroup, JWTSecret: cfg.JWTSecret},
		Timeout: cfg.Timeout, Ping: cfg.Ping, LookBack: cfg.LookBack, MaxStreams: cfg.MaxStreams,
		Ready:    func() bool { s := ready.Load(); return s != nil && (*s).Ready() },
		Registry: m.Registry(), Log: log,
	})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("waypoint listening", "addr", ln.Addr().String(), "timeout", cfg.Timeout, "look_back", cfg.LookBack)

	src, err := openSource(ctx, cfg, hub, m.Registry(), log)
	if err != nil {
		shutdown(srv, log)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	ready.Store(&src)
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	select {
	case <-ctx.Done():
	case err = <-served:
		log.Error("SSE listener stopped", "err", err)
	}
	shutdown(srv, log)
	<-done
	return err
}

func shutdown(srv *Server, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("streams still open at shutdown", "err", err)
	}
}

// source is where events come from: a JetStream stream or a Redis list.
type source interface {
	Ready() bool
	Run(ctx context.Context)
}

func openSource(ctx context.Context, cfg config.Waypoint, hub *Hub, reg *prometheus.Registry, log *slog.Logger) (source, error) {
	if cfg.Source.Kind == config.KindRedis {
		return OpenListSource(ctx, cfg.Source, hub, reg, log)
	}
	var opts []nats.Option
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	nc, err := natsq.Connect(ctx, cfg.NATSURL, log, opts...)
	if err != nil {
		return nil, err
	}
	s, err := NewNATSSource(nc, cfg.Stream, cfg.Subject, cfg.LookBack, hub, reg, log)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	return natsRun{s, nc}, nil
}

// natsRun closes the connection when the source stops.
type natsRun struct {
	*NATSSource
	nc *nats.Conn
}

func (n natsRun) Run(ctx context.Context) {
	defer n.nc.Close()
	n.NATSSource.Run(ctx)
}
