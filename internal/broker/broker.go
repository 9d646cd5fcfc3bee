// Package broker opens the broker a configuration names, whatever its kind, as an engine Source
// or Publisher: the one place that knows every adapter, so that services choose a broker by URL
// and never import one directly.
package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/amqpq"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/kafkaq"
	"github.com/heraldhq/herald/internal/natsq"
	"github.com/heraldhq/herald/internal/redisq"
)

// Source is an opened at-least-once Source.
type Source struct {
	engine.Source
	// Names says what is read and where dead letters go, for the start-up log.
	Names []any
	// Live reports whether the broker answers.
	Live func(ctx context.Context) bool
	// Close stops the background work and the connection; unsettled messages return to the
	// broker.
	Close func()
}

// Publisher is an opened Publisher.
type Publisher struct {
	engine.Publisher
	Live  func(ctx context.Context) bool
	Close func()
}

// SourceOptions say what a Source reads when the URL does not.
type SourceOptions struct {
	// Queue is the default list, subject, topic or queue (the URL's parameter wins).
	Queue string
	// Group names the consumers that share the queue: the NATS durable, the Kafka group.
	Group string
	// Instance names this consumer in dead letters and leases.
	Instance string
	// AckWait bounds a delivery: after it, an unacknowledged NATS message goes to another
	// consumer. It must exceed the delivery timeout.
	AckWait time.Duration
}

// OpenSource connects to b and opens its queue, waiting for the broker until ctx ends. Entries
// are dead-lettered in the ACA-Py dead-letter format beside the queue: <queue>_dead (NATS stream
// and subject, Kafka topic), the dead-letter exchange and queue (RabbitMQ), {<list>}:dead (Redis).
func OpenSource(ctx context.Context, b config.Broker, o SourceOptions, log *slog.Logger) (*Source, error) {
	queue := b.Param(config.QueueParam[b.Kind], o.Queue)
	if queue == "" {
		return nil, &config.Error{Key: b.Redacted(), Reason: fmt.Sprintf("no %s named (?%s=)", config.QueueParam[b.Kind], config.QueueParam[b.Kind])}
	}
	group := b.Param("group", o.Group)
	switch b.Kind {
	case config.KindNATS:
		nc, err := natsq.Connect(ctx, b.URL, log)
		if err != nil {
			return nil, err
		}
		no := natsOptions(b, queue, group, o)
		q, err := natsq.Open(ctx, nc, no)
		if err != nil {
			nc.Close()
			return nil, err
		}
		return &Source{Source: q,
			Names: []any{"stream", no.Stream, "subject", no.Subject, "consumer", no.Consumer, "dead_letter_subject", no.DeadSubject},
			Live:  func(context.Context) bool { return nc.IsConnected() },
			Close: nc.Close}, nil
	case config.KindKafka:
		ko := kafkaq.Options{Topic: queue, RetryTopic: queue + "_retry", DeadTopic: queue + "_dead", Group: group,
			Seeds: b.Seeds, Instance: o.Instance, EncodeDead: acapy.EncodeDead}
		// The queue's topics are made by a publisher of its own: the consumer's client only
		// reads and retries into them.
		admin, err := kafkaq.NewPublisher(kafkaq.PublisherOptions{Seeds: b.Seeds})
		if err != nil {
			return nil, err
		}
		err = CreateKafkaTopics(ctx, admin, queueTopics(queue), log)
		admin.Close()
		if err != nil {
			return nil, err
		}
		q, err := kafkaq.Open(ko)
		if err != nil {
			return nil, err
		}
		return &Source{Source: q,
			Names: []any{"topic", ko.Topic, "retry_topic", ko.RetryTopic, "dead_letter_topic", ko.DeadTopic, "group", ko.Group},
			Live:  func(ctx context.Context) bool { return q.Ping(ctx) == nil },
			Close: func() {
				// What was settled is committed before leaving; the rest the group hands out again.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = q.Flush(ctx)
				q.Close()
			}}, nil
	case config.KindAMQP:
		ao := amqpq.Options{Queue: queue, Instance: o.Instance, EncodeDead: acapy.EncodeDead,
			Exchange: b.Param("exchange", "")}
		if ao.Exchange != "" {
			// Bound with the keys it names, or with the queue's own name as the one key.
			ao.RoutingKeys = strings.Split(b.Param("routing_key", queue), ",")
		}
		q, err := amqpq.Dial(ctx, b.URL, ao, log)
		if err != nil {
			return nil, err
		}
		return &Source{Source: q,
			Names: []any{"queue", ao.Queue, "exchange", ao.Exchange, "routing_keys", ao.RoutingKeys, "dead_letter_queue", amqpq.DeadQueue(ao.Queue)},
			Live:  func(context.Context) bool { return q.Connected() },
			Close: q.Close}, nil
	case config.KindRedis:
		c, err := redisq.Connect(ctx, b.URL, log)
		if err != nil {
			return nil, err
		}
		keys := redisq.NewKeys(queue, queue+"_retry", "")
		q := redisq.New(c, redisq.Options{Keys: keys, Mode: redisq.AtLeastOnce, Instance: o.Instance,
			EncodeRetry: acapy.AppendRetryMember, EncodeDead: acapy.EncodeDead, Log: log})
		stop, err := q.Start(ctx)
		if err != nil {
			c.Close()
			return nil, err
		}
		return &Source{Source: q,
			Names: []any{"list", keys.Queue, "retry_set", keys.RetrySet, "dead_letter", keys.Dead},
			Live:  func(ctx context.Context) bool { return redisq.PingAll(ctx, c) == nil },
			Close: func() { stop(); c.Close() }}, nil
	}
	return nil, fmt.Errorf("broker: unknown kind %q", b.Kind)
}

