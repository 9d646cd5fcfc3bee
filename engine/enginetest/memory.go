package enginetest

import (
	"context"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
)

// Memory is a Source that holds its messages in memory, for testing sinks and the pipeline
// without a broker. Each message's Raw is its body; Token numbers it. It records how every
// message was settled.
type Memory struct {
	mu       sync.Mutex
	queue    [][]byte
	next     uint64
	taken    map[uint64][]byte
	Acked    map[string]int    // body -> acks
	Retried  map[string]int    // body -> retries scheduled
	Dead     map[string]string // body -> reason
	Released int
}

// NewMemory returns a Memory holding bodies, in order.
func NewMemory(bodies ...[]byte) *Memory {
	return &Memory{queue: bodies, taken: map[uint64][]byte{}, Acked: map[string]int{},
		Retried: map[string]int{}, Dead: map[string]string{}}
}

// Push queues more bodies behind those already queued.
func (q *Memory) Push(bodies ...[]byte) {
	q.mu.Lock()
	q.queue = append(q.queue, bodies...)
	q.mu.Unlock()
}

// Take implements engine.Source.
func (q *Memory) Take(ctx context.Context, dst []*engine.Message, n int) ([]*engine.Message, error) {
	q.mu.Lock()
	k := min(n, len(q.queue))
	for _, b := range q.queue[:k] {
		q.next++
		m := engine.GetMessage()
		m.SetRaw(b)
		m.Token = q.next
		m.TakenAt = time.Now().UnixNano()
		q.taken[q.next] = b
		dst = append(dst, m)
	}
	q.queue = q.queue[k:]
	q.mu.Unlock()
	if k == 0 {
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
	return dst, nil
}

func (q *Memory) settle(m *engine.Message, into map[string]int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	b := q.taken[m.Token]
	delete(q.taken, m.Token)
	if into != nil {
		into[string(b)]++
	}
}

// Ack implements engine.Source.
func (q *Memory) Ack(_ context.Context, m *engine.Message) error {
	q.settle(m, q.Acked)
	return nil
}

// Retry implements engine.Source; the message is recorded, not queued again.
func (q *Memory) Retry(_ context.Context, m *engine.Message, _ int, _ time.Duration) error {
	q.settle(m, q.Retried)
	return nil
}

// DeadLetter implements engine.Source.
func (q *Memory) DeadLetter(_ context.Context, m *engine.Message, f engine.Failure) error {
	q.mu.Lock()
	q.Dead[string(q.taken[m.Token])] = f.Reason
	q.mu.Unlock()
	q.settle(m, nil)
	return nil
}

// Release implements engine.Source: the messages go back to the head of the queue.
func (q *Memory) Release(_ context.Context, ms []*engine.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	back := make([][]byte, 0, len(ms)+len(q.queue))
	for _, m := range ms {
		back = append(back, q.taken[m.Token])
		delete(q.taken, m.Token)
	}
	q.queue = append(back, q.queue...)
	q.Released += len(ms)
	return nil
}

// Unsettled reports how many taken messages were never settled, and how many wait in the queue.
func (q *Memory) Unsettled() (inFlight, queued int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.taken), len(q.queue)
}

// Settled reports how many messages were acked, retried and dead-lettered so far.
func (q *Memory) Settled() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.Dead)
	for _, c := range q.Acked {
		n += c
	}
	for _, c := range q.Retried {
		n += c
	}
	return n
}
