package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
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

// sinkOnly measures Herald's HTTP sink alone into the same receiver: 256 goroutines delivering a
// decoded 300-byte message over and over for five seconds, with no queue, no decoding and no
// settling. Between it and the wrk ceiling is what Go's HTTP client costs more than wrk's; between
// it and a drain is what the queue costs.
func sinkOnly(b *testing.B) float64 {
	recv, err := fixture.NewReceiver(1)
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	s := sink.New(sink.Options{MaxConnsPerHost: 256})
	url := []byte(recv.URL() + "/in")
	payload := fixture.Payload(nil, 0, 300)
	var n atomic.Int64
	var failed atomic.Value
	stop := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := &engine.Message{URL: url, Payload: payload, Headers: []engine.Header{
				{Name: []byte("Content-Type"), Value: []byte("application/json")}}}
			for time.Now().Before(stop) {
				if r := s.Deliver(m); r.Err != nil {
					failed.Store(r.Err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("sink alone: %v", err)
	}
	r := float64(n.Load()) / 5
	fmt.Printf("sink alone: Herald's HTTP sink from 256 goroutines, no queue, into the receiver: %.0f req/s\n", r)
	return r
}
