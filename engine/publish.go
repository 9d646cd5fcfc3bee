package engine

import "context"

// Publication is one entry written to a broker: a Redis list, a NATS subject, a Kafka topic or an
// AMQP exchange (Dest), with the Kafka record key or AMQP routing key (Key, may be empty).
type Publication struct {
	Dest []byte
	Key  []byte
	Body []byte
}

// Publisher writes entries to a broker: the sink side of a broker adapter, through which services
// route events to it (Sink is the delivery side, one message to an HTTP or WebSocket receiver).
// Publish returns nil only once the broker has stored every entry of ps (a Redis reply, a JetStream ack, a Kafka ack from all in-sync replicas, an AMQP
// confirm), so that a caller may acknowledge what caused them; on an error some entries may have
// been stored, which a retry duplicates, never loses. Entries with the same Dest and Key are
// stored in the order of ps. Publish keeps no reference to ps once it returns, so callers reuse
// its buffers. It may be called from many goroutines at once.
type Publisher interface {
	Publish(ctx context.Context, ps []Publication) error
}
