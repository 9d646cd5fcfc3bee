package amqpq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	amqp "github.com/rabbitmq/amqp091-go"
)

// PublisherOptions adjust a Publisher; the zero value is ready to use.
type PublisherOptions struct {
	// Name is the connection name the broker shows (rabbitmqctl list_connections, the management
	// UI). Default "herald publisher".
	Name string
	// ContentType, when set, is the content-type property of every message (TeaL's payloads are
	// application/json).
	ContentType string
}

var _ engine.Publisher = (*Publisher)(nil)

// Publisher is an engine.Publisher over RabbitMQ: a Publication's Dest names a durable direct
// exchange (declared the first time the Publisher sees it on a connection) and its Key is the
// routing key; messages are persistent and confirmed by the broker. An exchange that routes a
// message to no queue drops it and still confirms it: publishing events nobody subscribed to is
// not an error. An empty Dest is the default exchange, which routes to the queue the key names.
type Publisher struct {
	o PublisherOptions
	l *link
}

// NewPublisher connects to the broker at url, waiting out a broker that is down until ctx ends.
// The Publisher owns its connection and replaces it in the background when it is lost, logging
// to log (nil: slog.Default) with the URL's password hidden, until Close.
func NewPublisher(ctx context.Context, url string, o PublisherOptions, log *slog.Logger) (*Publisher, error) {
	if o.Name == "" {
		o.Name = "herald publisher"
	}
	p := &Publisher{o: o}
	p.l = newLink(url, "publisher", o.Name, log, p.setup)
	if err := p.l.dial(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Publisher) setup(conn *amqp.Connection) (*live, error) {
	// lost exists before the channels do, since one may close (and give s up) at once.
	s := &live{conn: conn, decl: newDeclarer(conn), lost: make(chan struct{})}
	s.pool = &channels{conn: conn, lost: func(err error) { p.l.lose(s, err) }}
	ch, _, err := s.pool.get()
	if err != nil {
		return nil, err
	}
	s.pool.put(ch)
	s.ch = ch.ch
	return s, nil
}

// Publish implements engine.Publisher: it publishes the whole batch on one channel, which keeps
// the order of ps for each destination, then waits for every confirm. While the connection is
// down it waits up to a second (less if ctx ends first) for the reconnection, then fails.
func (p *Publisher) Publish(ctx context.Context, ps []engine.Publication) error {
	if len(ps) == 0 {
		return nil
	}
	t := time.NewTimer(time.Second)
	s, err := p.l.wait(ctx, t.C)
	t.Stop()
	if s == nil {
		if err == nil {
			err = ctx.Err()
		}
		return err
	}
	b := batches.Get().(*batch)
	defer b.recycle()
	b.plan(ps)
	for _, d := range b.dests {
		if err := p.declare(s, d.name); err != nil {
			return err
		}
	}
	ch, release, err := s.pool.get()
	if err != nil {
		if s.gone() {
			return errors.New("amqpq: the connection was lost")
		}
		return fmt.Errorf("amqpq: opening a publishing channel: %w", err)
	}
	defer release()
	for _, i := range b.order {
		dc, err := ch.ch.PublishWithDeferredConfirmWithContext(ctx, b.dests[b.dest[i]].name, string(ps[i].Key), false, false,
			amqp.Publishing{Body: ps[i].Body, DeliveryMode: amqp.Persistent, ContentType: p.o.ContentType})
		if err != nil {
			return fmt.Errorf("amqpq: publishing to %q: %w", ps[i].Dest, err)
		}
		b.confirms = append(b.confirms, dc)
	}
	for _, dc := range b.confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("amqpq: waiting for the broker's confirms: %w", err)
		}
		if !ok {
			if s.gone() || ch.ch.IsClosed() {
				return errors.New("amqpq: the connection was lost before the broker confirmed every message")
			}
			return errors.New("amqpq: the broker refused a message (nack)")
		}
	}
	return nil
}

// permissionCache is how many exchanges a RabbitMQ channel remembers being allowed to publish
// to (rabbit_channel's MAX_PERMISSION_CACHE_SIZE, first in first out). Publishing in turn to
// more exchanges than that on one channel misses the cache every time, and the full check,
// which matches the user's permission patterns, nearly doubles what the broker spends on a
// message: herald events writes each event to two exchanges of ten wallets, twenty in all.
const permissionCache = 12

