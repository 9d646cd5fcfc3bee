// Package service starts what every service begins with: its metrics, its status listener and
// its broker connection, in the order that keeps the status endpoints truthful while the broker
// is still out of reach.
package service

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/status"
	"github.com/redis/rueidis"
)

// Status is a started status listener: /status/ready answers Listening (or the check SetReady
// gives), /status/live the check set once the broker is connected (until then the service is
// not live).
type Status struct {
	Metrics *metrics.Metrics
	// Listening is set by the service once its listeners accept requests.
	Listening atomic.Bool

	ready atomic.Pointer[func() bool]
	live  atomic.Pointer[func(context.Context) bool]
	stop  func()
}

// StartStatus serves the status endpoints when configured.
func StartStatus(name string, st config.Status, log *slog.Logger) (*Status, error) {
	s := &Status{Metrics: metrics.New(name), stop: func() {}}
	var err error
	s.stop, err = status.Serve(st.Host, st.Port, st.APIKey, status.Checks{
		Ready: func() bool {
			if f := s.ready.Load(); f != nil {
				return (*f)()
			}
			return s.Listening.Load()
		},
		Live: func(ctx context.Context) bool {
			f := s.live.Load()
			return f != nil && (*f)(ctx)
		},
	}, s.Metrics.Registry(), log)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// SetReady replaces Listening as the readiness check: a service without listeners (the
// deliverer) is ready while its source answers.
func (s *Status) SetReady(f func() bool) { s.ready.Store(&f) }

// SetLive sets the liveness check.
func (s *Status) SetLive(f func(context.Context) bool) { s.live.Store(&f) }

// Stop stops the status listener.
func (s *Status) Stop() { s.stop() }

// Base is a started Redis-backed service: live when every Redis node answers PING.
type Base struct {
	*Status
	Client rueidis.Client
}

// Start serves the status endpoints (when configured), then connects to Redis, waiting for it
// until ctx ends. ok is false when ctx ended first: nothing was started that needs stopping
// beyond Close.
func Start(ctx context.Context, name string, st config.Status, redisURL string, log *slog.Logger) (b *Base, ok bool, err error) {
	s, err := StartStatus(name, st, log)
	if err != nil {
		return nil, false, err
	}
	c, err := redisq.Connect(ctx, redisURL, log)
	if err != nil {
		s.Stop()
		return nil, false, nil // cancelled while waiting for Redis
	}
	s.SetLive(func(ctx context.Context) bool { return redisq.PingAll(ctx, c) == nil })
	s.Metrics.BrokerUp.Set(1)
	return &Base{Status: s, Client: c}, true, nil
}

// Close closes the Redis client and stops the status listener.
func (b *Base) Close() {
	b.Client.Close()
	b.Stop()
}
