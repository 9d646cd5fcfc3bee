package natsq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/natsq/natstest"
	"github.com/heraldhq/herald/internal/proctest"
	"github.com/nats-io/nats.go"
)

// outage is how long the connection-loss tests keep their server down.
const outage = 3 * time.Second

func mustConnect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, url, proctest.Log(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// waitUntil polls cond until it holds or d passes, and says whether it held.
func waitUntil(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// countingSink records every payload delivered to it.
type countingSink struct {
	mu   sync.Mutex
	seen map[string]int
}

func (s *countingSink) Deliver(m *engine.Message) engine.Result {
	s.mu.Lock()
	s.seen[string(m.Payload)]++
	s.mu.Unlock()
	return engine.Result{}
}

func (s *countingSink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// healthObserver records what the pipeline said of its source's health.
type healthObserver struct {
	engine.NopObserver
	mu           sync.Mutex
	failures     int
	notConnected bool // one of the failures was ErrNotConnected
	recovered    bool // a success was reported after a failure
}

func (o *healthObserver) SourceHealth(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case err != nil:
		o.failures++
		o.notConnected = o.notConnected || errors.Is(err, ErrNotConnected)
		o.recovered = false
	case o.failures > 0:
		o.recovered = true
	}
}

func (o *healthObserver) state() (failures int, notConnected, recovered bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.failures, o.notConnected, o.recovered
}

// TestConnectionLoss runs a pipeline from a Queue while a producer publishes; the server is
// stopped for a few seconds on the way (shut down, or killed as in a crash) and restarted with
// its store. Every message produced is delivered, the pipeline reports its source unhealthy
// during the outage and healthy after it, and it does not spin meanwhile.
func TestConnectionLoss(t *testing.T) {
	for name, stop := range map[string]func(*natstest.Server){
		"sigterm": (*natstest.Server).Stop,
		"sigkill": (*natstest.Server).Kill,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			connectionLoss(t, stop)
		})
	}
}

func connectionLoss(t *testing.T, stop func(*natstest.Server)) {
	srv := natstest.Start(t)
	ctx := context.Background()
	o := Options{
		Stream: "LOSS", Subject: "loss.outbound", Consumer: "deliver",
		DeadStream: "LOSS_DEAD", DeadSubject: "loss.dead",
		// Messages handed to a pull request sent just as the connection dropped come back
		// after the ack wait; kept short so that the test does not wait long for them.
		AckWait: 2 * time.Second, Instance: "loss", EncodeDead: acapy.EncodeDead,
	}
	q, err := Open(ctx, mustConnect(t, srv.URL()), o)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(ctx, mustConnect(t, srv.URL()), PublisherOptions{Stream: o.Stream, Subjects: []string{o.Subject}})
	if err != nil {
		t.Fatal(err)
	}

	sink := &countingSink{seen: map[string]int{}}
	obs := &healthObserver{}
	p := &engine.Pipeline{
		Source: q, Decode: acapy.DecodeOutbound, Sink: sink, Observer: obs, Log: proctest.Log(t),
		Policy: engine.RetryPolicy{MaxRetries: 3, Interval: 1}, Workers: 8, Batch: 32,
		DrainTimeout: 5 * time.Second,
	}
	runCtx, stopPipeline := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { _ = p.Run(runCtx); close(ran) }()
	defer func() { stopPipeline(); <-ran }()

	// The producer paces itself over a few seconds so that the outage falls in the middle,
	// and retries a batch until JetStream stored it, as a service acknowledging its own source
	// only after a publish would. It is stopped and waited for however the test ends, so that
	// it never outlives it.
	const n, batch = 2000, 20
	var produced, failed atomic.Int64
	produceErr := make(chan error, 1)
	prodCtx, stopProducer := context.WithCancel(ctx)
	var producing sync.WaitGroup
	defer producing.Wait()
	defer stopProducer()
	producing.Go(func() {
		giveUp := time.Now().Add(30 * time.Second)
		for i := 0; i < n; i += batch {
			ps := make([]engine.Publication, 0, batch)
			for j := i; j < i+batch; j++ {
				ps = append(ps, engine.Publication{Dest: []byte(o.Subject),
					Body: acapy.AppendOutbound(nil, "http://receiver/", nil, enginetest.Body(j))})
			}
			for {
				pctx, cancel := context.WithTimeout(prodCtx, time.Second)
				err := pub.Publish(pctx, ps)
				cancel()
				if err == nil {
					break
				}
				if failed.Add(1); prodCtx.Err() != nil || time.Now().After(giveUp) {
					produceErr <- fmt.Errorf("gave up after %d failed publishes: %w", failed.Load(), err)
					return
				}
			}
			produced.Store(int64(i + batch))
			time.Sleep(5 * time.Millisecond)
		}
		produceErr <- nil
	})

	if !waitUntil(10*time.Second, func() bool { return produced.Load() >= n/3 }) {
		t.Fatalf("only %d of %d produced before the outage", produced.Load(), n)
	}
	failuresBefore, _, _ := obs.state()
	stop(srv)
	down := time.Now()
	time.Sleep(outage)
	failuresDuring, notConnected, _ := obs.state()
	srv.Restart()
	t.Logf("outage of %s; %d of %d produced by its end", time.Since(down).Round(time.Millisecond), produced.Load(), n)

	if err := <-produceErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("producer: %d publishes failed and were retried", failed.Load())
	if !waitUntil(30*time.Second, func() bool { return sink.distinct() == n }) {
		t.Logf("only %d of %d delivered 30 s after the restart", sink.distinct(), n)
	}
	stopPipeline()
	<-ran

	var lost []int
	dups := 0
	for i := range n {
		switch c := sink.seen[string(enginetest.Body(i))]; c {
		case 0:
			lost = append(lost, i)
		default:
			dups += c - 1
		}
	}
	if len(lost) > 0 {
		t.Errorf("%d messages lost, first %v", len(lost), lost[:min(10, len(lost))])
	}
	t.Logf("%d delivered, %d duplicates, %d source failures reported during the outage",
		n-len(lost), dups, failuresDuring-failuresBefore)

	failures, _, recovered := obs.state()
	switch {
	case failuresDuring == failuresBefore:
		t.Error("the pipeline never reported its source unhealthy during the outage")
	case !notConnected:
		// The first failure may be the server's own notice of its shutdown; the outage
		// itself must be reported as such.
		t.Error("no source failure during the outage was ErrNotConnected")
	case !recovered:
		t.Errorf("the source was not reported healthy after the restart (%d failures)", failures)
	}
	// Each Take of an outage waits a second before it fails and the pipeline backs off
	// between them: a handful of failures, not thousands.
	if f := failuresDuring - failuresBefore; f > 20 {
		t.Errorf("%d source failures in an outage of %s: spinning", f, outage)
	}
}

