package natsq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/proctest"
	"github.com/nats-io/nats.go/jetstream"
)

// countSink answers at once and closes done when it has seen want deliveries, so that a drain
// benchmark times the source and the pipeline rather than an HTTP receiver.
type countSink struct {
	n, want atomic.Int64
	done    chan struct{}
}

func (s *countSink) Deliver(*engine.Message) engine.Result {
	if s.n.Add(1) == s.want.Load() {
		close(s.done)
	}
	return engine.Result{}
}

// BenchmarkDrain prefills a queue with 20,000 outbound entries of about 300 bytes and times a
// pipeline shaped as `herald deliver` runs it (up to 256 a take, 256 workers) emptying it.
func BenchmarkDrain(b *testing.B) {
	const n = 20000
	ctx := context.Background()
	admin := connect(b)
	pub, err := NewPublisher(ctx, admin, PublisherOptions{})
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 200)
	for i := range body {
		body[i] = 'x'
	}
	var elapsed time.Duration
	for b.Loop() {
		b.StopTimer()
		name := fmt.Sprintf("HERALDBENCH%d", rand.Uint64())
		o := Options{
			Stream: name, Subject: name + ".outbound", Consumer: "deliver",
			DeadStream: name + "_DEAD", DeadSubject: name + ".dead",
			AckWait: 30 * time.Second, Instance: "bench", EncodeDead: acapy.EncodeDead,
		}
		if _, err := Open(ctx, admin, o); err != nil {
			b.Fatal(err)
		}
		ps := make([]engine.Publication, n)
		for i := range ps {
			ps[i] = engine.Publication{Dest: []byte(o.Subject),
				Body: acapy.AppendOutbound(nil, "http://receiver/", nil, append(enginetest.Body(i), body...))}
		}
		if err := pub.Publish(ctx, ps); err != nil {
			b.Fatal(err)
		}
		nc := connect(b)
		q, err := Open(ctx, nc, o)
		if err != nil {
			b.Fatal(err)
		}
		sink := &countSink{done: make(chan struct{})}
		sink.want.Store(n)
		p := &engine.Pipeline{Source: q, Decode: acapy.DecodeOutbound, Sink: sink,
			Workers: 256, Batch: 256, DrainTimeout: 5 * time.Second}
		runCtx, stop := context.WithCancel(ctx)
		ran := make(chan struct{})
		b.StartTimer()
		start := time.Now()
		go func() { _ = p.Run(runCtx); close(ran) }()
		select {
		case <-sink.done:
		case <-time.After(2 * time.Minute):
			b.Fatalf("%d of %d delivered", sink.n.Load(), n)
		}
		elapsed += time.Since(start)
		b.StopTimer()
		stop()
		<-ran
		nc.Close()
		js, _ := jetstream.New(admin)
		_ = js.DeleteStream(ctx, o.Stream)
		_ = js.DeleteStream(ctx, o.DeadStream)
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N*n)/elapsed.Seconds(), "msgs/s")
}

// BenchmarkPublishEvents publishes as `herald events` does under load: four callers at once,
// 2,000 publications of 300 bytes a call over ten subjects.
func BenchmarkPublishEvents(b *testing.B) {
	const perCall, callers = 2000, 4
	nc, err := Connect(context.Background(), natsURL(), proctest.Log(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	name := freshStream(b, nc)
	p, err := NewPublisher(context.Background(), nc, PublisherOptions{Stream: name, Subjects: []string{name + ".>"}})
	if err != nil {
		b.Fatal(err)
	}
	ps := make([]engine.Publication, perCall)
	for i := range ps {
		ps[i] = engine.Publication{Dest: fmt.Appendf(nil, "%s.wallet-%d", name, i%10), Body: make([]byte, 300)}
	}
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := p.Publish(context.Background(), ps); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N*perCall)/b.Elapsed().Seconds(), "entries/s")
}
