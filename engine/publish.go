package engine

import (
	"context"
	"time"
)

// Publication is one entry written to a broker: a Redis list, a NATS subject, a Kafka topic or an
// AMQP exchange (Dest), with the Kafka record key or AMQP routing key (Key, may be empty).
type Publication struct {
	Dest []byte
	Key  []byte
	Body []byte
}

// Publisher writes entries to a broker. Publish returns nil only once the broker has stored every
// entry of ps (a Redis reply, a JetStream ack, a Kafka ack from all in-sync replicas, an AMQP
// confirm), so that a caller may acknowledge what caused them; on an error some entries may have
// been stored, which a retry duplicates, never loses. Entries with the same Dest and Key are
// stored in the order of ps. Publish keeps no reference to ps once it returns, so callers reuse
// its buffers. It may be called from many goroutines at once.
type Publisher interface {
	Publish(ctx context.Context, ps []Publication) error
}

// PublishSink is the Sink of a Publisher: a message's URL names the destination (a list, subject,
// topic or exchange) and its payload is published there, so that a pipeline can move messages
// from one broker to another with the same retries and dead letters as an HTTP delivery.
type PublishSink struct {
	P Publisher
	// Key, when set, gives the record key or routing key of a message.
	Key func(m *Message) []byte
	// Timeout bounds one publish; default 10 s.
	Timeout time.Duration
}

// Deliver implements Sink.
func (s PublishSink) Deliver(m *Message) Result {
	d := s.Timeout
	if d <= 0 {
		d = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	p := [1]Publication{{Dest: m.URL, Body: m.Payload}}
	if s.Key != nil {
		p[0].Key = s.Key(m)
	}
	if err := s.P.Publish(ctx, p[:]); err != nil {
		return Result{Err: err}
	}
	return Result{}
}
