// Package amqpq is the RabbitMQ (AMQP 0-9-1) adapter of the engine: a queue consumed with manual
// acknowledgments and a prefetch window is an at-least-once Source. A message is acknowledged
// after its delivery; a crash closes the channel and RabbitMQ hands its unacknowledged messages
// out again at once; a retry is republished on a delay queue whose TTL dead-letters it back onto
// the queue; a dead letter is published, with its reason, through the queue's dead-letter
// exchange. Every republish waits for the broker's confirm before the original is acknowledged.
//
// A Queue opened with Dial owns its connection and replaces it when it is lost: while it is
// down Take reports an error (the pipeline's source health), and a message taken on a lost
// connection has already been requeued by the broker, so settling it does nothing and it is
// delivered again (a duplicate, never a loss). A queue may be bound to a direct exchange with
// the routing keys it wants, as TeaL's consumers do. Publisher writes to direct exchanges with
// publisher confirms and reconnects the same way.
package amqpq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Options name the queue and its helpers.
type Options struct {
	// Queue is the durable queue the entries are on; it is declared when missing.
	Queue string
	// Exchange, when set, is a durable direct exchange (declared when missing) the queue is
	// bound to with each of RoutingKeys: TeaL's <prefix><type> exchanges.
	Exchange string
	// RoutingKeys are the keys the queue wants from Exchange; one at least when Exchange is set.
	// Bindings are only ever added: a key dropped from the list stays bound until someone
	// unbinds it on the broker.
	RoutingKeys []string
	// Prefetch is how many unacknowledged messages the broker sends ahead. Default 1000: the
	// pipeline holds a few hundred in flight, acknowledgments wait a little to go out together,
	// and a window that runs dry leaves the consumer waiting a round trip for more.
	Prefetch int
	// EncodeDead appends the dead-letter entry of m.
	EncodeDead func(dst []byte, m *engine.Message, f engine.Failure, instance string, at time.Time) []byte
	// Instance names this consumer in dead letters.
	Instance string
}

func (o Options) check() (Options, error) {
	switch {
	case o.Queue == "":
		return o, errors.New("amqpq: no queue named")
	case o.Exchange != "" && len(o.RoutingKeys) == 0:
		return o, fmt.Errorf("amqpq: exchange %s without routing keys: a direct exchange routes to %s only the keys it is bound with", o.Exchange, o.Queue)
	case o.Exchange == "" && len(o.RoutingKeys) > 0:
		return o, fmt.Errorf("amqpq: routing keys %q without an exchange to bind %s to", o.RoutingKeys, o.Queue)
	case o.EncodeDead == nil:
		return o, errors.New("amqpq: no dead-letter encoder")
	}
	if o.Prefetch <= 0 {
		o.Prefetch = 1000
	}
	return o, nil
}

// DeadQueue is where the dead letters of queue are kept, through the exchange DeadExchange.
func DeadQueue(queue string) string { return queue + ".dead" }

// DeadExchange is the queue's dead-letter exchange (direct, routing key = the queue's name).
func DeadExchange(queue string) string { return queue + ".dlx" }

// retryQueue holds retries of one delay until their TTL sends them back to queue.
func retryQueue(queue string, delay time.Duration) string {
	return queue + ".retry." + strconv.FormatInt(delay.Milliseconds(), 10) + "ms"
}

// retriesHeader carries a republished message's retry count.
const retriesHeader = "x-herald-retries"

var _ engine.Source = (*Queue)(nil)

// Queue is an engine.Source over one AMQP queue.
type Queue struct {
	o Options
	l *link

	mu   sync.Mutex
	next uint64          // the last token handed out
	held map[uint64]held // token -> delivery, while unsettled
}

// held is a delivery's tag and the connection it came on, which says whether settling it still
// means anything.
type held struct {
	tag uint64
	s   *live
}

// Open declares the queue, its dead-letter exchange and queue, and starts consuming on a channel
// of conn. It never reconnects: once conn or the channel closes, Take fails (use Dial for a
// Queue that outlives its connection). Closing conn (or the process dying) returns every
// unsettled message to the queue.
func Open(conn *amqp.Connection, o Options) (*Queue, error) {
	o, err := o.check()
	if err != nil {
		return nil, err
	}
	q := &Queue{o: o, held: map[uint64]held{}}
	q.l = newLink("", "queue "+o.Queue, "", nil, q.setup)
	s, err := q.setup(conn)
	if err != nil {
		return nil, err
	}
	q.l.watch(s)
	q.l.start(s)
	return q, nil
}

