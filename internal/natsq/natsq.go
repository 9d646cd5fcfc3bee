// Package natsq is the NATS JetStream adapter of the engine: a durable pull consumer shared by
// every deliverer is an at-least-once Source. Each deliverer keeps pull requests for a few batches
// outstanding, so that taking does not wait for a round trip to the server. A message is
// acknowledged after its delivery; a retry is republished (confirmed) with its retry count and
// the time it is due, and the original acknowledged; a copy taken before it is due goes back with
// a NAK for the time that remains; a crash leaves messages unacknowledged and JetStream
// redelivers them after the ack wait; a dead letter is published, with its reason, on a subject
// of its own before the message is terminated. The retry count travels in the message, not in
// JetStream's delivery count, which also counts releases and redeliveries after a crash. A retry
// is republished rather than held by a delayed NAK because a NAKed message stays pending on the
// consumer: a receiver down for an hour would fill MaxAckPending with waiting retries and stop
// fresh messages, where republished ones wait in the stream like any other.
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

	mu sync.Mutex // guards iter, reconnects and unwatch
	// iter pulls ahead of Take: it keeps pull requests outstanding so that the next messages are
	// on their way while the previous ones are delivered, instead of one round trip per Take.
	// Started by the first Take, so that a Queue opened only to publish holds no messages.
	iter jetstream.MessagesContext
	// reconnects is the connection's reconnect count when iter started: after a reconnect,
	// iter asks for a full window again while what it buffered is still there, more than its
	// buffer holds, and nats.go drops the excess as a slow consumer.
	reconnects uint64
	unwatch    func() bool // ends the watch on the context of the Take that started iter

	next atomic.Uint64
	held sync.Map // token -> jetstream.Msg, while the message is unsettled
}

// Prefetch bounds: messages buffered ahead of Take count against AckWait while they wait, so the
// window stays a few batches, enough to cover a pull round trip at full speed.
const (
	minPrefetch = 64
	maxPrefetch = 256
)

// takeLinger is how long Take waits for another message once it has one: long enough for the
// rest of a pull already on the wire, short enough not to hold back what it has.
const takeLinger = 200 * time.Microsecond

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
	// A stream that exists is used as it is (a bridge reads the stream another service writes,
	// whose retention is not ours to change) as long as it holds the subject; a missing one is
	// created as a work queue, whose messages leave once acknowledged.
	if st, err := js.Stream(ctx, o.Stream); err == nil {
		held := false
		for _, pat := range st.CachedInfo().Config.Subjects {
			held = held || subjectCovers(pat, o.Subject)
		}
		if !held {
			return nil, fmt.Errorf("stream %s exists but does not hold the subject %s (its subjects: %v)",
				o.Stream, o.Subject, st.CachedInfo().Config.Subjects)
		}
	} else if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: o.Stream, Subjects: []string{o.Subject},
			Retention: jetstream.WorkQueuePolicy}); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("stream %s: %w", o.Stream, err)
		}
	} else {
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
	// While disconnected, an outage would pass for an empty queue: nats.go keeps pull requests
	// for the reconnect and Next just times out. Failing instead (after a second, as Take may
	// wait) makes the outage visible and lets the caller back off.
	if err := awaitConnection(ctx, q.nc, time.Second); err != nil {
		return dst, err
	}
	it, err := q.iterator(ctx, n)
	if err != nil {
		return dst, err
	}
	before := len(dst)
	first, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for len(dst)-before < n {
		opt := jetstream.NextContext(first)
		if len(dst) > before {
			opt = jetstream.NextMaxWait(takeLinger)
		}
		msg, err := it.Next(opt)
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				break
			}
			// The iterator is done for (connection closed, consumer deleted): the next Take
			// starts another.
			q.retire(it)
			if len(dst) > before {
				break
			}
			return dst, err
		}
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
	if len(dst) == before && !q.nc.IsConnected() {
		return dst, ErrNotConnected // the connection dropped during the pull
	}
	return dst, nil
}

// iterator returns the pulling iterator, starting one sized for takes of n when there is none or
// the connection was re-established since. It stops pulling when ctx, the context of the Take
// that started it (a pipeline's run), ends.
func (q *Queue) iterator(ctx context.Context, n int) (jetstream.MessagesContext, error) {
	reconnects := q.nc.Stats().Reconnects
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.iter != nil {
		if q.reconnects == reconnects {
			return q.iter, nil
		}
		q.stopIterator()
	}
	it, err := q.cons.Messages(
		jetstream.PullMaxMessages(min(max(4*n, minPrefetch), maxPrefetch)),
		// A silent server is the connection's to notice (its pings); the iterator just pulls
		// again.
		jetstream.WithMessagesErrOnMissingHeartbeat(false))
	if err != nil {
		return nil, err
	}
	q.iter, q.reconnects = it, reconnects
	q.unwatch = context.AfterFunc(ctx, func() { q.retire(it) })
	return it, nil
}

// retire stops it unless another iterator replaced it already.
func (q *Queue) retire(it jetstream.MessagesContext) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.iter == it {
		q.stopIterator()
	}
}

// stopIterator stops the current iterator; q.mu is held.
func (q *Queue) stopIterator() {
	q.unwatch()
	it := q.iter
	q.iter, q.unwatch = nil, nil
	q.giveBack(it)
}

// giveBack stops it pulling and NAKs what it buffered and nobody took, so that those messages
// go out again at once rather than after the ack wait. Messages still on the wire when it stops
// come back after the ack wait.
func (q *Queue) giveBack(it jetstream.MessagesContext) {
	it.Drain()
	gave := false
	for {
		msg, err := it.Next(jetstream.NextMaxWait(20 * time.Millisecond))
		if err != nil {
			break
		}
		if _, due := headers(msg); time.Until(due) > 0 {
			_ = msg.NakWithDelay(time.Until(due))
		} else {
			_ = msg.Nak()
		}
		gave = true
	}
	if gave && q.nc.IsConnected() {
		_ = q.nc.FlushTimeout(time.Second)
	}
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

// Release implements engine.Source: the messages are handed out again at once, after those this
// consumer pulled already and before the rest.
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
