package amqpq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// errClosed is what a Queue or Publisher answers once Close was called.
var errClosed = errors.New("amqpq: closed")

// live is one connection and the channels set up on it. It is never repaired: when anything in
// it fails it is marked lost and a new one replaces it, so that whoever holds a delivery of it
// can tell that the broker has already taken that delivery back.
type live struct {
	conn *amqp.Connection
	// ch consumes (a Queue) or publishes (a Publisher); it is in confirm mode.
	ch         *amqp.Channel
	deliveries <-chan amqp.Delivery
	acks       *acks // a Queue's acknowledgments of ch's deliveries
	decl       *declarer
	pool       *channels // a Publisher's channels, ch the first of them

	connClosed, chClosed chan *amqp.Error
	lost                 chan struct{}
	why                  error // why lost was closed
	once                 sync.Once
}

// gone reports whether the broker has taken back what was delivered on s: the channel closed,
// or is about to because s was given up.
func (s *live) gone() bool {
	select {
	case <-s.lost:
		return true
	default:
		return s.ch.IsClosed()
	}
}

// link keeps a live connection, replacing it with a fresh one (connection, channels,
// declarations, consumer) whenever it is lost. amqp091's own Config.Recovery is not used: it
// reuses channel objects across reconnections, so a delivery's channel could no longer tell
// whether the broker took the delivery back, and it stops after a bounded number of attempts.
type link struct {
	url  string // empty for Open: the caller's connection is used and never replaced
	what string // names the link in logs
	name string // the connection_name the broker shows
	log  *slog.Logger
	// setup declares what the link needs on a new connection and opens its channels.
	setup func(conn *amqp.Connection) (*live, error)

	mu      sync.Mutex
	cur     *live         // nil while disconnected
	changed chan struct{} // closed and replaced whenever cur changes or the link closes
	err     error         // why cur is nil
	closed  bool

	stop context.CancelFunc
	done chan struct{}
}

func newLink(rawURL, what, name string, log *slog.Logger, setup func(*amqp.Connection) (*live, error)) *link {
	if log == nil {
		log = slog.Default()
	}
	return &link{url: rawURL, what: what, name: name, log: log, setup: setup,
		changed: make(chan struct{}), err: errors.New("not connected yet")}
}

// dial connects, waiting out a broker that is down until ctx ends, and starts keeping the
// connection up. A broker that answers but refuses the set-up (bad credentials, a queue that
// exists with other arguments) fails at once: retrying cannot fix a configuration.
func (l *link) dial(ctx context.Context) error {
	if _, err := amqp.ParseURI(l.url); err != nil {
		return fmt.Errorf("amqpq: %s: %w", redact(l.url), err)
	}
	s, err := l.connect(ctx, true)
	if err != nil {
		return err
	}
	l.start(s)
	return nil
}

// start makes s current and watches it in the background until Close.
func (l *link) start(s *live) {
	ctx, stop := context.WithCancel(context.Background())
	l.stop = stop
	l.done = make(chan struct{})
	l.set(s, nil)
	go l.run(ctx, s)
}

func (l *link) run(ctx context.Context, s *live) {
	defer close(l.done)
	for {
		var why error
		select {
		case e := <-s.connClosed:
			why = closeReason("connection", e)
		case e := <-s.chClosed:
			why = closeReason("channel", e)
		case <-s.lost:
			why = s.why
			select { // the deliveries also end when the channel closes: name the real cause
			case e := <-s.chClosed:
				why = closeReason("channel", e)
			case e := <-s.connClosed:
				why = closeReason("connection", e)
			case <-time.After(100 * time.Millisecond):
			}
		case <-ctx.Done():
			if s.acks != nil {
				s.acks.flush() // what was acknowledged must not come back after a clean stop
			}
			l.lose(s, errClosed)
			l.teardown(s)
			return
		}
		l.lose(s, why)
		l.teardown(s)
		if l.url == "" {
			return
		}
		down := time.Now()
		l.log.Warn("lost the RabbitMQ connection; reconnecting", "amqp", redact(l.url), "for", l.what, "err", why)
		var err error
		if s, err = l.connect(ctx, false); err != nil {
			return
		}
		l.set(s, nil)
		l.log.Info("reconnected to RabbitMQ", "amqp", redact(l.url), "for", l.what, "down_for", time.Since(down).Round(time.Millisecond))
	}
}

func closeReason(what string, e *amqp.Error) error {
	if e == nil {
		return fmt.Errorf("the %s closed", what)
	}
	return fmt.Errorf("the %s closed: %w", what, e)
}

// teardown closes what s holds: the connection when the link owns it, with a deadline so that
// an unresponsive broker cannot hold up the reconnection; otherwise the channels, since closing
// them is what returns their unsettled deliveries to the queue.
func (l *link) teardown(s *live) {
	if l.url != "" {
		_ = s.conn.CloseDeadline(time.Now().Add(5 * time.Second))
		return
	}
	_ = s.ch.Close()
	s.decl.close()
}

