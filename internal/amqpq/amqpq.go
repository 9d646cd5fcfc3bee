// Package amqpq is the RabbitMQ (AMQP 0-9-1) adapter of the engine: a queue consumed with manual
// acknowledgments and a prefetch window is an at-least-once Source. A message is acknowledged
// after its delivery; a crash closes the channel and RabbitMQ hands its unacknowledged messages
// out again at once; a retry is republished on a delay queue whose TTL dead-letters it back onto
// the queue; a dead letter is published, with its reason, through the queue's dead-letter
// exchange. Every republish waits for the broker's confirm before the original is acknowledged.
package amqpq

import (
	"context"
	"errors"
	"fmt"
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
	// Prefetch is how many unacknowledged messages the broker sends ahead. Default 256.
	Prefetch int
	// EncodeDead appends the dead-letter entry of m.
	EncodeDead func(dst []byte, m *engine.Message, f engine.Failure, instance string, at time.Time) []byte
	// Instance names this consumer in dead letters.
	Instance string
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

// Queue is an engine.Source over one AMQP queue.
type Queue struct {
	ch         *amqp.Channel
	deliveries <-chan amqp.Delivery
	o          Options

	mu       sync.Mutex
	held     map[uint64]amqp.Delivery // delivery tag -> delivery, while unsettled
	declared map[string]bool          // retry queues declared so far
}

// Open declares the queue, its dead-letter exchange and queue, and starts consuming on a channel
// of conn. Closing conn (or the process dying) returns every unsettled message to the queue.
func Open(conn *amqp.Connection, o Options) (*Queue, error) {
	if o.Prefetch <= 0 {
		o.Prefetch = 256
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := declare(ch, o.Queue); err != nil {
		_ = ch.Close()
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("publisher confirms: %w", err)
	}
	if err := ch.Qos(o.Prefetch, 0, false); err != nil {
		_ = ch.Close()
		return nil, err
	}
	d, err := ch.Consume(o.Queue, o.Instance, false, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("consuming %s: %w", o.Queue, err)
	}
	return &Queue{ch: ch, deliveries: d, o: o, held: map[uint64]amqp.Delivery{}, declared: map[string]bool{}}, nil
}

// declare makes the queue, the dead-letter exchange and the dead-letter queue exist.
func declare(ch *amqp.Channel, queue string) error {
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("queue %s: %w", queue, err)
	}
	if err := ch.ExchangeDeclare(DeadExchange(queue), "direct", true, false, false, false, nil); err != nil {
		return fmt.Errorf("exchange %s: %w", DeadExchange(queue), err)
	}
	if _, err := ch.QueueDeclare(DeadQueue(queue), true, false, false, false, nil); err != nil {
		return fmt.Errorf("queue %s: %w", DeadQueue(queue), err)
	}
	return ch.QueueBind(DeadQueue(queue), queue, DeadExchange(queue), false, nil)
}

// Take implements engine.Source: it waits up to a second for the first message, then takes
// what the prefetch window already holds, up to n.
func (q *Queue) Take(ctx context.Context, dst []*engine.Message, n int) ([]*engine.Message, error) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	start := len(dst)
	for len(dst)-start < n {
		var d amqp.Delivery
		var ok bool
		if len(dst) == start {
			select {
			case d, ok = <-q.deliveries:
			case <-t.C:
				return dst, nil
			case <-ctx.Done():
				return dst, nil
			}
		} else {
			select {
			case d, ok = <-q.deliveries:
			default:
				return dst, nil
			}
		}
		if !ok {
			return dst, errors.New("amqpq: the channel closed")
		}
		m := engine.GetMessage()
		m.SetRaw(d.Body)
		m.TakenAt = time.Now().UnixNano()
		m.Token = d.DeliveryTag
		m.SourceRetries = headerRetries(d)
		q.mu.Lock()
		q.held[d.DeliveryTag] = d
		q.mu.Unlock()
		dst = append(dst, m)
	}
	return dst, nil
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

func (q *Queue) take(m *engine.Message) (amqp.Delivery, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	d, ok := q.held[m.Token]
	if !ok {
		return d, fmt.Errorf("amqpq: message %d is not held by this consumer", m.Token)
	}
	delete(q.held, m.Token)
	return d, nil
}

// Ack implements engine.Source.
func (q *Queue) Ack(ctx context.Context, m *engine.Message) error {
	d, err := q.take(m)
	if err != nil {
		return err
	}
	return d.Ack(false)
}

// publish sends body and waits for the broker's confirm.
func (q *Queue) publish(ctx context.Context, exchange, key string, body []byte, headers amqp.Table) error {
	dc, err := q.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false,
		amqp.Publishing{Body: body, Headers: headers, DeliveryMode: amqp.Persistent})
	if err != nil {
		return err
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("amqpq: the broker refused the message (nack)")
	}
	return nil
}

// Retry implements engine.Source: the entry is republished on the delay queue of its delay,
// whose TTL dead-letters it back onto the queue, and only then acknowledged here.
func (q *Queue) Retry(ctx context.Context, m *engine.Message, retries int, delay time.Duration) error {
	delay = max(delay.Round(time.Millisecond), time.Millisecond)
	name := retryQueue(q.o.Queue, delay)
	q.mu.Lock()
	declared := q.declared[name]
	q.mu.Unlock()
	if !declared {
		if _, err := q.ch.QueueDeclare(name, true, false, false, false, amqp.Table{
			"x-message-ttl":             delay.Milliseconds(),
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": q.o.Queue,
		}); err != nil {
			return fmt.Errorf("retry queue %s: %w", name, err)
		}
		q.mu.Lock()
		q.declared[name] = true
		q.mu.Unlock()
	}
	if err := q.publish(ctx, "", name, m.Raw, amqp.Table{retriesHeader: int64(retries)}); err != nil {
		return err
	}
	return q.Ack(ctx, m)
}

// DeadLetter implements engine.Source: the dead letter goes through the dead-letter exchange
// (confirmed) before the original is acknowledged.
func (q *Queue) DeadLetter(ctx context.Context, m *engine.Message, f engine.Failure) error {
	entry := q.o.EncodeDead(nil, m, f, q.o.Instance, time.Now())
	if err := q.publish(ctx, DeadExchange(q.o.Queue), q.o.Queue, entry, amqp.Table{"x-herald-reason": f.Reason}); err != nil {
		return err
	}
	return q.Ack(ctx, m)
}

// Release implements engine.Source: the messages go back to the queue, in their order. Messages
// the prefetch window already holds come out first; closing the channel returns those too.
func (q *Queue) Release(ctx context.Context, ms []*engine.Message) error {
	var errs []error
	for i := range ms {
		d, err := q.take(ms[i])
		if err == nil {
			err = d.Nack(false, true)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

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
func Declare(ch *amqp.Channel, queue string) error { return declare(ch, queue) }
