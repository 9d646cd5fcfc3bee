package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
)

// eventsTotal is how many events BenchmarkEventsNDJSON posts (HERALD_BENCH_EVENTS, default 200,000).
func eventsTotal() int {
	if n, err := strconv.Atoi(os.Getenv("HERALD_BENCH_EVENTS")); err == nil && n > 0 {
		return n
	}
	return 200000
}

// BenchmarkEventsNDJSON posts ACA-Py record events (multitenant, with a state: two lists each
// under the default topic maps) to the herald events binary in NDJSON batches of 1,000 from 4
// connections, and reports events routed and pushed per second, counted from the 202 answers and
// checked against the lists' lengths.
func BenchmarkEventsNDJSON(b *testing.B) {
	bin, err := fixture.BuildHerald(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	srv := redistest.Standalone(b)
	ctx := context.Background()
	c, err := redisq.Connect(ctx, srv.URL(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	addr, _ := startEvents(b, bin, "REDIS_SERVER_URL="+srv.URL())
	total := eventsTotal() / ndjsonBatch * ndjsonBatch
	var rate float64
	for i := 0; i < b.N; i++ {
		_ = c.Do(ctx, c.B().Flushall().Build()).Error()
		took := postNDJSON(b, addr, total)
		var pushed int64
		for w := range 10 {
			for _, l := range []string{"acapy-record-with-state-wallet-", "acapy-record-wallet-"} {
				n, _ := c.Do(ctx, c.B().Llen().Key(l+strconv.Itoa(w)).Build()).AsInt64()
				pushed += n
			}
		}
		if pushed != int64(2*total) {
			b.Fatalf("%d entries in Redis, want %d", pushed, 2*total)
		}
		rate = float64(total) / took.Seconds()
		b.Logf("herald events: %d events (%d entries) in NDJSON batches of %d from %d connections in %s: %.0f events/s",
			total, pushed, ndjsonBatch, ndjsonConns, took.Round(time.Millisecond), rate)
	}
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(0, "ns/op")
}

// The shape of the NDJSON load: batches of 1,000 events from 4 connections.
const ndjsonBatch, ndjsonConns = 1000, 4

// ndjsonBody is one batch: multitenant record events with a state, over 10 wallets, each routed
// to two destinations by the default maps.
func ndjsonBody() []byte {
	var body bytes.Buffer
	for i := range ndjsonBatch {
		fmt.Fprintf(&body, `{"topic": "acapy::record::connections::active", "wallet_id": "wallet-%d", "payload": {"state": "active", "connection_id": "c-%d", "their_label": "Bob", "created_at": "2026-01-01T00:00:00.000000Z"}}`+"\n", i%10, i)
	}
	return body.Bytes()
}

// postNDJSON posts total events to the events service at addr and returns how long it took
// until the last 202.
func postNDJSON(b *testing.B, addr string, total int) time.Duration {
	body := ndjsonBody()
	batches := make(chan struct{}, total/ndjsonBatch)
	for range total / ndjsonBatch {
		batches <- struct{}{}
	}
	close(batches)
	var wg sync.WaitGroup
	errs := make(chan error, ndjsonConns)
	start := time.Now()
	for range ndjsonConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			for range batches {
				resp, err := client.Post("http://"+addr+"/v1/events", "application/x-ndjson", bytes.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				msg, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 202 {
					errs <- fmt.Errorf("status %d: %s", resp.StatusCode, msg)
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	return took
}

// startEvents runs the herald events binary with env on a free port until b ends and returns
// its address and process id once it accepts connections.
func startEvents(b *testing.B, bin string, env ...string) (addr string, pid int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr = ln.Addr().String()
	_ = ln.Close()
	cmd := exec.Command(bin, "events")
	cmd.Env = append(env, "HERALD_LISTEN="+addr, "HERALD_MAX_BODY=16777216")
	var log bytes.Buffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	for deadline := time.Now().Add(30 * time.Second); ; {
		if conn, err := net.Dial("tcp", addr); err == nil {
			_ = conn.Close()
			return addr, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			b.Fatalf("herald events did not start: %s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
