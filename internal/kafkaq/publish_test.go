package kafkaq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/kafkaq/kafkatest"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestPublisherConformance runs the engine's Publisher suite with one Publisher shared by every
// test, each on topics of its own that the Publisher creates with several partitions, so that
// order has to come from the key.
func TestPublisherConformance(t *testing.T) {
	t.Parallel()
	c := kafkatest.Start(t)
	p := newPublisher(t, c)
	enginetest.RunPublisher(t, func(t *testing.T) *enginetest.Target {
		prefix := fmt.Sprintf("herald-pub-%d", rand.Uint64())
		return &enginetest.Target{
			Publisher: p,
			Dest:      func(i int) []byte { return fmt.Appendf(nil, "%s-%d", prefix, i) },
			Read: func(t testing.TB, dest []byte, n int, d time.Duration) []enginetest.Stored {
				return readTopic(t, c.Seeds(), string(dest), n, d)
			},
			Keyed: true,
		}
	})
}

func newPublisher(t testing.TB, c *kafkatest.Cluster) *Publisher {
	t.Helper()
	p, err := NewPublisher(PublisherOptions{Seeds: c.Seeds(), Partitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// readTopic reads topic from its start with a plain consumer until it has n records or d passes,
// then a little longer, so that records beyond n (duplicates) show.
func readTopic(t testing.TB, seeds []string, topic string, n int, d time.Duration) []enginetest.Stored {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []enginetest.Stored
	poll := func(d time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		fs := cl.PollFetches(ctx)
		fs.EachError(func(topic string, p int32, err error) {
			if ctx.Err() == nil {
				t.Logf("reading %s[%d]: %v", topic, p, err)
			}
		})
		fs.EachRecord(func(r *kgo.Record) { out = append(out, enginetest.Stored{Key: r.Key, Body: r.Value}) })
	}
	for deadline := time.Now().Add(d); len(out) < n && time.Now().Before(deadline); {
		poll(min(time.Until(deadline), time.Second))
	}
	poll(300 * time.Millisecond)
	return out
}

// TestPublisherConnectionLoss publishes before, during and after an outage of the broker: while
// it is down Publish fails within its deadline, afterwards it works again, and every batch it
// acknowledged is stored.
func TestPublisherConnectionLoss(t *testing.T) {
	t.Parallel()
	const topic = "herald-pub-outage"
	c := kafkatest.Start(t)
	p := newPublisher(t, c)
	next := 0
	var acked []int
	publish := func(d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var ps []engine.Publication
		for i := next; i < next+50; i++ {
			ps = append(ps, engine.Publication{Dest: []byte(topic), Key: fmt.Appendf(nil, "k%d", i%5), Body: enginetest.Body(i)})
		}
		next += 50
		err := p.Publish(ctx, ps)
		if err == nil {
			for i := next - 50; i < next; i++ {
				acked = append(acked, i)
			}
		}
		return err
	}
	if err := publish(10 * time.Second); err != nil {
		t.Fatalf("publishing before the outage: %v", err)
	}

	c.Stop()
	const deadline = 2 * time.Second
	start := time.Now()
	err := publish(deadline)
	if took := time.Since(start); err == nil || took > deadline+time.Second {
		t.Fatalf("publishing with the broker down: err %v after %s, want an error within %s", err, took, deadline)
	}
	t.Logf("while down: %v", err)
	time.Sleep(time.Second)
	c.Restart()

	start = time.Now()
	if err := publish(15 * time.Second); err != nil {
		t.Fatalf("publishing after the restart: %v", err)
	}
	t.Logf("first publish after the restart took %s", time.Since(start))
	if err := publish(5 * time.Second); err != nil {
		t.Fatalf("publishing after the restart: %v", err)
	}

	got := map[string]bool{}
	for _, s := range readTopic(t, c.Seeds(), topic, len(acked), 10*time.Second) {
		got[string(s.Body)] = true
	}
	for _, i := range acked {
		if !got[string(enginetest.Body(i))] {
			t.Errorf("entry %d was acknowledged but is not stored", i)
		}
	}
}

// TestPublisherKeylessOrder: entries without a key keep their order too, on a topic of several
// partitions, because they all go to the partition of the empty key.
func TestPublisherKeylessOrder(t *testing.T) {
	t.Parallel()
	const topic, n = "herald-pub-keyless", 300
	c := kafkatest.Start(t)
	p := newPublisher(t, c)
	for i := 0; i < n; i += 30 {
		var ps []engine.Publication
		for j := i; j < i+30; j++ {
			ps = append(ps, engine.Publication{Dest: []byte(topic), Body: enginetest.Body(j)})
		}
		if err := p.Publish(context.Background(), ps); err != nil {
			t.Fatal(err)
		}
	}
	got := readTopic(t, c.Seeds(), topic, n, 10*time.Second)
	if len(got) != n {
		t.Fatalf("topic holds %d entries, want %d", len(got), n)
	}
	for i, s := range got {
		if string(s.Body) != string(enginetest.Body(i)) || s.Key != nil {
			t.Fatalf("entry %d is %q with key %q, want %q without a key", i, s.Body, s.Key, enginetest.Body(i))
		}
	}
}
