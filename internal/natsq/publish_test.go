package natsq

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/proctest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// dropStream deletes a test's stream at its end.
func dropStream(t testing.TB, nc *nats.Conn, name string) {
	t.Cleanup(func() {
		js, err := jetstream.New(nc)
		if err == nil {
			_ = js.DeleteStream(context.Background(), name)
		}
	})
}

// freshStream names a stream no other test uses, deleted (if one was made) at t's end.
func freshStream(t testing.TB, nc *nats.Conn) string {
	name := fmt.Sprintf("HERALDPUB%d", rand.Uint64())
	dropStream(t, nc, name)
	return name
}

// readSubject returns what stream holds on subject, oldest first, waiting up to d for n entries.
func readSubject(t testing.TB, nc *nats.Conn, stream, subject string, n int, d time.Duration) []enginetest.Stored {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatalf("reading %s: %v", subject, err)
	}
	var out []enginetest.Stored
	for deadline := time.Now().Add(d); len(out) < n && time.Now().Before(deadline); {
		batch, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(min(time.Second, max(time.Until(deadline), 100*time.Millisecond))))
		if err != nil {
			t.Fatalf("reading %s: %v", subject, err)
		}
		for msg := range batch.Messages() {
			out = append(out, enginetest.Stored{
				Key:  []byte(msg.Headers().Get(KeyHeader)),
				Body: slices.Clone(msg.Data()),
			})
		}
	}
	return out
}

// TestPublisherConformance runs the engine's Publisher suite against the shared server.
func TestPublisherConformance(t *testing.T) {
	enginetest.RunPublisher(t, func(t *testing.T) *enginetest.Target {
		nc, err := Connect(context.Background(), natsURL(), proctest.Log(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		name := freshStream(t, nc)
		p, err := NewPublisher(context.Background(), nc, PublisherOptions{Stream: name, Subjects: []string{name + ".>"}})
		if err != nil {
			t.Fatal(err)
		}
		return &enginetest.Target{
			Publisher: p,
			Dest:      func(i int) []byte { return fmt.Appendf(nil, "%s.d%d", name, i) },
			Read: func(t testing.TB, dest []byte, n int, d time.Duration) []enginetest.Stored {
				return readSubject(t, nc, name, string(dest), n, d)
			},
			Keyed: true,
		}
	})
}

// TestPublisherStream: a missing stream is created as asked; an existing one keeps its settings
// and only gains the subjects it does not cover.
func TestPublisherStream(t *testing.T) {
	ctx := context.Background()
	nc := connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := freshStream(t, nc)
	config := func() jetstream.StreamConfig {
		t.Helper()
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config
	}
	open := func(subjects ...string) {
		t.Helper()
		if _, err := NewPublisher(ctx, nc, PublisherOptions{Stream: name, Subjects: subjects}); err != nil {
			t.Fatalf("NewPublisher(%v): %v", subjects, err)
		}
	}

	open(name + ".a")
	c := config()
	if !slices.Equal(c.Subjects, []string{name + ".a"}) || c.Retention != jetstream.LimitsPolicy || c.Storage != jetstream.FileStorage {
		t.Fatalf("created stream: subjects %v, retention %v, storage %v", c.Subjects, c.Retention, c.Storage)
	}

	c.MaxMsgs = 1000 // an operator's setting, which the publisher must keep
	c.Subjects = []string{name + ".a", name + ".wild.>"}
	if _, err := js.UpdateStream(ctx, c); err != nil {
		t.Fatal(err)
	}
	open(name+".a", name+".wild.x.y")
	if c := config(); c.MaxMsgs != 1000 || len(c.Subjects) != 2 {
		t.Fatalf("covered subjects changed the stream: subjects %v, max msgs %d", c.Subjects, c.MaxMsgs)
	}
	open(name+".b", name+".a")
	want := []string{name + ".a", name + ".wild.>", name + ".b"}
	if c := config(); c.MaxMsgs != 1000 || !slices.Equal(c.Subjects, want) {
		t.Fatalf("after adding a subject: subjects %v, max msgs %d; want %v and 1000", c.Subjects, c.MaxMsgs, want)
	}
}

func TestSubjectCovers(t *testing.T) {
	for _, tc := range []struct {
		pat, sub string
		want     bool
	}{
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.b", "a.b.c", false},
		{"a.b.c", "a.b", false},
		{"a.*", "a.b", true},
		{"a.*", "a.*", true},
		{"a.b", "a.*", false},
		{"a.*", "a.b.c", false},
		{"a.*", "a.>", false},
		{"a.>", "a.b.c", true},
		{"a.>", "a.*", true},
		{"a.>", "a.>", true},
		{"a.>", "a", false},
		{">", "a", true},
		{"*.b", "a.>", false},
	} {
		if got := subjectCovers(tc.pat, tc.sub); got != tc.want {
			t.Errorf("subjectCovers(%q, %q) = %v, want %v", tc.pat, tc.sub, got, tc.want)
		}
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":               "nats://127.0.0.1:4222",
		"nats://herald:s3cret@h:4222":         "nats://herald:xxxxx@h:4222",
		"nats://t0ken@h:4222":                 "nats://xxxxx@h:4222",
		"h:4222":                              "nats://h:4222",
		"nats://u:p@a:4222, tls://u:p@b:4222": "nats://u:xxxxx@a:4222,tls://u:xxxxx@b:4222",
		"nats://u:p%zz@h:4222":                "(unparsable URL)",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkPublish500 publishes batches of 500 entries of 200 bytes, each batch one round of acks.
func BenchmarkPublish500(b *testing.B) {
	nc, err := Connect(context.Background(), natsURL(), proctest.Log(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	name := freshStream(b, nc)
	p, err := NewPublisher(context.Background(), nc, PublisherOptions{Stream: name, Subjects: []string{name}})
	if err != nil {
		b.Fatal(err)
	}
	ps := make([]engine.Publication, 500)
	for i := range ps {
		ps[i] = engine.Publication{Dest: []byte(name), Body: make([]byte, 200)}
	}
	b.SetBytes(500 * 200)
	for b.Loop() {
		if err := p.Publish(context.Background(), ps); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*500)/b.Elapsed().Seconds(), "entries/s")
}

// TestPublishRefused: an entry no stream takes, or one its stream refuses, fails the call with
// JetStream's reason, at once rather than after a timeout, and the entries before it are stored.
func TestPublishRefused(t *testing.T) {
	ctx := context.Background()
	nc := connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := freshStream(t, nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, MaxMsgSize: 64}); err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(ctx, nc, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	start := time.Now()
	err = p.Publish(pctx, []engine.Publication{{Dest: []byte(name + "_NONE.x"), Body: []byte("lost")}})
	if !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Errorf("publishing where no stream listens: %v, want %v", err, jetstream.ErrNoStreamResponse)
	}

	small := engine.Publication{Dest: []byte(name + ".x"), Body: []byte("small")}
	big := engine.Publication{Dest: []byte(name + ".x"), Body: make([]byte, 100)}
	err = p.Publish(pctx, []engine.Publication{small, big, small})
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		t.Errorf("publishing past the stream's message size: %v, want JetStream's error", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the refusals took %s to be reported", took)
	}
	if got := readSubject(t, nc, name, name+".x", 2, 5*time.Second); len(got) != 2 {
		t.Errorf("%d entries stored, want the 2 small ones", len(got))
	}

	if err := p.Publish(pctx, []engine.Publication{small}); err != nil {
		t.Errorf("publishing after a refusal: %v", err)
	}
}
