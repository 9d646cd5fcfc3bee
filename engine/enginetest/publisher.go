package enginetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
)

// Target is one fresh set of destinations of the broker under test.
type Target struct {
	// Publisher writes to the broker as the service runs it.
	Publisher engine.Publisher
	// Dest names destination i (a list, subject, topic or exchange) of this target; names of
	// different targets never collide.
	Dest func(i int) []byte
	// Read returns what destination dest holds, in the order stored, waiting up to d for n
	// entries.
	Read func(t testing.TB, dest []byte, n int, d time.Duration) []Stored
	// Keyed: the broker keeps a key with each entry (Kafka's record key, AMQP's routing key).
	Keyed bool
}

// Stored is one entry as a destination holds it.
type Stored struct {
	Key, Body []byte
}

// RunPublisher runs the Publisher suite, its tests in parallel.
func RunPublisher(t *testing.T, fresh func(t *testing.T) *Target) {
	for _, tc := range []struct {
		name string
		test func(*testing.T, *Target)
	}{
		{"ordered_per_destination", publishOrdered},
		{"concurrent_publishers_lose_nothing", publishConcurrent},
		{"buffers_reusable_after_return", publishOwnsNothing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.test(t, fresh(t))
		})
	}
}

// publishOrdered publishes batches interleaving three destinations: each holds its entries in
// order, with their keys.
func publishOrdered(t *testing.T, tg *Target) {
	const dests, perDest, batch = 3, 300, 50
	ctx := context.Background()
	var ps []engine.Publication
	for i := range dests * perDest {
		d := i % dests
		ps = append(ps, engine.Publication{Dest: tg.Dest(d), Key: []byte("k"), Body: Body(i)})
		if len(ps) == batch {
			if err := tg.Publisher.Publish(ctx, ps); err != nil {
				t.Fatalf("publish: %v", err)
			}
			ps = ps[:0]
		}
	}
	if err := tg.Publisher.Publish(ctx, nil); err != nil {
		t.Fatalf("publishing nothing: %v", err)
	}
	for d := range dests {
		got := tg.Read(t, tg.Dest(d), perDest, 10*time.Second)
		if len(got) != perDest {
			t.Fatalf("destination %d holds %d entries, want %d", d, len(got), perDest)
		}
		for j, s := range got {
			if want := Body(j*dests + d); string(s.Body) != string(want) {
				t.Fatalf("destination %d entry %d is %q, want %q", d, j, s.Body, want)
			}
			if tg.Keyed && string(s.Key) != "k" {
				t.Fatalf("destination %d entry %d has key %q, want k", d, j, s.Key)
			}
		}
	}
}

// publishConcurrent has 8 goroutines publish to one destination: all of it arrives, once.
func publishConcurrent(t *testing.T, tg *Target) {
	const goroutines, each = 8, 250
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i += 25 {
				var ps []engine.Publication
				for j := i; j < i+25; j++ {
					ps = append(ps, engine.Publication{Dest: tg.Dest(0), Body: Body(g*each + j)})
				}
				if err := tg.Publisher.Publish(context.Background(), ps); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("publish: %v", err)
	}
	got := tg.Read(t, tg.Dest(0), goroutines*each, 15*time.Second)
	var bodies []string
	for _, s := range got {
		bodies = append(bodies, string(s.Body))
	}
	slices.Sort(bodies)
	if len(slices.Compact(bodies)) != goroutines*each || len(got) != goroutines*each {
		t.Fatalf("destination holds %d entries (%d distinct), want %d", len(got), len(slices.Compact(bodies)), goroutines*each)
	}
}

// publishOwnsNothing overwrites the caller's buffers once Publish returned: what was stored is
// what was passed.
func publishOwnsNothing(t *testing.T, tg *Target) {
	buf := fmt.Appendf(nil, "%s", Body(7))
	dest := slices.Clone(tg.Dest(0))
	ps := []engine.Publication{{Dest: dest, Key: []byte("key"), Body: buf}}
	if err := tg.Publisher.Publish(context.Background(), ps); err != nil {
		t.Fatalf("publish: %v", err)
	}
	copy(buf, "XXXXXXXX")
	got := tg.Read(t, tg.Dest(0), 1, 10*time.Second)
	if len(got) != 1 || string(got[0].Body) != string(Body(7)) {
		t.Fatalf("stored %q, want %q", got, Body(7))
	}
}