func natsOptions(b config.Broker, queue, group string, o SourceOptions) natsq.Options {
	stream := b.Param("stream", streamName(queue))
	return natsq.Options{
		Stream: stream, Subject: queue, Consumer: b.Param("consumer", group),
		DeadStream: stream + "_dead", DeadSubject: deadSubject(queue),
		AckWait: o.AckWait, Instance: o.Instance, EncodeDead: acapy.EncodeDead,
	}
}

// PublisherOptions say how a Publisher is set up where the kind needs it.
type PublisherOptions struct {
	// NATSStream holds NATSSubjects; it is created when missing.
	NATSStream   string
	NATSSubjects []string
	// Queues are outbound queues the publisher writes to that `herald deliver --source` reads:
	// they are declared as that deliverer declares them, so that nothing published before it
	// first starts is dropped (a NATS subject without a stream, a RabbitMQ queue not yet
	// declared) and the two never disagree on a queue's settings.
	Queues []string
}

// DeliverGroup is the consumer group (NATS durable, Kafka group) of `herald deliver`.
const DeliverGroup = "herald-deliver"

// OpenPublisher connects to b, waiting for the broker until ctx ends.
func OpenPublisher(ctx context.Context, b config.Broker, o PublisherOptions, log *slog.Logger) (*Publisher, error) {
	switch b.Kind {
	case config.KindRedis:
		c, err := redisq.Connect(ctx, b.URL, log)
		if err != nil {
			return nil, err
		}
		return &Publisher{Publisher: redisq.NewPublisher(c),
			Live:  func(ctx context.Context) bool { return redisq.PingAll(ctx, c) == nil },
			Close: c.Close}, nil
	case config.KindNATS:
		nc, err := natsq.Connect(ctx, b.URL, log)
		if err != nil {
			return nil, err
		}
		p, err := natsq.NewPublisher(ctx, nc, natsq.PublisherOptions{Stream: o.NATSStream, Subjects: o.NATSSubjects})
		if err != nil {
			nc.Close()
			return nil, err
		}
		for _, q := range o.Queues {
			if _, err := natsq.Open(ctx, nc, natsOptions(b, q, DeliverGroup, SourceOptions{})); err != nil {
				nc.Close()
				return nil, fmt.Errorf("declaring the outbound queue %s: %w", q, err)
			}
		}
		return &Publisher{Publisher: p, Live: func(context.Context) bool { return nc.IsConnected() }, Close: nc.Close}, nil
	case config.KindKafka:
		p, err := kafkaq.NewPublisher(kafkaq.PublisherOptions{Seeds: b.Seeds})
		if err != nil {
			return nil, err
		}
		for _, q := range o.Queues {
			if err := CreateKafkaTopics(ctx, p, queueTopics(q), log); err != nil {
				p.Close()
				return nil, err
			}
		}
		return &Publisher{Publisher: p, Live: func(ctx context.Context) bool { return p.Ping(ctx) == nil }, Close: p.Close}, nil
	case config.KindAMQP:
		p, err := amqpq.NewPublisher(ctx, b.URL, amqpq.PublisherOptions{}, log)
		if err != nil {
			return nil, err
		}
		if len(o.Queues) > 0 {
			if err := amqpq.DeclareQueues(b.URL, o.Queues...); err != nil {
				p.Close()
				return nil, err
			}
		}
		return &Publisher{Publisher: p, Live: func(context.Context) bool { return p.Connected() }, Close: p.Close}, nil
	}
	return nil, fmt.Errorf("broker: unknown kind %q", b.Kind)
}

// streamName makes a JetStream stream name of a subject, which may hold no dot or wildcard.
func streamName(subject string) string {
	return strings.NewReplacer(".", "_", "*", "any", ">", "all").Replace(subject)
}

// deadSubject is where a subject's dead letters go: a literal subject outside the subject's
// own tree, so that its stream does not take them back.
func deadSubject(subject string) string {
	return "herald.dead." + streamName(subject)
}

// Subjects are the subjects a NATS stream must hold for routes with these templates: the literal
// tokens before the first placeholder followed by >, or the template itself when it has none.
// A placeholder inside the first token cannot be covered by a subject filter: an error.
func Subjects(templates []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, t := range templates {
		s := t
		if i := strings.IndexByte(t, '$'); i >= 0 {
			dot := strings.LastIndexByte(t[:i], '.')
			if dot < 0 {
				return nil, fmt.Errorf("route template %q: a NATS subject needs a literal first token before any placeholder (e.g. acapy.record.$wallet_id)", t)
			}
			s = t[:dot] + ".>"
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	// A stream refuses subjects that overlap: keep only those no wildcard of the list covers.
	kept := out[:0]
	for _, s := range out {
		covered := false
		for _, w := range out {
			if w != s && strings.HasSuffix(w, ".>") && strings.HasPrefix(s, strings.TrimSuffix(w, ">")) {
				covered = true
			}
		}
		if !covered {
			kept = append(kept, s)
		}
	}
	return kept, nil
}

// queueTopics are a queue's topics: its own, its retries' and its dead letters'.
func queueTopics(queue string) []string { return []string{queue, queue + "_retry", queue + "_dead"} }

// CreateKafkaTopics makes topics exist through p, waiting for the cluster until ctx ends.
func CreateKafkaTopics(ctx context.Context, p *kafkaq.Publisher, topics []string, log *slog.Logger) error {
	wait := time.Second
	for {
		err := p.CreateTopics(ctx, topics...)
		if err == nil || ctx.Err() != nil {
			return err
		}
		log.Warn("creating the Kafka topics failed; retrying", "topics", topics, "err", err, "retry_in", wait)
		if !engine.Sleep(ctx, wait) {
			return ctx.Err()
		}
		wait = min(2*wait, 30*time.Second)
	}
}
