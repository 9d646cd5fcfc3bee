package amqpq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/proctest"
	amqp "github.com/rabbitmq/amqp091-go"
)

// TestAcksInAnyOrder settles thousands of deliveries on a real RabbitMQ channel in random order,
// from many goroutines, releasing one in ten: RabbitMQ closes a channel whose ack or nack names a
// tag it no longer counts as unacknowledged, so a batched multiple-ack that covered a released or
// already-acked delivery would show as a reconnection and redeliveries. Every message must be
// handed out once, plus once again per release, and the queue end empty.
func TestAcksInAnyOrder(t *testing.T) {
	const n = 3000
	conn := dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("herald-acks-%d", rand.Uint64())
	defer deleteQueue(ch, name)
	q, err := Dial(context.Background(), amqpURL(), Options{Queue: name, Instance: "acks", EncodeDead: acapy.EncodeDead}, proctest.Log(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := ch.Publish("", name, false, false, amqp.Publishing{Body: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	taken, released, acked := map[string]int{}, map[string]int{}, map[string]int{}
	work := make(chan *engine.Message, 64)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond) // settle out of order
				body := string(m.Raw)
				mu.Lock()
				release := rand.IntN(10) == 0 && released[body] == 0
				mu.Unlock()
				if release {
					if err := q.Release(context.Background(), []*engine.Message{m}); err != nil {
						t.Errorf("release: %v", err)
					}
				} else if err := q.Ack(context.Background(), m); err != nil {
					t.Errorf("ack: %v", err)
				}
				mu.Lock()
				if release {
					released[body]++
				} else {
					acked[body]++
				}
				mu.Unlock()
				engine.PutMessage(m)
			}
		}()
	}
	done := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == n
	}
	var buf []*engine.Message
	for deadline := time.Now().Add(60 * time.Second); !done() && time.Now().Before(deadline); {
		buf, err = q.Take(context.Background(), buf[:0], 64)
		if err != nil {
			t.Fatalf("take: %v (the channel closed: an ack named a settled tag?)", err)
		}
		for _, m := range buf {
			mu.Lock()
			taken[string(m.Raw)]++
			mu.Unlock()
			work <- m
		}
	}
	close(work)
	wg.Wait()
	q.Close() // sends the acks still batched

	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		b := fmt.Sprint(i)
		if acked[b] != 1 || taken[b] != 1+released[b] {
			t.Fatalf("message %s: taken %d times, released %d, acked %d; want taken once more than released and acked once",
				b, taken[b], released[b], acked[b])
		}
	}
	var rel int
	for _, r := range released {
		rel += r
	}
	time.Sleep(500 * time.Millisecond)
	st, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 0 {
		t.Fatalf("%d messages left on the queue after every one was acknowledged", st.Messages)
	}
	t.Logf("%d messages, %d released and taken again, all acknowledged once, queue empty", n, rel)
}
