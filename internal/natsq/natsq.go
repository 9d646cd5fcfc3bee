// Package natsq is the NATS JetStream adapter of the engine: a durable pull consumer shared by
// every deliverer is an at-least-once Source. A message is acknowledged after its delivery; a
// retry is republished (confirmed) with its retry count and the time it is due, and the original
// acknowledged; a copy taken before it is due goes back with a NAK for the time that remains; a
// crash leaves messages unacknowledged and JetStream redelivers them after the ack wait; a dead
// letter is published, with its reason, on a subject of its own before the message is terminated.
// The retry count travels in the message, not in JetStream's delivery count, which a delayed NAK
// does not always advance.
//
// Connect gives the connection these run on: it waits out a server that is not up yet and
// reconnects for ever. While it is down, Take fails with ErrNotConnected (so that the pipeline
// reports its source unhealthy) instead of looking like an empty queue, and acknowledgments wait
// in nats.go's reconnect buffer. Publisher is the engine.Publisher of JetStream subjects.
package natsq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options name the stream, subjects and consumer of a queue.
type Options struct {
	// Stream holds Subject (work-queue retention: a message leaves it once acknowledged); it is
	// created when missing.
	Stream  string
	Subject string
	// Consumer is the durable consumer every deliverer of the queue shares.
	Consumer string
	// DeadStream and DeadSubject keep the dead letters (limits retention); created when missing.
	DeadStream, DeadSubject string
	// AckWait is how long a taken message may stay unsettled before JetStream hands it to
	// another consumer: the redelivery time after a crash. It must exceed the longest delivery.
	AckWait time.Duration
	// EncodeDead appends the dead-letter entry of m.
	EncodeDead func(dst []byte, m *engine.Message, f engine.Failure, instance string, at time.Time) []byte
	// Instance names this consumer in dead letters.
	Instance string
}

// Queue is an engine.Source over a JetStream pull consumer.
type Queue struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	cons jetstream.Consumer
	o    Options

	next atomic.Uint64
	held sync.Map // token -> jetstream.Msg, while the message is unsettled
}

// Header names of a republished retry.
const (
	retriesHeader   = "X-Herald-Retries"
	notBeforeHeader = "X-Herald-Not-Before" // Unix milliseconds
)

func headers(msg jetstream.Msg) (retries int, due time.Time) {
	h := msg.Headers()
	if h == nil {
		return 0, time.Time{}
	}
	retries, _ = strconv.Atoi(h.Get(retriesHeader))
	if ms, err := strconv.ParseInt(h.Get(notBeforeHeader), 10, 64); err == nil {
		due = time.UnixMilli(ms)
	}
	return retries, due
}