// Dial connects to the broker at url, waiting out a broker that is down until ctx ends, declares
// the queue and its helpers and starts consuming. The Queue owns its connection: when the
// connection or its channel is lost it connects, declares and consumes again in the
// background, logging to log (nil: slog.Default) with the URL's password hidden, until Close.
func Dial(ctx context.Context, url string, o Options, log *slog.Logger) (*Queue, error) {
	o, err := o.check()
	if err != nil {
		return nil, err
	}
	q := &Queue{o: o, held: map[uint64]held{}}
	name := "herald queue " + o.Queue
	if o.Instance != "" {
		name += " (" + o.Instance + ")"
	}
	q.l = newLink(url, "queue "+o.Queue, name, log, q.setup)
	if err := q.l.dial(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

// setup declares the queue, its helpers and its binding on a new channel of conn, then consumes.
func (q *Queue) setup(conn *amqp.Connection) (*live, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	s, err := q.consume(conn, ch)
	if err != nil {
		_ = ch.Close()
		return nil, err
	}
	return s, nil
}

func (q *Queue) consume(conn *amqp.Connection, ch *amqp.Channel) (*live, error) {
	if err := declare(ch, q.o); err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("publisher confirms: %w", err)
	}
	if err := ch.Qos(q.o.Prefetch, 0, false); err != nil {
		return nil, err
	}
	d, err := ch.Consume(q.o.Queue, q.o.Instance, false, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("consuming %s: %w", q.o.Queue, err)
	}
	return &live{conn: conn, ch: ch, deliveries: d, decl: newDeclarer(conn), acks: newAcks(ch, q.o.Prefetch)}, nil
}

// declare makes the queue, the dead-letter exchange and the dead-letter queue exist, and binds
// the queue to its exchange.
func declare(ch *amqp.Channel, o Options) error {
	queue := o.Queue
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("queue %s: %w", queue, err)
	}
	if err := ch.ExchangeDeclare(DeadExchange(queue), "direct", true, false, false, false, nil); err != nil {
		return fmt.Errorf("exchange %s: %w", DeadExchange(queue), err)
	}
	if _, err := ch.QueueDeclare(DeadQueue(queue), true, false, false, false, nil); err != nil {
		return fmt.Errorf("queue %s: %w", DeadQueue(queue), err)
	}
	if err := ch.QueueBind(DeadQueue(queue), queue, DeadExchange(queue), false, nil); err != nil {
		return fmt.Errorf("binding %s: %w", DeadQueue(queue), err)
	}
	if o.Exchange == "" {
		return nil
	}
	if err := ch.ExchangeDeclare(o.Exchange, "direct", true, false, false, false, nil); err != nil {
		return fmt.Errorf("exchange %s (a durable direct exchange): %w", o.Exchange, err)
	}
	for _, k := range o.RoutingKeys {
		if err := ch.QueueBind(queue, k, o.Exchange, false, nil); err != nil {
			return fmt.Errorf("binding %s to %s with %q: %w", queue, o.Exchange, k, err)
		}
	}
	return nil
}

// Take implements engine.Source: it waits up to a second for the first message, then takes
// what the prefetch window already holds, up to n. While the connection is down it waits the
// same second for the reconnection, then reports the outage as an error.
func (q *Queue) Take(ctx context.Context, dst []*engine.Message, n int) ([]*engine.Message, error) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	start := len(dst)
	for {
		s, err := q.l.wait(ctx, t.C)
		if s == nil {
			return dst, err
		}
		var ended bool
		dst, ended = q.takeFrom(ctx, s, t.C, dst, n)
		if !ended || len(dst) > start {
			return dst, nil
		}
	}
}

