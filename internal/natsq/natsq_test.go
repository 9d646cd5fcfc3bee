package natsq

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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsURL is the JetStream-enabled server the tests use: scripts/services.sh starts one on
// 4222 where none runs; HERALD_NATS_URL points elsewhere.
func natsURL() string {
	if u := os.Getenv("HERALD_NATS_URL"); u != "" {
		return u
	}
	return nats.DefaultURL
}

func connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(natsURL(), nats.Timeout(3*time.Second))
	if err != nil {
		t.Fatalf("NATS at %s: %v (run scripts/services.sh nats)", natsURL(), err)
	}
	t.Cleanup(nc.Close) // closing twice is harmless, for tests that close it themselves
	return nc
}

// TestConformance runs the engine's Source suite against a JetStream durable consumer.
func TestConformance(t *testing.T) {
	enginetest.Run(t, func(t *testing.T) *enginetest.Queue {
		name := fmt.Sprintf("HERALDTEST%d", rand.Uint64())
		o := Options{
			Stream: name, Subject: name + ".outbound", Consumer: "deliver",
			DeadStream: name + "_DEAD", DeadSubject: name + ".dead",
			AckWait: time.Second, Instance: "conformance",
			EncodeDead: acapy.EncodeDead,
		}
		admin := connect(t)
		ctx := context.Background()
		producer, err := Open(ctx, admin, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			js, _ := jetstream.New(admin)
			_ = js.DeleteStream(context.Background(), o.Stream)
			_ = js.DeleteStream(context.Background(), o.DeadStream)
			admin.Close()
		})
		return acapytest.Queue(&enginetest.Queue{
			Produce: func(t testing.TB, entries [][]byte) {
				for _, e := range entries {
					if err := producer.Publish(ctx, e); err != nil {
						t.Fatal(err)
					}
				}
			},
			Open: func(t testing.TB) (engine.Source, func()) {
				nc := connect(t)
				q, err := Open(ctx, nc, o)
				if err != nil {
					t.Fatal(err)
				}
				return q, enginetest.Crash(t, nc.Close) // unacknowledged messages come back after AckWait
			},
			Ordered:   true,
			Redeliver: 3 * time.Second,
		}, func(t testing.TB) [][]byte {
			raw, err := producer.DeadLetters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return raw
		})
	})
}
