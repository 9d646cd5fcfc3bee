package amqpq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/acapy/acapytest"
	"github.com/heraldhq/herald/internal/proctest"
	amqp "github.com/rabbitmq/amqp091-go"
)

// amqpURL is the RabbitMQ the tests use: scripts/services.sh starts one on 5672 where none runs;
// HERALD_AMQP_URL points elsewhere.
func amqpURL() string {
	if u := os.Getenv("HERALD_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func dial(t testing.TB) *amqp.Connection {
	t.Helper()
	conn, err := amqp.DialConfig(amqpURL(), amqp.Config{Dial: amqp.DefaultDial(3 * time.Second)})
	if err != nil {
		t.Fatalf("RabbitMQ at %s: %v (run scripts/services.sh rabbitmq)", amqpURL(), err)
	}
	return conn
}

// deleteQueue removes a test queue and everything Dial or Open declared for it.
func deleteQueue(ch *amqp.Channel, name string, exchanges ...string) {
	remove(ch, []string{name, retryQueue(name, 2*time.Second)}, exchanges)
}

// conformance runs the engine's Source suite against fresh queues that open opens.
func conformance(t *testing.T, open func(t testing.TB, o Options) (engine.Source, func())) {
	enginetest.Run(t, func(t *testing.T) *enginetest.Queue {
		name := fmt.Sprintf("herald.test.%d", rand.Uint64())
		o := Options{Queue: name, Instance: "conformance", Prefetch: 64,
			EncodeDead: acapy.EncodeDead}
		admin := dial(t)
		ch, err := admin.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := Declare(ch, name); err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			deleteQueue(ch, name)
			admin.Close()
		})
		ctx := context.Background()
		return acapytest.Queue(&enginetest.Queue{
			Produce: func(t testing.TB, entries [][]byte) {
				for _, e := range entries {
					if err := Publish(ctx, ch, name, e); err != nil {
						t.Fatal(err)
					}
				}
			},
			Open:      func(t testing.TB) (engine.Source, func()) { return open(t, o) },
			Ordered:   true,
			Redeliver: 2 * time.Second,
		}, func(t testing.TB) [][]byte {
			raw, err := DeadLetters(admin, name)
			if err != nil {
				t.Fatal(err)
			}
			return raw
		})
	})
}

// TestConformance runs the engine's Source suite against a RabbitMQ queue opened on a
// connection of the caller's.
func TestConformance(t *testing.T) {
	t.Parallel()
	conformance(t, func(t testing.TB, o Options) (engine.Source, func()) {
		conn := dial(t)
		q, err := Open(conn, o)
		if err != nil {
			t.Fatal(err)
		}
		return q, enginetest.Crash(t, func() { _ = conn.Close() }) // unacknowledged messages return at once
	})
}

// TestConformanceDial runs the suite against queues that own their connection, as the service
// opens them; closing one is a crash: nothing it held was settled.
func TestConformanceDial(t *testing.T) {
	t.Parallel()
	conformance(t, func(t testing.TB, o Options) (engine.Source, func()) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		q, err := Dial(ctx, amqpURL(), o, proctest.Log(t))
		if err != nil {
			t.Fatal(err)
		}
		return q, enginetest.Crash(t, q.Close)
	})
}

// takeN takes from q until it has n messages or d passed.
func takeN(t testing.TB, q *Queue, n int, d time.Duration) []*engine.Message {
	t.Helper()
	var got []*engine.Message
	for deadline := time.Now().Add(d); len(got) < n && time.Now().Before(deadline); {
		var err error
		if got, err = q.Take(context.Background(), got, n-len(got)); err != nil {
			t.Fatalf("take: %v", err)
		}
	}
	return got
}

// TestExchangeBinding: a queue bound to a direct exchange with key a gets what is published
// there with key a, and not what is published with key b (which the exchange drops, and the
// Publisher still reports as published).
func TestExchangeBinding(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := fmt.Sprintf("herald.test.bind.%x", rand.Uint64())
	x := name + ".x"
	admin := dial(t)
	defer admin.Close()
	ch, err := admin.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer deleteQueue(ch, name, x)

	o := Options{Queue: name, Exchange: x, RoutingKeys: []string{"a"}, Instance: "binding", EncodeDead: acapy.EncodeDead}
	q, err := Dial(ctx, amqpURL(), o, proctest.Log(t))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	// Binding again is harmless: a second consumer of the same queue starts the same way.
	q2, err := Dial(ctx, amqpURL(), o, proctest.Log(t))
	if err != nil {
		t.Fatalf("binding again: %v", err)
	}
	q2.Close()

	p, err := NewPublisher(ctx, amqpURL(), PublisherOptions{}, proctest.Log(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Publish(ctx, []engine.Publication{
		{Dest: []byte(x), Key: []byte("b"), Body: []byte("for b")},
		{Dest: []byte(x), Key: []byte("a"), Body: []byte("for a")},
		{Dest: []byte(x), Key: []byte("b"), Body: []byte("for b again")},
	}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	got := takeN(t, q, 2, 2*time.Second)
	if len(got) != 1 || string(got[0].Raw) != "for a" {
		var bodies []string
		for _, m := range got {
			bodies = append(bodies, string(m.Raw))
		}
		t.Fatalf("the queue bound with key a got %q, want only %q", bodies, "for a")
	}
	if err := q.Ack(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	if st, err := ch.QueueDeclarePassive(name, true, false, false, false, nil); err != nil || st.Messages != 0 {
		t.Fatalf("queue after the ack: %+v %v, want empty", st, err)
	}

	for _, bad := range []Options{
		{Queue: name, Exchange: x, EncodeDead: acapy.EncodeDead},
		{Queue: name, RoutingKeys: []string{"a"}, EncodeDead: acapy.EncodeDead},
	} {
		if _, err := Dial(ctx, amqpURL(), bad, proctest.Log(t)); err == nil {
			t.Errorf("Dial accepted %+v", bad)
		}
	}
}
