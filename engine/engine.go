package engine

import (
	"context"
	"time"
)

// Source hands out messages and settles each one exactly once, after its delivery ended. Every
// method may be called from many goroutines at once.
//
// A Source that can keep a taken message until it is settled (an in-flight list, a JetStream
// consumer) is at-least-once: a crash between Take and settle redelivers. One that cannot (plain
// BLPOP) is at-most-once and must say so in its documentation.
type Source interface {
	// Take appends up to n messages to dst, waiting at most about a second for the first one so
	// that callers can notice shutdown. It returns dst unchanged and a nil error when nothing came.
	Take(ctx context.Context, dst []*Message, n int) ([]*Message, error)
	// Ack settles a delivered message (or one given up on without a trace: Drop).
	Ack(ctx context.Context, m *Message) error
	// Retry settles m by scheduling attempt number retries after delay.
	Retry(ctx context.Context, m *Message, retries int, delay time.Duration) error
	// DeadLetter settles m by storing it with the reason it could not be delivered.
	DeadLetter(ctx context.Context, m *Message, f Failure) error
	// Release returns messages that were taken but never started to the head of the queue.
	Release(ctx context.Context, ms []*Message) error
}

// Sink delivers one message. It must honour its own timeout: the pipeline does not cancel it.
type Sink interface {
	Deliver(m *Message) Result
}

// Decoder fills a message's URL, Headers, Payload and Retries from its Raw bytes. An error means
// the entry can never be delivered; its text is the dead-letter reason.
type Decoder func(m *Message) error

// Decode runs d on m and then keeps the higher retry count of the entry's and the Source's, so
// that a broker carrying the count outside the entry (a header, a delivery count) and an entry
// carrying its own (a reference retry member) both count.
func Decode(d Decoder, m *Message) error {
	err := d(m)
	if m.SourceRetries > m.Retries {
		m.Retries = m.SourceRetries
	}
	return err
}

// Result is what a Sink says of one delivery attempt.
type Result struct {
	// Err is nil when the message was delivered.
	Err error
	// Status is the receiver's status code, 0 when none came back.
	Status int
	// Permanent marks failures that retrying cannot fix (an unsupported scheme, say).
	Permanent bool
	// RetryAfter, when set on a failure, is when the next attempt may be made: the receiver's
	// Retry-After, or how long a Gate wants a message held back. It replaces the policy's delay.
	RetryAfter time.Duration
	// Deferred marks a message a Gate held back before any attempt: it is retried after
	// RetryAfter without counting a retry.
	Deferred bool
}

// Gate decides, per message, whether its delivery may start now (rate and concurrency limits, a
// circuit breaker, an endpoint that is gone), may add to it (signature headers), and learns from
// how each delivery it let through ended.
type Gate interface {
	// Admit is called once m is decoded, just before its delivery. ok false settles m with r
	// instead of delivering it: a Deferred r is retried after r.RetryAfter without counting an
	// attempt, any other r counts as a failed attempt.
	Admit(m *Message) (r Result, ok bool)
	// Done is told how every delivery Admit let through ended, and returns the result the
	// message is settled with (a failure it knows cannot be retried made Permanent, say).
	Done(m *Message, r Result) Result
}

// Failure describes why a message was dead-lettered.
type Failure struct {
	Reason string
	Status int
}

// Outcome is how a message was settled.
type Outcome uint8

// The ways a message is settled.
const (
	Delivered Outcome = iota
	Retried
	DeadLettered
	Dropped
	Released
)

// String names the outcome for logs.
func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Retried:
		return "retried"
	case DeadLettered:
		return "dead-lettered"
	case Dropped:
		return "dropped"
	case Released:
		return "released"
	}
	return "unknown"
}

// Observer is told what the pipeline does, for metrics. Implementations must not block.
type Observer interface {
	// Taken reports n messages handed out by the source.
	Taken(n int)
	// Attempted reports one delivery attempt and how long the sink took.
	Attempted(r Result, took time.Duration)
	// Settled reports how a message ended and how long after it was taken.
	Settled(o Outcome, age time.Duration)
	// SourceHealth reports whether the last call to the source succeeded.
	SourceHealth(err error)
}

// NopObserver ignores everything.
type NopObserver struct{}

// Taken implements Observer.
func (NopObserver) Taken(int) {}

// Attempted implements Observer.
func (NopObserver) Attempted(Result, time.Duration) {}

// Settled implements Observer.
func (NopObserver) Settled(Outcome, time.Duration) {}

// SourceHealth implements Observer.
func (NopObserver) SourceHealth(error) {}
