// Package kafkaq is the Kafka adapter of the engine: a consumer group over a topic is an
// at-least-once Source. Offsets are committed only up to the oldest message not yet settled, so
// a crash makes the group hand out again everything unsettled; a retry is produced on a retry
// topic with the time it is due, read back by the same consumers and held until then; a dead
// letter is produced, with its reason, on a dead-letter topic before its offset is released.
// Publisher writes to topics, for a pipeline whose sink is Kafka.
//
// Commits go out in the background, right after the settling that allows them and again until
// the brokers take them, so that an outage delays them instead of failing settlements; while
// no broker answers, Take reports it.
package kafkaq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
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

// Timing of the health checks and commits.
const (
	// pollWait bounds one poll of Take, as engine.Source asks.
	pollWait = time.Second
	// pingEvery spaces the reachability checks of an idle consumer: the client retries broken
	// connections by itself, and a poll of a cluster that is down mostly just comes back empty.
	pingEvery = time.Second
	// pingWait bounds one check, so that a blackholed broker is reported as fast as a refused one.
	pingWait = time.Second
	// commitWait bounds one commit, which the client otherwise retries for as long as it can.
	commitWait = 10 * time.Second
	// commitBackoffMax caps the wait between failed commits, so that they resume soon after
	// the brokers do.
	commitBackoffMax = time.Second
)

// Queue is an engine.Source over a Kafka consumer group.
type Queue struct {
	cl *kgo.Client
	o  Options

	ctx    context.Context // ends with Close, abandoning commits not yet made
	cancel context.CancelFunc
	kick   chan struct{} // tells the committer there is something new to commit
	done   chan struct{} // closed when the committer has ended

	mu        sync.Mutex
	next      uint64
	held      map[uint64]*taken // token -> taken record, until settled
	parts     map[partition]*partState
	waiting   []*taken // retries read before they are due
	released  []*taken // handed back by Release, handed out again first
	commitErr error    // why the last commit failed; nil once one succeeds

	pingMu  sync.Mutex
	pingAt  time.Time
	pingErr error
}

type partition struct {
	topic string
	p     int32
}

// partState tracks the offsets taken from one partition, so that commits never pass one that is
// not settled.
type partState struct {
	taken []takenOffset // in offset order
	done  map[int64]bool
	// seen is one past the highest offset handed out. After a rebalance, which an outage of the
	// group coordinator causes, the client fetches again from the committed offset: records
	// below seen are either still held or settled, and handing them out again would put a
	// second copy in taken that no settlement ever removes, stopping the commits for good.
	seen int64
	// want is the offset to commit (one past the settled prefix of taken), committed the
	// highest one the brokers accepted from this consumer.
	want      kgo.EpochOffset
	committed int64
}

type takenOffset struct {
	offset int64
	epoch  int32
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
	ctx, cancel := context.WithCancel(context.Background())
	q := &Queue{cl: cl, o: o, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1), done: make(chan struct{}),
		held: map[uint64]*taken{}, parts: map[partition]*partState{}}
	go q.commitLoop()
	return q, nil
}

// Close leaves the group without committing anything more, as a crash would: what is unsettled,
// and what was settled too recently to be committed yet, is handed out again by the group. A
// graceful shutdown calls Flush first.
func (q *Queue) Close() {
	q.cancel()
	<-q.done
	q.cl.Close()
}

// Flush waits until every settled offset is committed, or until ctx ends, returning then why
// the last commit failed.
func (q *Queue) Flush(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		q.nudge()
		q.mu.Lock()
		pending, err := q.uncommittedLocked() != nil, q.commitErr
		q.mu.Unlock()
		if !pending {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("kafkaq: offsets not committed: %w", err)
			}
			return fmt.Errorf("kafkaq: offsets not committed: %w", context.Cause(ctx))
		}
	}
}

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
// up to a second brings. It fails only when it has nothing to hand out: with what the poll
// reported, or, after an empty poll, when no broker answers or offsets cannot be committed.
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
	pctx, cancel := context.WithTimeout(ctx, pollWait)
	fetches := q.cl.PollRecords(pctx, n-(len(dst)-start))
	cancel()
	var errs []error
	fetches.EachError(func(topic string, p int32, err error) {
		switch {
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		case topic == "": // the client's own errors, such as failing to join the group
			errs = append(errs, err)
		default:
			errs = append(errs, fmt.Errorf("%s[%d]: %w", topic, p, err))
		}
	})
	q.mu.Lock()
	fetches.EachRecord(func(r *kgo.Record) {
		t := q.track(r)
		if t == nil {
			return
		}
		if r.Topic == q.o.RetryTopic && notBefore(r).After(time.Now()) {
			q.waiting = append(q.waiting, t)
			return
		}
		dst = append(dst, q.message(t))
	})
	commitErr := q.commitErr
	q.mu.Unlock()
	// The pipeline drops what comes with an error, and the records would then stay held,
	// never settled: an error of some partitions waits for a poll that brings nothing.
	if len(dst) > start || ctx.Err() != nil {
		return dst, nil
	}
	if len(errs) > 0 {
		return dst, fmt.Errorf("kafkaq: %w", errors.Join(errs...))
	}
	if err := q.reachable(ctx); err != nil {
		return dst, fmt.Errorf("kafkaq: no broker reachable: %w", err)
	}
	if commitErr != nil {
		return dst, fmt.Errorf("kafkaq: committing offsets: %w", commitErr)
	}
	return dst, nil
}

