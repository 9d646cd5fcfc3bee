package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/sink"
)

var requestsPerSec = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// ceiling measures how many 300-byte POSTs per second wrk gets through keep-alive connections
// into the same fasthttp receiver the drain benchmarks deliver to: the most any deliverer could
// reach on this machine. It returns 0 when wrk is not installed.
func ceiling(b *testing.B) float64 {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		fmt.Println("ceiling: wrk not installed (apt-get install wrk): not measured")
		return 0
	}
	recv, err := fixture.NewReceiver(1)
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	script := filepath.Join(b.TempDir(), "post.lua")
	body := string(fixture.Payload(nil, 0, 300))
	lua := fmt.Sprintf("wrk.method = \"POST\"\nwrk.body = %q\nwrk.headers[\"Content-Type\"] = \"application/json\"\n", body)
	if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
		b.Fatal(err)
	}
	// Two threads and 256 connections: the cores and the concurrency Herald itself uses.
	out, err := exec.Command(wrk, "-t2", "-c256", "-d5s", "-s", script, recv.URL()+"/in").CombinedOutput()
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	m := requestsPerSec.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no Requests/sec in wrk output:\n%s", out)
	}
	r, _ := strconv.ParseFloat(string(m[1]), 64)
	fmt.Printf("ceiling: wrk -t2 -c256 POSTing 300-byte bodies into the receiver: %.0f req/s\n", r)
	return r
}

// sinkOnly measures Herald's HTTP sink alone into the same receiver: the deliverer's pipeline and
// its default sink (the event loops) carrying 200,000 decoded 300-byte messages from an in-memory
// source, with no Redis and no entry decoding. Between it and the wrk ceiling is what Herald's
// HTTP client costs more than wrk's; between it and a drain is what the queue costs.
func sinkOnly(b *testing.B) float64 {
	recv, err := fixture.NewReceiver(1)
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	n := messages()
	raw := []byte(recv.URL() + "/in " + string(fixture.Payload(nil, 0, 300)))
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = raw
	}
	src := enginetest.NewMemory(bodies...)
	ctype := []engine.Header{{Name: []byte("Content-Type"), Value: []byte("application/json")}}
	p := &engine.Pipeline{Source: src, Sink: sink.NewLoop(sink.Options{MaxConnsPerHost: 256}),
		Workers: 256, Batch: 256, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Decode: func(m *engine.Message) error {
			i := bytes.IndexByte(m.Raw, ' ')
			m.URL, m.Payload = m.Raw[:i], m.Raw[i+1:]
			m.Headers = append(m.Headers[:0], ctype...)
			return nil
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() { _ = p.Run(ctx); close(done) }()
	for src.Settled() < n {
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("sink alone: %d of %d settled in 2 minutes", src.Settled(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	took := time.Since(start)
	cancel()
	<-done
	if len(src.Acked) != 1 || src.Acked[string(raw)] != n {
		b.Fatalf("sink alone: %d of %d delivered", src.Acked[string(raw)], n)
	}
	r := float64(n) / took.Seconds()
	fmt.Printf("sink alone: Herald's pipeline and HTTP sink, %d messages from memory, no Redis, into the receiver: %.0f req/s\n", n, r)
	return r
}
