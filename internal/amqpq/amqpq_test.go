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

// TestConformance runs the engine's Source suite against a RabbitMQ queue.
func TestConformance(t *testing.T) {
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
			for _, q := range []string{name, DeadQueue(name), retryQueue(name, 2*time.Second)} {
				_, _ = ch.QueueDelete(q, false, false, false)
			}
			_ = ch.ExchangeDelete(DeadExchange(name), false, false)
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
			Open: func(t testing.TB) (engine.Source, func()) {
				conn := dial(t)
				q, err := Open(conn, o)
				if err != nil {
					t.Fatal(err)
				}
				return q, enginetest.Crash(t, func() { _ = conn.Close() }) // unacknowledged messages return at once
			},
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
