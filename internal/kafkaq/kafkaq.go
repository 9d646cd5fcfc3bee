// Package kafkaq is the Kafka adapter of the engine: a consumer group over a topic is an
// at-least-once Source. Offsets are committed only up to the oldest message not yet settled, so
// a crash makes the group hand out again everything unsettled; a retry is produced on a retry
// topic with the time it is due, read back by the same consumers and held until then; a dead
// letter is produced, with its reason, on a dead-letter topic before its offset is released.
package kafkaq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Options name the topics and the group.
type Options struct {
	Topic, RetryTopic, DeadTopic string
	// Group is the consumer group every deliverer of the topic shares.
	Group string
	// Seeds are the brokers' addresses.
	Seeds []string
	// EncodeDead appends the dead-letter entry of m.
	EncodeDead func(dst []byte, m *engine.Message, f engine.Failure, instance string, at time.Time) []byte
	// Instance names this consumer in dead letters.
	Instance string
}

// Header names of a retry record.
const (
	retriesHeader   = "x-herald-retries"
	notBeforeHeader = "x-herald-not-before" // Unix milliseconds
)

// Queue is an engine.Source over a Kafka consumer group.
type Queue struct {
	cl *kgo.Client
	o  Options

	mu       sync.Mutex
	commitMu sync.Mutex
	next     uint64
	held     map[uint64]*taken // token -> taken record, until settled
	parts    map[partition]*partState
	waiting  []*taken // retries read before they are due
	released []*taken // handed back by Release, handed out again first
}

type partition struct {
	topic string
	p     int32
}

// partState tracks the offsets taken from one partition, so that commits never pass one that is
// not settled.
type partState struct {
	taken     []int64 // in offset order
	done      map[int64]bool
	committed int64 // the next offset the group will hand out after a crash
}

type taken struct {
	rec *kgo.Record
	id  uint64
}

// Open joins the group and starts consuming the topic and its retry topic.
func Open(o Options) (*Queue, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(o.Seeds...),
		kgo.ConsumerGroup(o.Group),
		kgo.ConsumeTopics(o.Topic, o.RetryTopic),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.SessionTimeout(6*time.Second),
		kgo.HeartbeatInterval(500*time.Millisecond),
	)
	if err != nil {
		return nil, err
	}
	return &Queue{cl: cl, o: o, held: map[uint64]*taken{}, parts: map[partition]*partState{}}, nil
}

// Close leaves the group without committing anything more: what is unsettled is handed out again
// by the group.
func (q *Queue) Close() { q.cl.Close() }

func notBefore(r *kgo.Record) time.Time {
	for _, h := range r.Headers {
		if h.Key == notBeforeHeader {
			if ms, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
				return time.UnixMilli(ms)
			}
		}
	}
	return time.Time{}
}

func recordRetries(r *kgo.Record) int {
	for _, h := range r.Headers {
		if h.Key == retriesHeader {
			if n, err := strconv.Atoi(string(h.Value)); err == nil {
				return n
			}
		}
	}
	return 0
}

// Take implements engine.Source: released messages first, then due retries, then what a poll of
// up to a second brings.
func (q *Queue) Take(ctx context.Context, dst []*engine.Message, n int) ([]*engine.Message, error) {
	start := len(dst)
	q.mu.Lock()
	for len(q.released) > 0 && len(dst)-start < n {
		dst = append(dst, q.message(q.released[0]))
		q.released = q.released[1:]
	}
	now := time.Now()
	keep := q.waiting[:0]
	for _, t := range q.waiting {
		if len(dst)-start < n && !notBefore(t.rec).After(now) {
			dst = append(dst, q.message(t))
			continue
		}
		keep = append(keep, t)
	}
	q.waiting = keep
	q.mu.Unlock()
	if len(dst)-start >= n {
		return dst, nil
	}
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	fetches := q.cl.PollRecords(pctx, n-(len(dst)-start))
	cancel()
	var errs []error
	fetches.EachError(func(topic string, p int32, err error) {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", topic, p, err))
		}
	})
	q.mu.Lock()
	defer q.mu.Unlock()
	fetches.EachRecord(func(r *kgo.Record) {
		t := q.track(r)
		if r.Topic == q.o.RetryTopic && notBefore(r).After(time.Now()) {
			q.waiting = append(q.waiting, t)
			return
		}
		dst = append(dst, q.message(t))
	})
	return dst, errors.Join(errs...)
}