// reachable asks a broker for metadata, at most once per pingEvery; in between it repeats the
// last answer, so that the health a pipeline reports does not flap with every other call.
func (q *Queue) reachable(ctx context.Context) error {
	q.pingMu.Lock()
	defer q.pingMu.Unlock()
	if time.Since(q.pingAt) < pingEvery {
		return q.pingErr
	}
	pctx, cancel := context.WithTimeout(ctx, pingWait)
	err := q.cl.Ping(pctx)
	cancel()
	if ctx.Err() != nil {
		return nil // the caller is leaving; this says nothing about the brokers
	}
	q.pingAt, q.pingErr = time.Now(), err
	return err
}

// track registers a polled record as taken from its partition, or returns nil for one handed
// out already. Called with mu held.
func (q *Queue) track(r *kgo.Record) *taken {
	k := partition{r.Topic, r.Partition}
	ps := q.parts[k]
	if ps == nil {
		ps = &partState{done: map[int64]bool{}}
		q.parts[k] = ps
	}
	if r.Offset < ps.seen {
		return nil
	}
	ps.seen = r.Offset + 1
	ps.taken = append(ps.taken, takenOffset{r.Offset, r.LeaderEpoch})
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

// Ack implements engine.Source: the record is settled, and the partition's offset to commit
// moves up to the first record not yet settled. The commit itself is the committer's: failing
// here would have the caller settle again a message no longer held.
func (q *Queue) Ack(_ context.Context, m *engine.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	t, ok := q.held[m.Token]
	if !ok {
		return fmt.Errorf("kafkaq: message %d is not held by this consumer", m.Token)
	}
	delete(q.held, m.Token)
	ps := q.parts[partition{t.rec.Topic, t.rec.Partition}]
	ps.done[t.rec.Offset] = true
	moved := false
	for len(ps.taken) > 0 && ps.done[ps.taken[0].offset] {
		first := ps.taken[0]
		delete(ps.done, first.offset)
		ps.taken = ps.taken[1:]
		ps.want = kgo.EpochOffset{Epoch: first.epoch, Offset: first.offset + 1}
		moved = true
	}
	if moved {
		q.nudge()
	}
	return nil
}

// nudge wakes the committer without waiting for it.
func (q *Queue) nudge() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// uncommittedLocked returns the offsets settled but not committed, nil when there are none.
// Called with mu held.
func (q *Queue) uncommittedLocked() map[string]map[int32]kgo.EpochOffset {
	var out map[string]map[int32]kgo.EpochOffset
	for k, ps := range q.parts {
		if ps.want.Offset <= ps.committed {
			continue
		}
		if out == nil {
			out = map[string]map[int32]kgo.EpochOffset{}
		}
		if out[k.topic] == nil {
			out[k.topic] = map[int32]kgo.EpochOffset{}
		}
		out[k.topic][k.p] = ps.want
	}
	return out
}

// commitLoop commits, in one request for all partitions, what was settled since the last
// commit, until Close. A failed commit is tried again, with what was settled meanwhile, until
// one succeeds: an outage delays commits but loses none.
func (q *Queue) commitLoop() {
	defer close(q.done)
	var backoff time.Duration
	for {
		select {
		case <-q.ctx.Done():
			return
		case <-q.kick:
		}
		for {
			q.mu.Lock()
			offsets := q.uncommittedLocked()
			q.mu.Unlock()
			if offsets == nil {
				break
			}
			err := q.commit(offsets)
			if q.ctx.Err() != nil {
				return
			}
			q.mu.Lock()
			q.commitErr = err
			if err == nil {
				for topic, parts := range offsets {
					for p, eo := range parts {
						ps := q.parts[partition{topic, p}]
						ps.committed = max(ps.committed, eo.Offset)
					}
				}
			}
			q.mu.Unlock()
			if err == nil {
				backoff = 0
				continue
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), commitBackoffMax)
			select {
			case <-q.ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

// commit commits offsets and returns the first error of the request or of a partition.
func (q *Queue) commit(offsets map[string]map[int32]kgo.EpochOffset) error {
	ctx, cancel := context.WithTimeout(q.ctx, commitWait)
	defer cancel()
	var err error
	q.cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, rerr error) {
		if err = rerr; err != nil {
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if perr := kerr.ErrorForCode(p.ErrorCode); perr != nil {
					err = fmt.Errorf("%s[%d]: %w", t.Topic, p.Partition, perr)
					return
				}
			}
		}
	})
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

// Ping reports whether a broker answers, for the service's liveness.
func (q *Queue) Ping(ctx context.Context) error { return q.cl.Ping(ctx) }
