package natsq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrNotConnected is returned while the connection to NATS is down and nats.go is reconnecting.
var ErrNotConnected = errors.New("natsq: not connected to NATS (reconnecting)")

// Connect dials url (one server or a comma-separated list) with reconnection that never gives up,
// and waits until the first connection is up or ctx ends (then its error wraps ctx's). A NATS
// server that is down when a service starts is waited out, not fatal. Disconnects and
// reconnects are logged with log, credentials hidden. What is published while the connection is
// down (acknowledgments above all) is buffered and sent once it is back. extra options (a
// credentials file, say) come after Herald's own.
func Connect(ctx context.Context, url string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	if log == nil {
		log = slog.Default()
	}
	shown := redactURL(url)
	up := make(chan struct{})
	var upOnce sync.Once
	markUp := func() { upOnce.Do(func() { close(up) }) }
	closed := make(chan struct{})
	// nats.go runs the handlers one at a time on its callback goroutine, so failures needs no lock.
	var failures int
	opts := []nats.Option{
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250 * time.Millisecond),
		// Every unsettled message's ack or NAK may land here during an outage; losing one
		// only redelivers, but a full buffer turns acks into errors the pipeline retries.
		nats.ReconnectBufSize(16 << 20),
		// nats.go's default of two unanswered pings two minutes apart leaves a silently
		// partitioned server looking connected for four minutes, during which pulls just
		// come back empty.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.ConnectHandler(func(c *nats.Conn) {
			log.Info("connected to NATS", "nats", redactURL(c.ConnectedUrl()))
			markUp()
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("reconnected to NATS", "nats", redactURL(c.ConnectedUrl()))
			failures = 0
			markUp()
		}),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if c.IsClosed() {
				return // Close reports a disconnect as well, which is no outage
			}
			log.Warn("disconnected from NATS; reconnecting", "nats", shown, "err", err)
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			// One line per attempt would be three a second; the first and then every
			// fortieth (ten seconds or so) say as much.
			if failures%40 == 0 {
				log.Warn("cannot reach NATS; retrying", "nats", shown, "err", err, "attempts", failures+1)
			}
			failures++
		}),
		nats.ClosedHandler(func(c *nats.Conn) {
			if err := c.LastError(); err != nil {
				log.Error("NATS connection closed", "nats", shown, "err", err)
			}
			close(closed)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("NATS asynchronous error", "nats", shown, "subject", subject, "err", err)
		}),
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("natsq: connecting to %s: %w", shown, err)
	}
	if nc.IsConnected() {
		return nc, nil
	}
	select {
	case <-up:
		return nc, nil
	case <-closed:
		err := nc.LastError()
		if err == nil {
			err = nats.ErrConnectionClosed
		}
		return nil, fmt.Errorf("natsq: connecting to %s: %w", shown, err)
	case <-ctx.Done():
		nc.Close()
		return nil, fmt.Errorf("natsq: NATS at %s not reachable: %w", shown, ctx.Err())
	}
}

// redactURL returns a NATS server URL, or a comma-separated list of them, fit for a log: a
// password is replaced, and so is a user given without one, since NATS reads that as a token.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "://") {
			p = "nats://" + p // nats.go's own default, without which host:port does not parse
		}
		u, err := url.Parse(p)
		if err != nil {
			parts[i] = "(unparsable URL)"
			continue
		}
		if u.User != nil {
			if _, ok := u.User.Password(); ok {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			} else {
				u.User = url.User("xxxxx")
			}
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// awaitConnection returns nil once nc is connected, or ErrNotConnected when ctx ends or limit
// passes first (limit <= 0: no limit but ctx). It polls because an outage is rare and short-lived
// while a status listener would have to be registered and removed on every call.
func awaitConnection(ctx context.Context, nc *nats.Conn, limit time.Duration) error {
	if nc.IsConnected() {
		return nil
	}
	var expired <-chan time.Time
	if limit > 0 {
		t := time.NewTimer(limit)
		defer t.Stop()
		expired = t.C
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNotConnected, ctx.Err())
		case <-expired:
			return ErrNotConnected
		case <-tick.C:
			if nc.IsConnected() {
				return nil
			}
			if nc.IsClosed() {
				return nats.ErrConnectionClosed
			}
		}
	}
}
