package kafkaq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// PublisherOptions configure a Publisher.
type PublisherOptions struct {
	// Seeds are the brokers' addresses.
	Seeds []string
	// Partitions and Replication shape the topics the publisher creates; zero leaves each to
	// the brokers' defaults.
	Partitions  int32
	Replication int16
	// Linger holds records up to this long so that more share a request. Zero sends at once:
	// a Publish waits for its acknowledgments anyway, so lingering only pays when many
	// goroutines publish at the same time.
	Linger time.Duration
}

// Publisher is an engine.Publisher over Kafka: a Publication's Dest is the topic, created on
// first use if missing, and its Key the record key. Records are acknowledged by all in-sync
// replicas, and records with the same topic and key (an empty key included) always go to the
// same partition, which is what keeps their order.
type Publisher struct {
	cl *kgo.Client
	o  PublisherOptions

	createMu sync.Mutex
	mu       sync.Mutex
	topics   map[string]struct{} // created by us or found to exist
}

// NewPublisher starts a Publisher's client; it connects on first use.
func NewPublisher(o PublisherOptions) (*Publisher, error) {
	if len(o.Seeds) == 0 {
		return nil, errors.New("kafkaq: a publisher needs seed brokers")
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(o.Seeds...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(keyPartitioner()),
		kgo.ProducerLinger(o.Linger),
	)
	if err != nil {
		return nil, err
	}
	return &Publisher{cl: cl, o: o, topics: map[string]struct{}{}}, nil
}

// Close fails whatever is still buffered and closes the connections.
func (p *Publisher) Close() { p.cl.Close() }

// emptyKey stands for a missing key when partitioning: the default partitioner spreads keyless
// records over partitions, which would lose the order the engine promises for them.
var emptyKey = &kgo.Record{Key: []byte{}}

// keyPartitioner hashes keys as Kafka's Java client does (murmur2), so that other producers put a
// key on the same partition, and treats a missing key as the empty one.
func keyPartitioner() kgo.Partitioner {
	return kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
		// Keyed records never touch the sticky state of this partitioner, so sharing it is safe.
		tp := kgo.StickyKeyPartitioner(nil).ForTopic("")
		return func(r *kgo.Record, n int) int {
			if r.Key == nil {
				return tp.Partition(emptyKey, n)
			}
			return tp.Partition(r, n)
		}
	})
}

// publishWait collects the acknowledgments of one Publish.
type publishWait struct {
	mu     sync.Mutex
	left   int
	err    error
	failed []*kgo.Record
	// others is set when a record failed for a reason other than a context ending.
	others bool
	done   chan struct{}
}

func (w *publishWait) promise(r *kgo.Record, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if w.err == nil {
			w.err = fmt.Errorf("kafkaq: publishing to %s: %w", r.Topic, err)
		}
		w.failed = append(w.failed, r)
		w.others = w.others || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled))
	}
	if w.left--; w.left == 0 {
		close(w.done)
	}
}

// Publish implements engine.Publisher. It returns when every record is acknowledged, one failed,
// or ctx ends; records still in flight then may yet be stored, which is the duplicate a retry
// is allowed to make.
func (p *Publisher) Publish(ctx context.Context, ps []engine.Publication) error {
	if len(ps) == 0 {
		return nil
	}
	for i := range ps {
		if len(ps[i].Dest) == 0 {
			return errors.New("kafkaq: a publication without a topic")
		}
	}
	if err := p.ensureTopics(ctx, ps); err != nil {
		return err
	}
	// One block holds every copied key and value, and one the records: the client keeps them
	// until it acknowledges, after which they are garbage, whatever the caller does with ps.
	size := 0
	for i := range ps {
		size += len(ps[i].Key) + len(ps[i].Body)
	}
	buf := make([]byte, 0, size)
	recs := make([]kgo.Record, len(ps))
	w := &publishWait{left: len(ps), done: make(chan struct{})}
	var topic string
	for i := range ps {
		pb := &ps[i]
		if i == 0 || string(pb.Dest) != topic {
			topic = string(pb.Dest)
		}
		r := &recs[i]
		r.Topic = topic
		if len(pb.Key) > 0 {
			n := len(buf)
			buf = append(buf, pb.Key...)
			r.Key = buf[n:len(buf):len(buf)]
		}
		n := len(buf)
		buf = append(buf, pb.Body...)
		r.Value = buf[n:len(buf):len(buf)]
		if ctx.Err() != nil {
			// w.done never closes then: what was handed over is failed by the client
			// (with the rest of its partition's buffer, so no later record of a key
			// is stored after a gap) unless already sent.
			break
		}
		p.cl.Produce(ctx, r, w.promise)
	}
	for attempt := 0; ; attempt++ {
		select {
		case <-w.done:
		case <-ctx.Done():
			select {
			case <-w.done: // acknowledged just as ctx ended
			default:
				return fmt.Errorf("kafkaq: publishing: %w", context.Cause(ctx))
			}
		}
		w.mu.Lock()
		err, failed, others := w.err, w.failed, w.others
		w.mu.Unlock()
		// Records that failed on a context while ours is alive were failed for an earlier
		// call's: the client fails every record buffered behind one whose context ended (so
		// that no later record of a partition is stored after a gap), and those may be ours.
		// They are produced again, in their order, which keeps each partition's order.
		if err == nil || others || ctx.Err() != nil || attempt == 3 {
			return err
		}
		recs, w = p.again(ctx, recs, failed)
	}
}

