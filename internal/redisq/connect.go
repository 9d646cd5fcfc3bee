package redisq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/heraldhq/herald/internal/config"
	"github.com/redis/rueidis"
)

// Connect returns a client for url (standalone or cluster, found out by rueidis), waiting out a
// Redis that is not up yet with a capped backoff until ctx ends: a service started before its
// Redis comes up rather than crashing.
func Connect(ctx context.Context, url string, log *slog.Logger) (rueidis.Client, error) {
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opt.DisableCache = true
	opt.ConnWriteTimeout = 5 * time.Second
	backoff := 100 * time.Millisecond
	for {
		c, err := rueidis.NewClient(opt)
		if err == nil {
			return c, nil
		}
		log.Warn("cannot reach Redis yet; retrying", "redis", config.RedactURL(url), "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// PingAll pings every node c knows (every primary of a cluster), as the reference's liveness
// check does.
func PingAll(ctx context.Context, c rueidis.Client) error {
	for addr, node := range c.Nodes() {
		if err := node.Do(ctx, node.B().Ping().Build()).Error(); err != nil {
			return fmt.Errorf("redis %s: %w", addr, err)
		}
	}
	return nil
}
