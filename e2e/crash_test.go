package e2e

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redistest"
)

// TestSIGTERMDrains checks that a graceful stop finishes started deliveries within the drain
// timeout and puts back, at the queue's head, what it had not started.
func TestSIGTERMDrains(t *testing.T) {
	srv := redistest.Standalone(t)
	c := client(t, srv.URL())
	const n = 200
	recv := newReceiver(t, n)
	recv.Respond = func(int) int { time.Sleep(300 * time.Millisecond); return 200 }
	prefix := "term"
	keys := fill(t, c, prefix, recv, 0, n)
	env := []string{"REDIS_SERVER_URL=" + srv.URL(), "TOPIC_PREFIX=" + prefix,
		"HERALD_CONCURRENCY=8", "HERALD_BATCH=16", "HERALD_DRAIN_TIMEOUT=5s"}
	p := start(t, env, "deliver")
	eventually(t, 10*time.Second, "first deliveries", func() bool { return recv.Total() >= 8 })
	sent := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(8 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM (-1: still running after 8 s)", code)
	}
	t.Logf("stopped %s after SIGTERM", time.Since(sent).Round(time.Millisecond))
	received, _, dups := recv.Tally()
	queued := llen(t, c, keys.Queue)
	inflight, _ := c.Do(context.Background(), c.B().Keys().Pattern("{"+keys.Queue+"}:inflight:*").Build()).AsStrSlice()
	t.Logf("received %d, back in queue %d, duplicates %d", received, queued, dups)
	if received+int(queued) != n || len(inflight) != 0 {
		t.Fatalf("received %d + queued %d != %d, or in-flight entries left: %v", received, queued, n, inflight)
	}
	// What was put back must be the oldest undelivered ids, first in line.
	head, _ := c.Do(context.Background(), c.B().Lindex().Key(keys.Queue).Index(0).Build()).ToString()
	if id := fixture.PayloadID(mustDecode(t, head)); id < 0 || recv.Count(id) != 0 {
		t.Errorf("head of queue is id %d, which was already delivered or unreadable", id)
	}
}

// TestSlowSinkBackpressure: when every request takes 2 s, Herald keeps at most its concurrency
// (plus a batch or two) in flight and leaves the rest in Redis, instead of growing in memory.
func TestSlowSinkBackpressure(t *testing.T) {
	srv := redistest.Standalone(t)
	c := client(t, srv.URL())
	const n = 20000
	recv := newReceiver(t, n)
	recv.Respond = func(int) int { time.Sleep(2 * time.Second); return 200 }
	keys := fill(t, c, "slow", recv, 0, n)
	p := start(t, []string{"REDIS_SERVER_URL=" + srv.URL(), "TOPIC_PREFIX=slow"}, "deliver")
	time.Sleep(6 * time.Second)
	hashes, _ := c.Do(context.Background(), c.B().Keys().Pattern("{"+keys.Queue+"}:inflight:*").Build()).AsStrSlice()
	if len(hashes) != 1 {
		t.Fatalf("in-flight hashes: %v", hashes)
	}
	held, err := c.Do(context.Background(), c.B().Hlen().Key(hashes[0]).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	queued := llen(t, c, keys.Queue)
	rss := fixture.PeakRSS(p.cmd.Process.Pid)
	t.Logf("after 6 s against a 2 s receiver: %d delivered, %d in flight, %d still queued, peak RSS %.1f MiB",
		recv.Total(), held, queued, float64(rss)/(1<<20))
	if held > 256+2*256 {
		t.Errorf("%d messages in flight; the default concurrency 256 plus two batches of 256 is the bound", held)
	}
	if rss > 64<<20 {
		t.Errorf("peak RSS %d MiB, want at most 64 MiB", rss>>20)
	}
	if int(queued)+int(held)+int(recv.Total()) < n {
		t.Errorf("messages unaccounted for: queued %d + in flight %d + received %d < %d", queued, held, recv.Total(), n)
	}
}