// takeFrom takes from s's deliveries; ended says they stopped, because the channel closed or
// the broker cancelled the consumer (a deleted queue), and s is then given up.
func (q *Queue) takeFrom(ctx context.Context, s *live, expire <-chan time.Time, dst []*engine.Message, n int) ([]*engine.Message, bool) {
	start := len(dst)
	// The new messages are entered in held once, with their tags parked in Token meanwhile: one
	// lock per batch rather than per message.
	defer func() {
		if len(dst) == start {
			return
		}
		q.mu.Lock()
		for _, m := range dst[start:] {
			q.next++
			q.held[q.next] = held{tag: m.Token, s: s}
			m.Token = q.next
		}
		q.mu.Unlock()
	}()
	for len(dst)-start < n {
		var d amqp.Delivery
		var ok bool
		if len(dst) == start {
			select {
			case d, ok = <-s.deliveries:
			case <-expire:
				return dst, false
			case <-ctx.Done():
				return dst, false
			}
		} else {
			select {
			case d, ok = <-s.deliveries:
			default:
				return dst, false
			}
		}
		if !ok {
			q.l.lose(s, errors.New("the broker cancelled the consumer"))
			return dst, true
		}
		m := engine.GetMessage()
		m.SetRaw(d.Body)
		m.TakenAt = time.Now().UnixNano()
		m.SourceRetries = headerRetries(d)
		m.Token = d.DeliveryTag
		dst = append(dst, m)
	}
	return dst, false
}

func headerRetries(d amqp.Delivery) int {
	switch v := d.Headers[retriesHeader].(type) {
	case int32:
		return int(v)
	case int64:
		return int(v)
	}
	return 0
}

// lookup finds what m was taken as; it stays held until forget, so that a settle that failed can
// be tried again.
func (q *Queue) lookup(m *engine.Message) (held, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	h, ok := q.held[m.Token]
	if !ok {
		return h, fmt.Errorf("amqpq: message %d is not held by this consumer", m.Token)
	}
	return h, nil
}

func (q *Queue) forget(m *engine.Message) {
	q.mu.Lock()
	delete(q.held, m.Token)
	q.mu.Unlock()
}

// Ack implements engine.Source. The acknowledgment reaches the broker within ackLinger, most
// often together with others (see acks). A message of a lost connection is settled at once: the
// broker has requeued it and will deliver it again.
func (q *Queue) Ack(ctx context.Context, m *engine.Message) error {
	q.mu.Lock()
	h, ok := q.held[m.Token]
	delete(q.held, m.Token)
	q.mu.Unlock()
	if !ok {
		return fmt.Errorf("amqpq: message %d is not held by this consumer", m.Token)
	}
	if h.s.gone() {
		return nil
	}
	if err := h.s.acks.ack(h.tag); err != nil {
		return fmt.Errorf("amqpq: ack: %w", err)
	}
	return nil
}

// publish sends body on ch and waits for the broker's confirm.
func publish(ctx context.Context, ch *amqp.Channel, exchange, key string, body []byte, headers amqp.Table) error {
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false,
		amqp.Publishing{Body: body, Headers: headers, DeliveryMode: amqp.Persistent})
	if err != nil {
		return err
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("amqpq: the broker did not confirm the message (nack or lost connection)")
	}
	return nil
}

// Retry implements engine.Source: the entry is republished on the delay queue of its delay,
// whose TTL dead-letters it back onto the queue, and only then acknowledged here.
//
// A message of a lost connection is settled without republishing: the broker has already put
// the original back, so a copy would make two live messages, each retried and dead-lettered on
// its own from then on. Skipping costs the delay and one retry count for this attempt (the
// original comes back at once with its old count), which loses nothing.
func (q *Queue) Retry(ctx context.Context, m *engine.Message, retries int, delay time.Duration) error {
	delay = max(delay.Round(time.Millisecond), time.Millisecond)
	name := retryQueue(q.o.Queue, delay)
	return q.republish(ctx, m, func(s *live) error {
		if err := s.decl.do(name, func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{
				"x-message-ttl":             delay.Milliseconds(),
				"x-dead-letter-exchange":    "",
				"x-dead-letter-routing-key": q.o.Queue,
			})
			return err
		}); err != nil {
			return fmt.Errorf("retry queue %s: %w", name, err)
		}
		return publish(ctx, s.ch, "", name, m.Raw, amqp.Table{retriesHeader: int64(retries)})
	})
}