// again produces the failed records of recs anew, in the order recs holds them, and returns
// the new records and what waits for them.
func (p *Publisher) again(ctx context.Context, recs []kgo.Record, failed []*kgo.Record) ([]kgo.Record, *publishWait) {
	pos := make(map[*kgo.Record]int, len(recs))
	for i := range recs {
		pos[&recs[i]] = i
	}
	slices.SortFunc(failed, func(a, b *kgo.Record) int { return pos[a] - pos[b] })
	next := make([]kgo.Record, len(failed))
	w := &publishWait{left: len(failed), done: make(chan struct{})}
	for i, r := range failed {
		next[i] = kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value}
	}
	for i := range next {
		p.cl.Produce(ctx, &next[i], w.promise)
	}
	return next, w
}

// ensureTopics creates the topics of ps not seen before. Kafka brokers may create topics on
// first metadata request, but that is often off in production and always off in kfake unless
// asked for, so the publisher asks explicitly.
func (p *Publisher) ensureTopics(ctx context.Context, ps []engine.Publication) error {
	missing := p.unknownTopics(ps, nil)
	if len(missing) == 0 {
		return nil
	}
	// One creation at a time, so that concurrent first publishes to a topic all wait for it to
	// exist instead of producing to a topic the client may give up on as unknown.
	p.createMu.Lock()
	defer p.createMu.Unlock()
	if missing = p.unknownTopics(ps, nil); len(missing) == 0 {
		return nil
	}
	if err := p.createTopics(ctx, missing); err != nil {
		return err
	}
	p.mu.Lock()
	for _, t := range missing {
		p.topics[t] = struct{}{}
	}
	p.mu.Unlock()
	return nil
}

// unknownTopics appends to dst the distinct topics of ps not known to exist.
func (p *Publisher) unknownTopics(ps []engine.Publication, dst []string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range ps {
		if _, ok := p.topics[string(ps[i].Dest)]; ok || slices.Contains(dst, string(ps[i].Dest)) {
			continue
		}
		dst = append(dst, string(ps[i].Dest))
	}
	return dst
}

// createTopics creates topics in one request. A topic that exists is what was wanted, and one
// this client may not create may well exist: that is left to the produce, which finds it or says
// so, rather than asking again on every call. Any other refusal is the answer.
func (p *Publisher) createTopics(ctx context.Context, topics []string) error {
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 10_000
	for _, t := range topics {
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic = t
		rt.NumPartitions = -1
		if p.o.Partitions > 0 {
			rt.NumPartitions = p.o.Partitions
		}
		rt.ReplicationFactor = -1
		if p.o.Replication > 0 {
			rt.ReplicationFactor = p.o.Replication
		}
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, p.cl)
	if err != nil {
		return fmt.Errorf("kafkaq: creating topics %v: %w", topics, err)
	}
	var errs []error
	for _, t := range resp.Topics {
		err := kerr.ErrorForCode(t.ErrorCode)
		switch {
		case err == nil, errors.Is(err, kerr.TopicAlreadyExists),
			errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed):
		default:
			errs = append(errs, fmt.Errorf("kafkaq: creating topic %s: %w", t.Topic, err))
		}
	}
	return errors.Join(errs...)
}

// Ping reports whether a broker answers, for the service's liveness.
func (p *Publisher) Ping(ctx context.Context) error { return p.cl.Ping(ctx) }

// CreateTopics makes topics exist (a queue's topic, retry topic and dead-letter topic before its
// consumers start: a retry produced to a topic that does not exist fails until someone makes it).
func (p *Publisher) CreateTopics(ctx context.Context, topics ...string) error {
	ps := make([]engine.Publication, len(topics))
	for i, t := range topics {
		ps[i].Dest = []byte(t)
	}
	return p.ensureTopics(ctx, ps)
}
