package amqpq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("publisher confirms: %w", err)
	}
	return &live{conn: conn, ch: ch, decl: newDeclarer(conn)}, nil
}

// Publish implements engine.Publisher: it publishes the whole batch on one channel, which keeps
// the order of ps, then waits for every confirm. While the connection is down it waits up to a
// second (less if ctx ends first) for the reconnection, then fails.
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
	for i := range ps {
		if err := p.declare(s, ps[i].Dest); err != nil {
			return err
		}
	}
	dcs := make([]*amqp.DeferredConfirmation, 0, len(ps))
	for i := range ps {
		dc, err := s.ch.PublishWithDeferredConfirmWithContext(ctx, string(ps[i].Dest), string(ps[i].Key), false, false,
			amqp.Publishing{Body: ps[i].Body, DeliveryMode: amqp.Persistent, ContentType: p.o.ContentType})
		if err != nil {
			return fmt.Errorf("amqpq: publishing to %q: %w", ps[i].Dest, err)
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("amqpq: waiting for the broker's confirms: %w", err)
		}
		if !ok {
			if s.gone() {
				return errors.New("amqpq: the connection was lost before the broker confirmed every message")
			}
			return errors.New("amqpq: the broker refused a message (nack)")
		}
	}
	return nil
}

// declare makes exchange exist as a durable direct exchange, once per connection. The default
// exchange and the amq.* ones always exist and may not be declared.
func (p *Publisher) declare(s *live, exchange []byte) error {
	if len(exchange) == 0 || s.decl.known(exchange) {
		return nil
	}
	name := string(exchange)
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
