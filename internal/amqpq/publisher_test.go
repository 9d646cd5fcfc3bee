package amqpq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/proctest"
	amqp "github.com/rabbitmq/amqp091-go"
)

// TestPublisherConformance runs the engine's Publisher suite against fresh exchanges. Each
// destination is an exchange with a queue of the same name bound to it, before anything is
// published, with every routing key the suite uses (none, "k" and "key").
func TestPublisherConformance(t *testing.T) {
	t.Parallel()
	enginetest.RunPublisher(t, func(t *testing.T) *enginetest.Target {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p, err := NewPublisher(ctx, amqpURL(), PublisherOptions{Name: "herald publisher conformance"}, proctest.Log(t))
		if err != nil {
			t.Fatal(err)
		}
		admin := dial(t)
		ch, err := admin.Channel()
		if err != nil {
			t.Fatal(err)
		}
		prefix := fmt.Sprintf("herald.test.pub.%x.", rand.Uint64())
		var mu sync.Mutex // one request at a time on ch
		made := map[string]bool{}
		t.Cleanup(func() {
			p.Close()
			for name := range made {
				_, _ = ch.QueueDelete(name, false, false, false)
				_ = ch.ExchangeDelete(name, false, false)
			}
			admin.Close()
		})
		dest := func(i int) []byte {
			name := prefix + strconv.Itoa(i)
			mu.Lock()
			defer mu.Unlock()
			if made[name] {
				return []byte(name)
			}
			err := ch.ExchangeDeclare(name, "direct", true, false, false, false, nil)
			if err == nil {
				_, err = ch.QueueDeclare(name, true, false, false, false, nil)
			}
			for _, key := range []string{"", "k", "key"} {
				if err == nil {
					err = ch.QueueBind(name, key, name, false, nil)
				}
			}
			if err != nil {
				t.Errorf("declaring destination %s: %v", name, err) // Dest runs on the suite's goroutines: no Fatal
			}
			made[name] = true
			return []byte(name)
		}
		read := func(t testing.TB, dest []byte, n int, d time.Duration) []enginetest.Stored {
			mu.Lock()
			defer mu.Unlock()
			var out []enginetest.Stored
			for deadline := time.Now().Add(d); len(out) < n && time.Now().Before(deadline); {
				m, ok, err := ch.Get(string(dest), true)
				if err != nil {
					t.Fatalf("reading %s: %v", dest, err)
				}
				if !ok {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				out = append(out, enginetest.Stored{Key: []byte(m.RoutingKey), Body: m.Body})
			}
			return out
		}
		return &enginetest.Target{Publisher: p, Dest: dest, Read: read, Keyed: true}
	})
}

// drain reads everything queue holds, removing it.
func drain(t testing.TB, ch *amqp.Channel, queue string) [][]byte {
	t.Helper()
	var out [][]byte
	for {
		m, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("reading %s: %v", queue, err)
		}
		if !ok {
			return out
		}
		out = append(out, m.Body)
	}
}
