// Package service starts what every Redis-backed listener service (relay, events) begins with:
// its metrics, its status listener and its Redis client, in the order that keeps the status
// endpoints truthful while Redis is still out of reach.
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

// Base is a started service: /status/ready answers Listening, /status/live whether every Redis
// node answers PING.
type Base struct {
	Metrics *metrics.Metrics
	Client  rueidis.Client
	// Listening is set by the service once its listeners accept requests.
	Listening atomic.Bool

	client     atomic.Pointer[rueidis.Client]
	stopStatus func()
}

// Start serves the status endpoints (when configured), then connects to Redis, waiting for it
// until ctx ends. ok is false when ctx ended first: nothing was started that needs stopping
// beyond Close.
func Start(ctx context.Context, name string, st config.Status, redisURL string, log *slog.Logger) (b *Base, ok bool, err error) {
	b = &Base{Metrics: metrics.New(name), stopStatus: func() {}}
	b.stopStatus, err = status.Serve(st.Host, st.Port, st.APIKey, status.Checks{
		Ready: b.Listening.Load,
		Live: func(ctx context.Context) bool {
			c := b.client.Load()
			return c != nil && redisq.PingAll(ctx, *c) == nil
		},
	}, b.Metrics.Registry(), log)
	if err != nil {
		return nil, false, err
	}
	c, err := redisq.Connect(ctx, redisURL, log)
	if err != nil {
		b.stopStatus()
		return nil, false, nil // cancelled while waiting for Redis
	}
	b.Client = c
	b.client.Store(&c)
	b.Metrics.BrokerUp.Set(1)
	return b, true, nil
}

// Close closes the Redis client and stops the status listener.
func (b *Base) Close() {
	b.Client.Close()
	b.stopStatus()
}
