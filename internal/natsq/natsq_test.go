package natsq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
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
		return &enginetest.Queue{
			Entry: func(payload []byte) []byte { return acapy.AppendOutbound(nil, "http://receiver/", nil, payload) },
			Produce: func(t testing.TB, entries [][]byte) {
				for _, e := range entries {
					if err := producer.Publish(ctx, e); err != nil {
						t.Fatal(err)
					}
				}
			},
			Decode: Decoder(acapy.DecodeOutbound),
			Open: func(t testing.TB) (engine.Source, func()) {
				nc := connect(t)
				q, err := Open(ctx, nc, o)
				if err != nil {
					t.Fatal(err)
				}
				var once sync.Once
				crash := func() { once.Do(nc.Close) } // unacknowledged messages come back after AckWait
				if tt, ok := t.(*testing.T); ok {
					tt.Cleanup(crash)
				}
				return q, crash
			},
			Dead: func(t testing.TB) []enginetest.DeadEntry {
				raw, err := producer.DeadLetters(ctx)
				if err != nil {
					t.Fatal(err)
				}
				var out []enginetest.DeadEntry
				for _, r := range raw {
					d, err := acapy.ParseDeadLetter(r)
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, enginetest.DeadEntry{Raw: d.Raw, Reason: d.Reason})
				}
				return out
			},
			Ordered:   true,
			Redeliver: 3 * time.Second,
		}
	})
}