// republish settles m by publishing its copy (a retry, a dead letter) with send, confirmed, and
// only then acknowledging it. A message of a lost connection, before or during the publish, is
// settled without more: the original is back in the queue (the copy perhaps too: a duplicate at
// worst).
func (q *Queue) republish(ctx context.Context, m *engine.Message, send func(*live) error) error {
	h, err := q.lookup(m)
	if err != nil {
		return err
	}
	if h.s.gone() {
		q.forget(m)
		return nil
	}
	if err := send(h.s); err != nil {
		if h.s.gone() {
			q.forget(m)
			return nil
		}
		return err
	}
	return q.Ack(ctx, m)
}

// DeadLetter implements engine.Source: the dead letter goes through the dead-letter exchange
// (confirmed) before the original is acknowledged. A message of a lost connection is settled
// without a dead letter, for the reason Retry gives: the original is back and will be
// dead-lettered when it fails again.
func (q *Queue) DeadLetter(ctx context.Context, m *engine.Message, f engine.Failure) error {
	return q.republish(ctx, m, func(s *live) error {
		entry := q.o.EncodeDead(nil, m, f, q.o.Instance, time.Now())
		return publish(ctx, s.ch, DeadExchange(q.o.Queue), q.o.Queue, entry, amqp.Table{"x-herald-reason": f.Reason})
	})
}

// Release implements engine.Source: the messages go back to the queue, in their order. Messages
// the prefetch window already holds come out first; closing the channel returns those too.
// Messages of a lost connection are back already.
func (q *Queue) Release(ctx context.Context, ms []*engine.Message) error {
	var errs []error
	for _, m := range ms {
		h, err := q.lookup(m)
		if err == nil && !h.s.gone() {
			if err = h.s.acks.release(h.tag); err != nil && h.s.gone() {
				err = nil
			}
		}
		if err == nil {
			q.forget(m)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Connected reports whether the queue is being consumed now.
func (q *Queue) Connected() bool { return q.l.connected() }

// Close stops consuming and reconnecting and closes the channel, and the connection when Dial
// opened it: every unsettled message returns to the queue. Settling afterwards does nothing.
func (q *Queue) Close() { q.l.close() }

// Publish appends an entry to queue through the default exchange, confirmed.
func Publish(ctx context.Context, ch *amqp.Channel, queue string, entry []byte) error {
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false,
		amqp.Publishing{Body: entry, DeliveryMode: amqp.Persistent})
	if err != nil {
		return err
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		return errors.Join(err, errors.New("amqpq: publish not confirmed"))
	}
	return nil
}

// DeadLetters reads the dead letters kept for queue without removing them.
func DeadLetters(conn *amqp.Connection, queue string) ([][]byte, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	defer ch.Close() // the unacknowledged gets go back to the dead-letter queue
	var out [][]byte
	for {
		d, ok, err := ch.Get(DeadQueue(queue), false)
		if err != nil {
			return out, err
		}
		if !ok {
			return out, nil
		}
		out = append(out, d.Body)
	}
}

// Declare makes queue and its dead-letter exchange and queue exist, for producers.
func Declare(ch *amqp.Channel, queue string) error { return declare(ch, Options{Queue: queue}) }

// DeclareQueues makes queues exist as a deliverer's Dial declares them, through a connection to
// url: a producer that starts first must not publish to a queue not declared yet, which the
// default exchange would confirm and drop.
func DeclareQueues(url string, queues ...string) error {
	return withChannel(url, func(ch *amqp.Channel) error {
		for _, q := range queues {
			if err := Declare(ch, q); err != nil {
				return fmt.Errorf("declaring the queue %s: %w", q, err)
			}
		}
		return nil
	})
}

// Remove deletes, through a connection to url, what Declare made for each of queues (the queue,
// its dead-letter queue and exchange) and the exchanges named. What is already gone is not an
// error; only failing to reach the broker is.
func Remove(url string, queues []string, exchanges ...string) error {
	return withChannel(url, func(ch *amqp.Channel) error {
		remove(ch, queues, exchanges)
		return nil
	})
}

// withChannel runs f on a channel of a connection to url made for it.
func withChannel(url string, f func(*amqp.Channel) error) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	return f(ch)
}

func remove(ch *amqp.Channel, queues, exchanges []string) {
	for _, q := range queues {
		_, _ = ch.QueueDelete(q, false, false, false)
		_, _ = ch.QueueDelete(DeadQueue(q), false, false, false)
		_ = ch.ExchangeDelete(DeadExchange(q), false, false)
	}
	for _, x := range exchanges {
		_ = ch.ExchangeDelete(x, false, false)
	}
}