// track registers a polled record as taken from its partition. Called with mu held.
func (q *Queue) track(r *kgo.Record) *taken {
	k := partition{r.Topic, r.Partition}
	ps := q.parts[k]
	if ps == nil {
		ps = &partState{done: map[int64]bool{}}
		q.parts[k] = ps
	}
	ps.taken = append(ps.taken, r.Offset)
	q.next++
	t := &taken{rec: r, id: q.next}
	q.held[q.next] = t
	return t
}

// message builds the engine message of t. Called with mu held.
func (q *Queue) message(t *taken) *engine.Message {
	m := engine.GetMessage()
	m.SetRaw(t.rec.Value)
	m.TakenAt = time.Now().UnixNano()
	m.Token = t.id
	m.SourceRetries = recordRetries(t.rec)
	return m
}

// Ack implements engine.Source: the record is settled, and the partition's committed offset
// moves up to the first record not yet settled.
func (q *Queue) Ack(ctx context.Context, m *engine.Message) error {
	q.mu.Lock()
	id := m.Token
	t, ok := q.held[id]
	if !ok {
		q.mu.Unlock()
		return fmt.Errorf("kafkaq: message %d is not held by this consumer", m.Token)
	}
	delete(q.held, id)
	ps := q.parts[partition{t.rec.Topic, t.rec.Partition}]
	ps.done[t.rec.Offset] = true
	last := int64(-1)
	for len(ps.taken) > 0 && ps.done[ps.taken[0]] {
		last = ps.taken[0]
		delete(ps.done, last)
		ps.taken = ps.taken[1:]
	}
	q.mu.Unlock()
	if last < 0 {
		return nil
	}
	// Commits of one partition go out one at a time and only forward, whatever order the
	// acknowledgments that caused them finish in.
	q.commitMu.Lock()
	defer q.commitMu.Unlock()
	if last < ps.committed {
		return nil
	}
	err := q.cl.CommitRecords(ctx, &kgo.Record{Topic: t.rec.Topic, Partition: t.rec.Partition, Offset: last, LeaderEpoch: t.rec.LeaderEpoch})
	if err == nil {
		ps.committed = last + 1
	}
	return err
}

// Retry implements engine.Source: the entry goes to the retry topic with its retry count and the
// time it is due, then its offset is settled.
func (q *Queue) Retry(ctx context.Context, m *engine.Message, retries int, delay time.Duration) error {
	r := &kgo.Record{Topic: q.o.RetryTopic, Value: append([]byte(nil), m.Raw...), Headers: []kgo.RecordHeader{
		{Key: retriesHeader, Value: []byte(strconv.Itoa(retries))},
		{Key: notBeforeHeader, Value: []byte(strconv.FormatInt(time.Now().Add(delay).UnixMilli(), 10))},
	}}
	if err := q.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return err
	}
	return q.Ack(ctx, m)
}

// DeadLetter implements engine.Source: the dead letter is produced (acknowledged by the brokers)
// before the original's offset is settled.
func (q *Queue) DeadLetter(ctx context.Context, m *engine.Message, f engine.Failure) error {
	entry := q.o.EncodeDead(nil, m, f, q.o.Instance, time.Now())
	r := &kgo.Record{Topic: q.o.DeadTopic, Value: entry, Headers: []kgo.RecordHeader{{Key: "x-herald-reason", Value: []byte(f.Reason)}}}
	if err := q.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return err
	}
	return q.Ack(ctx, m)
}

// Release implements engine.Source: the messages stay taken (their offsets uncommitted) and are
// handed out again first, in their order.
func (q *Queue) Release(ctx context.Context, ms []*engine.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	var back []*taken
	for _, m := range ms {
		if t, ok := q.held[m.Token]; ok {
			back = append(back, t)
		}
	}
	q.released = append(back, q.released...)
	return nil
}