// Open connects the queue on nc, creating the streams and the consumer when missing.
func Open(ctx context.Context, nc *nats.Conn, o Options) (*Queue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: o.Stream, Subjects: []string{o.Subject},
		Retention: jetstream.WorkQueuePolicy}); err != nil {
		return nil, fmt.Errorf("stream %s: %w", o.Stream, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: o.DeadStream, Subjects: []string{o.DeadSubject}}); err != nil {
		return nil, fmt.Errorf("stream %s: %w", o.DeadStream, err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, o.Stream, jetstream.ConsumerConfig{
		Durable: o.Consumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: o.AckWait,
		FilterSubject: o.Subject, MaxDeliver: -1, MaxAckPending: 10000,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", o.Consumer, err)
	}
	return &Queue{nc: nc, js: js, cons: cons, o: o}, nil
}

// Take implements engine.Source.
func (q *Queue) Take(ctx context.Context, dst []*engine.Message, n int) ([]*engine.Message, error) {
	// While disconnected, nats.go buffers the pull request and Fetch ends empty without an error,
	// so that an outage would pass for an empty queue; and the buffered request, sent after the
	// reconnect, has the server deliver to an inbox nobody reads any more, which parks those
	// messages for an ack wait. Failing instead (after a second, as Take may wait) makes the
	// outage visible and lets the caller back off.
	if err := awaitConnection(ctx, q.nc, time.Second); err != nil {
		return dst, err
	}
	before := len(dst)
	batch, err := q.cons.Fetch(n, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		return dst, err
	}
	for msg := range batch.Messages() {
		retries, due := headers(msg)
		if wait := time.Until(due); wait > 0 {
			// A retry taken early: back to JetStream until it is due.
			_ = msg.NakWithDelay(wait)
			continue
		}
		m := engine.GetMessage()
		m.SetRaw(msg.Data())
		m.TakenAt = time.Now().UnixNano()
		m.SourceRetries = retries
		m.Token = q.next.Add(1)
		q.held.Store(m.Token, msg)
		dst = append(dst, m)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		return dst, err
	}
	if len(dst) == before && !q.nc.IsConnected() {
		return dst, ErrNotConnected // the connection dropped during the pull
	}
	return dst, nil
}

func (q *Queue) settle(m *engine.Message) (jetstream.Msg, error) {
	v, ok := q.held.LoadAndDelete(m.Token)
	if !ok {
		return nil, fmt.Errorf("natsq: message %d is not held by this consumer", m.Token)
	}
	return v.(jetstream.Msg), nil
}

// Ack implements engine.Source. While the connection is down the ack waits in nats.go's
// reconnect buffer and is sent once it is back; lost with the process, it costs a redelivery.
func (q *Queue) Ack(ctx context.Context, m *engine.Message) error {
	v, ok := q.held.Load(m.Token)
	if !ok {
		return fmt.Errorf("natsq: message %d is not held by this consumer", m.Token)
	}
	// The message stays held until the ack is out: the pipeline settles again after an error.
	if err := v.(jetstream.Msg).Ack(); err != nil {
		return err
	}
	q.held.Delete(m.Token)
	return nil
}

// Retry implements engine.Source: the entry is republished with its retry count and due time
// (confirmed by JetStream), then the original acknowledged; a crash between the two delivers
// it twice, never zero times.
func (q *Queue) Retry(ctx context.Context, m *engine.Message, retries int, delay time.Duration) error {
	// A confirmed publish waiting in the reconnect buffer would be sent once per attempt of the
	// pipeline's settle loop, each after its caller gave up on it.
	if !q.nc.IsConnected() {
		return ErrNotConnected
	}
	// Back onto the subject it came from: the queue's subject may be a wildcard (a bridge reading
	// acapy.events.>), which cannot be published to.
	v, ok := q.held.Load(m.Token)
	if !ok {
		return fmt.Errorf("natsq: message %d is not held by this consumer", m.Token)
	}
	out := nats.NewMsg(v.(jetstream.Msg).Subject())
	out.Data = m.Raw
	out.Header.Set(retriesHeader, strconv.Itoa(retries))
	out.Header.Set(notBeforeHeader, strconv.FormatInt(time.Now().Add(delay).UnixMilli(), 10))
	if _, err := q.js.PublishMsg(ctx, out); err != nil {
		return err
	}
	return q.Ack(ctx, m)
}

// DeadLetter implements engine.Source: the dead letter is published (and stored) first, then the
// message terminated, so that a crash between the two duplicates the dead letter, never loses it.
func (q *Queue) DeadLetter(ctx context.Context, m *engine.Message, f engine.Failure) error {
	v, ok := q.held.Load(m.Token)
	if !ok {
		return fmt.Errorf("natsq: message %d is not held by this consumer", m.Token)
	}
	if !q.nc.IsConnected() {
		return ErrNotConnected // as in Retry
	}
	entry := q.o.EncodeDead(nil, m, f, q.o.Instance, time.Now())
	if _, err := q.js.Publish(ctx, q.o.DeadSubject, entry); err != nil {
		return err
	}
	// Held until terminated, as in Ack; a settle repeated after an error duplicates the dead
	// letter, which is better than a message nobody can settle.
	if err := v.(jetstream.Msg).Term(); err != nil {
		return err
	}
	q.held.Delete(m.Token)
	return nil
}

// Release implements engine.Source: the messages are handed out again at once, before new ones.
func (q *Queue) Release(ctx context.Context, ms []*engine.Message) error {
	var errs []error
	for _, m := range ms {
		msg, err := q.settle(m)
		if err == nil {
			err = msg.Nak()
		}
		errs = append(errs, err)
	}
	// A NAK is a plain publish: flushing makes the server take them all before this consumer's
	// next pull, so that they come out again ahead of newer messages.
	errs = append(errs, q.nc.FlushTimeout(5*time.Second))
	return errors.Join(errs...)
}

// Publish appends an entry to the queue and waits for JetStream to store it. While the
// connection is down it waits for it until ctx ends, as Publisher.Publish does.
func (q *Queue) Publish(ctx context.Context, entry []byte) error {
	if err := awaitConnection(ctx, q.nc, 0); err != nil {
		return err
	}
	_, err := q.js.Publish(ctx, q.o.Subject, entry)
	return err
}

// DeadLetters reads every dead letter kept so far, oldest first.
func (q *Queue) DeadLetters(ctx context.Context) ([][]byte, error) {
	cons, err := q.js.OrderedConsumer(ctx, q.o.DeadStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{q.o.DeadSubject}})
	if err != nil {
		return nil, err
	}
	info, err := q.js.Stream(ctx, q.o.DeadStream)
	if err != nil {
		return nil, err
	}
	total := int(info.CachedInfo().State.Msgs)
	var out [][]byte
	for len(out) < total {
		batch, err := cons.Fetch(total-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return out, err
		}
		got := 0
		for msg := range batch.Messages() {
			out = append(out, append([]byte(nil), msg.Data()...))
			got++
		}
		if got == 0 {
			break
		}
	}
	return out, nil
}