// TestPublisherConnectionLoss: while the server is down Publish fails within its deadline;
// after the restart it succeeds again, and whatever it acknowledged, before or after, is stored.
func TestPublisherConnectionLoss(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	nc := mustConnect(t, srv.URL())
	pub, err := NewPublisher(ctx, nc, PublisherOptions{Stream: "OUT", Subjects: []string{"out.>"}})
	if err != nil {
		t.Fatal(err)
	}
	batch := func(from, to int) []engine.Publication {
		var ps []engine.Publication
		for i := from; i < to; i++ {
			ps = append(ps, engine.Publication{Dest: []byte("out.x"), Body: enginetest.Body(i)})
		}
		return ps
	}
	if err := pub.Publish(ctx, batch(0, 500)); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	if !waitUntil(5*time.Second, func() bool { return !nc.IsConnected() }) {
		t.Fatal("the connection did not notice the server stopping")
	}
	const deadline = 500 * time.Millisecond
	pctx, cancel := context.WithTimeout(ctx, deadline)
	start := time.Now()
	err = pub.Publish(pctx, batch(500, 1000))
	took := time.Since(start)
	cancel()
	if err == nil {
		t.Fatal("Publish succeeded while the server was down")
	}
	if took > deadline+250*time.Millisecond {
		t.Errorf("Publish failed after %s, its deadline was %s", took, deadline)
	}
	if !errors.Is(err, ErrNotConnected) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Publish while down: %v, want ErrNotConnected and the deadline", err)
	}

	srv.Restart()
	acked := false
	for end := time.Now().Add(10 * time.Second); !acked && time.Now().Before(end); {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = pub.Publish(pctx, batch(500, 1000))
		cancel()
		acked = err == nil
	}
	if !acked {
		t.Fatalf("Publish after the restart: %v", err)
	}

	got := readSubject(t, nc, "OUT", "out.x", 1000, 10*time.Second)
	stored := map[string]bool{}
	for _, s := range got {
		stored[string(s.Body)] = true
	}
	for i := range 1000 {
		if !stored[string(enginetest.Body(i))] {
			t.Fatalf("acknowledged entry %d is not stored (%d entries are)", i, len(got))
		}
	}
	if len(got) != 1000 {
		t.Logf("%d entries stored for 1000 acknowledged: the difference is duplicates", len(got))
	}
}

// TestConnectWaitsForServer: Connect gives up with ctx's error while no server runs, waits for
// one that comes up late, and logs the outages that follow without the URL's password.
func TestConnectWaitsForServer(t *testing.T) {
	srv := natstest.Start(t)
	srv.Stop()
	var logs proctest.Output
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	url := strings.Replace(srv.URL(), "nats://", "nats://herald:s3cret@", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := Connect(ctx, url, log)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect with no server and an expiring context: %v, want the deadline", err)
	}

	type result struct {
		nc  *nats.Conn
		err error
	}
	res := make(chan result, 1)
	ctx, cancel = context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	go func() {
		nc, err := Connect(ctx, url, log)
		res <- result{nc, err}
	}()
	time.Sleep(time.Second)
	select {
	case r := <-res:
		t.Fatalf("Connect returned before the server came up: %v", r.err)
	default:
	}
	srv.Restart()
	r := <-res
	if r.err != nil {
		t.Fatalf("Connect once the server is up: %v", r.err)
	}
	defer r.nc.Close()
	if !r.nc.IsConnected() {
		t.Fatal("Connect returned an unconnected connection")
	}

	srv.Stop()
	if !waitUntil(5*time.Second, func() bool { return !r.nc.IsConnected() }) {
		t.Fatal("the connection did not notice the server stopping")
	}
	srv.Restart()
	if !waitUntil(10*time.Second, func() bool { return r.nc.IsConnected() }) {
		t.Fatal("no reconnection after the restart")
	}
	waitUntil(time.Second, func() bool { return strings.Contains(logs.String(), "reconnected to NATS") })
	out := logs.String()
	for _, want := range []string{`msg="cannot reach NATS`, `msg="connected to NATS"`, `msg="disconnected from NATS`, `msg="reconnected to NATS"`, "herald:xxxxx@"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret") {
		t.Errorf("the log shows the password:\n%s", out)
	}
}