// connect opens a connection and sets it up, retrying with a capped backoff until ctx ends.
func (l *link) connect(ctx context.Context, first bool) (*live, error) {
	backoff := 100 * time.Millisecond
	var warned time.Time
	for {
		s, err := l.open()
		if err == nil {
			return s, nil
		}
		if first && permanent(err) {
			return nil, fmt.Errorf("amqpq: %s at %s: %w", l.what, redact(l.url), err)
		}
		l.set(nil, err)
		// One warning at first and then every half minute: an outage of an hour is not
		// worth thousands of identical lines.
		level := slog.LevelDebug
		if time.Since(warned) >= 30*time.Second {
			level, warned = slog.LevelWarn, time.Now()
		}
		l.log.Log(ctx, level, "cannot reach RabbitMQ; retrying", "amqp", redact(l.url), "for", l.what, "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("amqpq: %s at %s: %w", l.what, redact(l.url), errors.Join(ctx.Err(), err))
		case <-t.C:
		}
		// A refused connection costs nothing, and a node that comes back is used within 2 s.
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (l *link) open() (*live, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(l.name)
	dial := amqp.DefaultDial(5 * time.Second)
	conn, err := amqp.DialConfig(l.url, amqp.Config{Properties: props, Dial: func(network, addr string) (net.Conn, error) {
		c, err := dial(network, addr)
		if err != nil {
			return nil, err
		}
		return newCoalescingConn(c), nil
	}})
	if err != nil {
		return nil, err
	}
	s, err := l.setup(conn)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	l.watch(s)
	return s, nil
}

// watch subscribes to the closing of s's connection and channel, and marks s not lost.
func (l *link) watch(s *live) {
	if s.lost == nil {
		s.lost = make(chan struct{})
	}
	s.connClosed = s.conn.NotifyClose(make(chan *amqp.Error, 1))
	s.chClosed = s.ch.NotifyClose(make(chan *amqp.Error, 1))
	if s.acks != nil {
		go s.acks.run(s.lost)
	}
}

// permanent tells the refusals that retrying cannot fix.
func permanent(err error) bool {
	var e *amqp.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case amqp.AccessRefused, amqp.NotFound, amqp.PreconditionFailed, amqp.NotAllowed:
		return true
	}
	return false
}

func (l *link) set(s *live, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed && s != nil {
		return
	}
	l.cur, l.err = s, err
	close(l.changed)
	l.changed = make(chan struct{})
}

// lose marks s lost: it is no longer handed out, and what was delivered on it is the broker's
// again. Whoever notices first (the watcher, or Take seeing the deliveries end) calls it.
func (l *link) lose(s *live, why error) {
	s.once.Do(func() { s.why = why; close(s.lost) })
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == s {
		l.cur, l.err = nil, why
		close(l.changed)
		l.changed = make(chan struct{})
	}
}

// wait returns the live connection, waiting for one until expire fires or ctx ends. While
// disconnected the error says why; it is nil when ctx ended, which callers treat as a shutdown.
func (l *link) wait(ctx context.Context, expire <-chan time.Time) (*live, error) {
	for {
		l.mu.Lock()
		s, changed, err, closed := l.cur, l.changed, l.err, l.closed
		l.mu.Unlock()
		switch {
		case closed:
			return nil, errClosed
		case s != nil:
			return s, nil
		}
		select {
		case <-changed:
		case <-expire:
			return nil, fmt.Errorf("amqpq: not connected to RabbitMQ (%s): %w", l.what, err)
		case <-ctx.Done():
			return nil, nil
		}
	}
}

func (l *link) connected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur != nil
}

// close stops the reconnecting and closes what is open; it returns once the background work
// ended.
func (l *link) close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	if l.stop != nil {
		l.stop()
		<-l.done
	}
}

// declarer runs declarations on a channel of its own, each name once per connection: a
// declaration the broker refuses (an exchange that exists with another type) then closes only
// that channel, never the one carrying deliveries and confirms; and a broker that lost its data
// gets its queues and exchanges again after a reconnection.
type declarer struct {
	conn *amqp.Connection
	mu   sync.Mutex
	ch   *amqp.Channel
	done map[string]bool
}

func newDeclarer(conn *amqp.Connection) *declarer {
	return &declarer{conn: conn, done: map[string]bool{}}
}

// known reports whether name was declared on this connection.
func (d *declarer) known(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.done[name]
}

// do runs declare for name unless it already succeeded on this connection. Declarations are
// serialized because amqp091 pairs a channel's replies with its requests in order only.
func (d *declarer) do(name string, declare func(ch *amqp.Channel) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done[name] {
		return nil
	}
	if d.ch == nil || d.ch.IsClosed() {
		ch, err := d.conn.Channel()
		if err != nil {
			return err
		}
		d.ch = ch
	}
	if err := declare(d.ch); err != nil {
		return err
	}
	d.done[name] = true
	return nil
}

func (d *declarer) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch != nil {
		_ = d.ch.Close()
	}
}

// redact hides the password of an AMQP URL for logs.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
