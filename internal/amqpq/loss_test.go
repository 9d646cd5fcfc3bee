package amqpq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/amqpq/amqptest"
	"github.com/heraldhq/herald/internal/proctest"
	amqp "github.com/rabbitmq/amqp091-go"
)

// lossN is how many entries the outage tests produce; the broker goes down once half of them
// were published.
const lossN = 2000

// outage is how long the node stays stopped, besides the seconds its restart takes.
const outage = 3 * time.Second

// bodyIndex reads the i of enginetest.Body(i).
func bodyIndex(b []byte) (int, bool) {
	var i int
	_, err := fmt.Sscanf(string(b), `{"n": %d}`, &i)
	return i, err == nil
}

// produce publishes enginetest.Body(0..n-1) in batches of 10 at about 500 a second, closing
// half once half are confirmed, and retries a failed batch until it is confirmed or ctx ends:
// what a producer that must not lose anything does. Each Publish gets 3 s; it returns how many
// failed and the longest one took.
func produce(ctx context.Context, p *Publisher, n int, half chan<- struct{}, entry func(i int) engine.Publication) (failed int, longest time.Duration) {
	const batch = 10
	for i := 0; i < n; i += batch {
		ps := make([]engine.Publication, 0, batch)
		for j := i; j < i+batch && j < n; j++ {
			ps = append(ps, entry(j))
		}
		for ctx.Err() == nil {
			pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			began := time.Now()
			err := p.Publish(pctx, ps)
			longest = max(longest, time.Since(began))
			cancel()
			if err == nil {
				break
			}
			failed++
			time.Sleep(100 * time.Millisecond)
		}
		if i+batch == n/2 {
			close(half)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return failed, longest
}

// lossSink records what was delivered, failing the first attempt of every tenth message so
// that retries are in flight when the broker goes away.
type lossSink struct {
	mu        sync.Mutex
	attempts  map[int]int
	delivered map[int]int
}

func (s *lossSink) Deliver(m *engine.Message) engine.Result {
	i, ok := bodyIndex(m.Payload)
	if !ok {
		return engine.Result{Err: fmt.Errorf("unexpected payload %q", m.Payload), Permanent: true}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts[i]++
	if i%10 == 0 && s.attempts[i] == 1 {
		return engine.Result{Err: errors.New("first attempt refused"), Status: 503}
	}
	s.delivered[i]++
	return engine.Result{}
}

func (s *lossSink) count() (distinct, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.delivered {
		total += c
	}
	return len(s.delivered), total
}

// healthObserver records the source health the pipeline reports.
type healthObserver struct {
	engine.NopObserver
	mu               sync.Mutex
	errors           int
	firstErr         error
	healthyAfterDown bool
}

func (o *healthObserver) SourceHealth(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case err != nil:
		o.errors++
		o.healthyAfterDown = false
		if o.firstErr == nil {
			o.firstErr = err
		}
	case o.errors > 0:
		o.healthyAfterDown = true
	}
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestConnectionLoss runs a pipeline over a Dial'd queue of its own node while a producer
// fills the queue; halfway the node stops for a few seconds and restarts. Every entry is
// delivered at least once, the pipeline reported the source unhealthy during the outage and
// healthy after, and Take while the node is down fails after waiting about a second.
func TestConnectionLoss(t *testing.T) {
	t.Parallel()
	srv := amqptest.Start(t)
	log := proctest.Log(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const queue = "herald.loss"
	q, err := Dial(ctx, srv.URL(), Options{Queue: queue, Prefetch: 64, Instance: "loss", EncodeDead: acapy.EncodeDead}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	prod, err := NewPublisher(ctx, srv.URL(), PublisherOptions{Name: "loss producer"}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()

	sink := &lossSink{attempts: map[int]int{}, delivered: map[int]int{}}
	obs := &healthObserver{}
	p := &engine.Pipeline{Source: q, Decode: acapy.DecodeOutbound, Sink: sink, Observer: obs, Log: log,
		Workers: 8, Batch: 16, DrainTimeout: 5 * time.Second,
		Policy: engine.RetryPolicy{MaxRetries: 5, Interval: 0.5}}
	runCtx, stopRun := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { _ = p.Run(runCtx); close(ran) }()
	defer func() { stopRun(); <-ran }()

	half := make(chan struct{})
	var failed int
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		failed, _ = produce(ctx, prod, lossN, half, func(i int) engine.Publication {
			// The default exchange routes to the queue the key names.
			return engine.Publication{Key: []byte(queue), Body: acapy.AppendOutbound(nil, "http://receiver/", nil, enginetest.Body(i))}
		})
	}()

	<-half
	srv.Stop()
	if !waitFor(5*time.Second, func() bool { return !q.Connected() }) {
		t.Fatal("the queue still reports a connection with the node stopped")
	}
	began := time.Now()
	got, err := q.Take(ctx, nil, 1)
	if took := time.Since(began); err == nil || len(got) != 0 || took < 900*time.Millisecond || took > 3*time.Second {
		t.Errorf("Take with the node down: %d messages, %v after %s; want an error after about a second", len(got), err, took)
	}
	time.Sleep(outage)
	srv.Restart()

	<-produced
	if !waitFor(60*time.Second, func() bool { d, _ := sink.count(); return d == lossN }) {
		d, _ := sink.count()
		t.Fatalf("%d of %d entries delivered a minute after the restart", d, lossN)
	}
	stopRun()
	<-ran
	distinct, total := sink.count()
	t.Logf("%d entries delivered %d times (%d duplicates); %d publishes failed during the outage", distinct, total, total-distinct, failed)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.errors == 0 {
		t.Error("the pipeline never reported the source unhealthy during the outage")
	} else {
		t.Logf("source unhealthy %d times, first: %v", obs.errors, obs.firstErr)
	}
	if !obs.healthyAfterDown {
		t.Error("the pipeline did not report the source healthy after the outage")
	}
	if failed == 0 {
		t.Error("no publish failed: the outage did not happen while producing")
	}
}

// TestConnectionLossPublisher publishes through an outage of its own node, retrying failed
// batches: the queue bound to the exchange holds every entry afterwards, the first copies in
// the order published, and no Publish outlived its context.
func TestConnectionLossPublisher(t *testing.T) {
	t.Parallel()
	srv := amqptest.Start(t)
	log := proctest.Log(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const exchange, queue = "herald.events", "herald.events.k"
	admin, err := amqp.Dial(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := admin.Channel()
	if err != nil {
		t.Fatal(err)
	}
	// Declared before publishing, as a consumer would have; all durable, so they survive.
	if err := ch.ExchangeDeclare(exchange, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, "k", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	admin.Close()

	p, err := NewPublisher(ctx, srv.URL(), PublisherOptions{ContentType: "application/json"}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	half := make(chan struct{})
	var failed int
	var longest time.Duration
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		failed, longest = produce(ctx, p, lossN, half, func(i int) engine.Publication {
			return engine.Publication{Dest: []byte(exchange), Key: []byte("k"), Body: enginetest.Body(i)}
		})
	}()
	<-half
	srv.Stop()
	time.Sleep(outage)
	srv.Restart()
	<-produced
	if ctx.Err() != nil {
		t.Fatal("the producer did not finish within the test's time")
	}
	if !p.Connected() {
		t.Error("the publisher is not connected after the restart")
	}
	if failed == 0 {
		t.Error("no publish failed: the outage did not happen while publishing")
	}
	if longest > 3*time.Second+500*time.Millisecond {
		t.Errorf("a Publish took %s, beyond its 3 s context", longest)
	}

	admin, err = amqp.Dial(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if ch, err = admin.Channel(); err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	last := -1
	stored := drain(t, ch, queue)
	for _, b := range stored {
		i, ok := bodyIndex(b)
		if !ok {
			t.Fatalf("unexpected entry %q", b)
		}
		if seen[i] {
			continue
		}
		if i < last {
			t.Fatalf("entry %d stored after entry %d", i, last)
		}
		seen[i], last = true, i
	}
	if len(seen) != lossN {
		t.Fatalf("the queue holds %d distinct entries of %d", len(seen), lossN)
	}
	t.Logf("%d entries stored (%d duplicates); %d publishes failed, the longest took %s",
		len(stored), len(stored)-lossN, failed, longest.Round(time.Millisecond))
}

// proxy joins the connections it accepts to target. down breaks them all at once, as a
// network failure does, and refuses new ones until up.
type proxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        []net.Conn
}

func startProxy(t testing.TB, ln net.Listener, target string) *proxy {
	p := &proxy{addr: ln.Addr().String(), target: target, ln: ln}
	t.Cleanup(p.down)
	go p.serve(ln)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(u, c); u.Close() }()
		go func() { _, _ = io.Copy(c, u); c.Close() }()
	}
}

func (p *proxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) up(t testing.TB) {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("listening again on %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go p.serve(ln)
}

// TestDialWaitsForBroker: Dial retries while nothing listens, giving up when its context ends,
// and succeeds once the broker appears; the log never shows the password. A broker refusing
// the credentials fails Dial at once.
func TestDialWaitsForBroker(t *testing.T) {
	t.Parallel()
	shared, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there until the proxy starts
	u := *shared
	u.Host = addr
	var logs proctest.Output
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o := Options{Queue: fmt.Sprintf("herald.test.wait.%d", time.Now().UnixNano()), Instance: "wait", EncodeDead: acapy.EncodeDead}

	short, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	began := time.Now()
	_, err = Dial(short, u.String(), o, log)
	cancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(began) > 3*time.Second {
		t.Fatalf("Dial with nothing listening: %v after %s, want the context's deadline", err, time.Since(began))
	}

	type dialed struct {
		q   *Queue
		err error
	}
	res := make(chan dialed, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		q, err := Dial(ctx, u.String(), o, log)
		res <- dialed{q, err}
	}()
	time.Sleep(time.Second)
	if ln, err = net.Listen("tcp", addr); err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	startProxy(t, ln, shared.Host)
	r := <-res
	if r.err != nil {
		t.Fatalf("Dial once the broker appeared: %v", r.err)
	}
	if !r.q.Connected() {
		t.Error("a Dial'd queue does not report its connection")
	}
	r.q.Close()
	admin := dial(t)
	defer admin.Close()
	if ch, err := admin.Channel(); err == nil {
		deleteQueue(ch, o.Queue)
	}
	if pw, ok := shared.User.Password(); ok && strings.Contains(logs.String(), ":"+pw+"@") {
		t.Errorf("the log shows the password:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "cannot reach RabbitMQ") {
		t.Errorf("the log does not say the broker was unreachable:\n%s", logs.String())
	}

	// RabbitMQ answers a failed login after a few seconds; retrying would take until ctx ends.
	bad := *shared
	bad.User = url.UserPassword("herald-nobody", "wrong")
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began = time.Now()
	if _, err := Dial(ctx, bad.String(), o, log); err == nil || time.Since(began) > 15*time.Second {
		t.Errorf("Dial with refused credentials: %v after %s, want an error at once", err, time.Since(began))
	}
}

// TestStaleSettles takes four messages, loses the connection (a proxy cuts it and refuses
// new ones for a while) and settles
// them every way: each settle succeeds at once without touching the broker, and once the queue
// reconnected the four come back, with no retry copy and no dead letter beside them.
func TestStaleSettles(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shared, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	px := startProxy(t, ln, shared.Host)
	u := *shared
	u.Host = ln.Addr().String()

	name := fmt.Sprintf("herald.test.stale.%x", time.Now().UnixNano())
	admin := dial(t)
	defer admin.Close()
	ch, err := admin.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer deleteQueue(ch, name)
	q, err := Dial(ctx, u.String(), Options{Queue: name, Instance: "stale", Prefetch: 16, EncodeDead: acapy.EncodeDead}, proctest.Log(t))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := Publish(ctx, ch, name, acapy.AppendOutbound(nil, "http://receiver/", nil, enginetest.Body(i))); err != nil {
			t.Fatal(err)
		}
	}
	got := takeN(t, q, 4, 5*time.Second)
	if len(got) != 4 {
		t.Fatalf("took %d of 4", len(got))
	}

	px.down()
	if !waitFor(5*time.Second, func() bool { return !q.Connected() }) {
		t.Fatal("the queue did not notice the cut connection")
	}
	for i, err := range []error{
		q.Ack(ctx, got[0]),
		q.Retry(ctx, got[1], 1, 2*time.Second),
		q.DeadLetter(ctx, got[2], engine.Failure{Reason: "stale"}),
		q.Release(ctx, got[3:]),
	} {
		if err != nil {
			t.Errorf("settle %d of a lost connection: %v", i, err)
		}
	}
	if err := q.Ack(ctx, got[0]); err == nil {
		t.Error("settling a message twice succeeded")
	}

	px.up(t)
	if !waitFor(10*time.Second, q.Connected) {
		t.Fatal("the queue did not reconnect")
	}
	again := takeN(t, q, 4, 5*time.Second)
	var bodies []string
	for _, m := range again {
		if err := acapy.DecodeOutbound(m); err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, string(m.Payload))
		if m.SourceRetries != 0 {
			t.Errorf("%s came back with retry count %d: a retry copy, not the original", m.Payload, m.SourceRetries)
		}
		if err := q.Ack(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if len(again) != 4 {
		t.Fatalf("after the reconnection %d of the 4 came back: %q", len(again), bodies)
	}
	// A retry copy would come back once its 2 s delay passed.
	if extra := takeN(t, q, 1, 3*time.Second); len(extra) != 0 {
		t.Fatalf("a fifth message came: %q", extra[0].Raw)
	}
	if dead, err := DeadLetters(admin, name); err != nil || len(dead) != 0 {
		t.Fatalf("dead letters: %q %v, want none", dead, err)
	}
}