// batch is the working state of one Publish call, recycled: a batch runs to thousands of
// publications, to a handful of destinations.
type batch struct {
	dests    []destination
	index    map[string]int32 // destination name -> its place in dests
	dest     []int32          // publication -> its destination
	order    []int32          // publications in the order they are sent
	confirms []*amqp.DeferredConfirmation
}

type destination struct {
	name string
	n    int32 // publications to it
}

var batches = sync.Pool{New: func() any { return &batch{index: map[string]int32{}} }}

// plan lists the destinations of ps and the order to publish ps in: as given, or, when the
// destinations are more than the broker's permission cache holds, grouped by destination in
// the order each first appears, which keeps the order of each destination's publications
// (all that Publish promises) and checks each permission once per batch.
func (b *batch) plan(ps []engine.Publication) {
	for i := range ps {
		d, ok := b.index[string(ps[i].Dest)]
		if !ok {
			d = int32(len(b.dests))
			name := string(ps[i].Dest)
			b.index[name] = d
			b.dests = append(b.dests, destination{name: name})
		}
		b.dests[d].n++
		b.dest = append(b.dest, d)
	}
	if len(b.dests) <= permissionCache {
		for i := range ps {
			b.order = append(b.order, int32(i))
		}
		return
	}
	// A counting sort: each destination's slots start where the previous one's end.
	b.order = slices.Grow(b.order, len(ps))[:len(ps)]
	next := make([]int32, len(b.dests))
	for d := 1; d < len(b.dests); d++ {
		next[d] = next[d-1] + b.dests[d-1].n
	}
	for i, d := range b.dest {
		b.order[next[d]] = int32(i)
		next[d]++
	}
}

func (b *batch) recycle() {
	clear(b.index)
	clear(b.confirms)
	b.dests, b.dest, b.order, b.confirms = b.dests[:0], b.dest[:0], b.order[:0], b.confirms[:0]
	batches.Put(b)
}

// maxChannels bounds a Publisher's channels on a connection. Up to it, concurrent Publish calls
// each get a channel of their own: amqp091 serialises the publishes of a channel under a lock,
// and the broker runs each channel as one process, so that one channel keeps its work on one
// core. Past it, calls share the least used channel, which still keeps each call's order.
const maxChannels = 8

// channels are the confirm-mode channels of a Publisher's connection.
type channels struct {
	conn *amqp.Connection
	// lost gives up the connection when the broker closed a channel: a refused publish (an
	// exchange deleted behind the Publisher's back) is mended by declaring afresh, as on a new
	// connection.
	lost func(error)

	mu   sync.Mutex
	open []*channel
}

type channel struct {
	ch    *amqp.Channel
	users int
}

// get returns the channel to publish on and the function that gives it back.
func (c *channels) get() (*channel, func(), error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open = slices.DeleteFunc(c.open, func(ch *channel) bool { return ch.ch.IsClosed() })
	var least *channel
	for _, ch := range c.open {
		if least == nil || ch.users < least.users {
			least = ch
		}
	}
	if least == nil || least.users > 0 && len(c.open) < maxChannels {
		ch, err := c.conn.Channel()
		if err != nil {
			return nil, nil, err
		}
		if err := ch.Confirm(false); err != nil {
			_ = ch.Close()
			return nil, nil, fmt.Errorf("publisher confirms: %w", err)
		}
		go func() {
			if e, ok := <-ch.NotifyClose(make(chan *amqp.Error, 1)); ok {
				c.lost(closeReason("channel", e))
			}
		}()
		least = &channel{ch: ch}
		c.open = append(c.open, least)
	}
	least.users++
	return least, func() { c.put(least) }, nil
}

func (c *channels) put(ch *channel) {
	c.mu.Lock()
	ch.users--
	c.mu.Unlock()
}

// declare makes exchange exist as a durable direct exchange, once per connection. The default
// exchange and the amq.* ones always exist and may not be declared.
func (p *Publisher) declare(s *live, name string) error {
	if name == "" || s.decl.known(name) {
		return nil
	}
	if strings.HasPrefix(name, "amq.") {
		return nil
	}
	if err := s.decl.do(name, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(name, "direct", true, false, false, false, nil)
	}); err != nil {
		return fmt.Errorf("amqpq: exchange %s (a durable direct exchange): %w", name, err)
	}
	return nil
}

// Connected reports whether the Publisher has a connection now.
func (p *Publisher) Connected() bool { return p.l.connected() }

// Close stops reconnecting and closes the connection. Publish fails afterwards.
func (p *Publisher) Close() { p.l.close() }
