package redisq

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func retryMember(dst []byte, m *engine.Message, retries int) []byte {
	return fmt.Appendf(dst, "%s|%d", m.Raw, retries)
}

func deadEntry(dst []byte, m *engine.Message, f engine.Failure, _ string, _ time.Time) []byte {
	return fmt.Appendf(dst, "%s|%s", m.Raw, f.Reason)
}

func newQueue(c rueidis.Client, prefix string, o Options) *Queue {
	o.Keys = NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
	o.EncodeRetry, o.EncodeDead, o.Log = retryMember, deadEntry, quiet
	return New(c, o)
}

func push(t testing.TB, c rueidis.Client, key string, vals ...string) {
	t.Helper()
	if err := c.Do(context.Background(), c.B().Rpush().Key(key).Element(vals...).Build()).Error(); err != nil {
		t.Fatal(err)
	}
}

func lrange(t testing.TB, c rueidis.Client, key string) []string {
	t.Helper()
	v, err := c.Do(context.Background(), c.B().Lrange().Key(key).Start(0).Stop(-1).Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// held lists an in-flight hash's entries in the order they were taken.
func held(t testing.TB, c rueidis.Client, key string) []string {
	t.Helper()
	m, err := c.Do(context.Background(), c.B().Hgetall().Key(key).Build()).AsStrMap()
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]int, 0, len(m))
	for k := range m {
		n, err := strconv.Atoi(k)
		if err != nil {
			t.Fatalf("in-flight field %q is not a sequence number", k)
		}
		seqs = append(seqs, n)
	}
	sort.Ints(seqs)
	out := make([]string, len(seqs))
	for i, n := range seqs {
		out[i] = m[strconv.Itoa(n)]
	}
	return out
}

func raws(ms []*engine.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m.Raw)
	}
	return out
}

func TestTakeAckReleaseStandalone(t *testing.T) { testTakeAckRelease(t, redistest.Standalone(t).URL()) }
func TestTakeAckReleaseCluster(t *testing.T)    { testTakeAckRelease(t, redistest.Cluster(t, 3).URL()) }

func testTakeAckRelease(t *testing.T, url string) {
	ctx := context.Background()
	c := redistest.Client(t, url)
	q := newQueue(c, "tar", Options{})
	push(t, c, q.o.Keys.Queue, "a", "b", "c", "d", "e")

	got, err := q.Take(ctx, nil, 3)
	if err != nil || fmt.Sprint(raws(got)) != "[a b c]" {
		t.Fatalf("take: %v %v", raws(got), err)
	}
	if fl := held(t, c, q.InflightKey()); fmt.Sprint(fl) != "[a b c]" {
		t.Fatalf("in-flight after take: %v", fl)
	}
	if err := q.Ack(ctx, got[1]); err != nil {
		t.Fatal(err)
	}
	if err := q.Retry(ctx, got[0], 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := q.Release(ctx, got[2:]); err != nil {
		t.Fatal(err)
	}
	if err := q.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if l := lrange(t, c, q.o.Keys.Queue); fmt.Sprint(l) != "[c d e]" {
		t.Fatalf("queue after release: %v (released entries go back to the head)", l)
	}
	if fl := held(t, c, q.InflightKey()); len(fl) != 0 {
		t.Fatalf("in-flight not empty: %v", fl)
	}
	zs, err := c.Do(ctx, c.B().Zrange().Key(q.o.Keys.RetrySet).Min("0").Max("-1").Withscores().Build()).AsZScores()
	if err != nil || len(zs) != 1 || zs[0].Member != "a|1" {
		t.Fatalf("retry set: %v %v", zs, err)
	}
	if want := float64(time.Now().Add(5 * time.Second).Unix()); zs[0].Score < want-1 || zs[0].Score > want {
		t.Errorf("score %v, want int(now+5) = %v", zs[0].Score, want)
	}

	// Dead-lettering is atomic with leaving in-flight.
	got, _ = q.Take(ctx, got[:0], 1)
	if err := q.DeadLetter(ctx, got[0], engine.Failure{Reason: "bad"}); err != nil {
		t.Fatal(err)
	}
	if d := lrange(t, c, q.o.Keys.Dead); fmt.Sprint(d) != "[c|bad]" {
		t.Fatalf("dead list: %v", d)
	}

	// An empty queue blocks about a second, then returns nothing.
	_ = c.Do(ctx, c.B().Del().Key(q.o.Keys.Queue).Build())
	t0 := time.Now()
	got, err = q.Take(ctx, got[:0], 10)
	if err != nil || len(got) != 0 || time.Since(t0) < 500*time.Millisecond {
		t.Fatalf("empty take: %v %v after %s", raws(got), err, time.Since(t0))
	}
	// ...and a push during the wait is taken at once, into in-flight.
	go func() { time.Sleep(200 * time.Millisecond); push(t, c, q.o.Keys.Queue, "late") }()
	got, err = q.Take(ctx, got[:0], 10)
	if err != nil || fmt.Sprint(raws(got)) != "[late]" || fmt.Sprint(held(t, c, q.InflightKey())) != "[late]" {
		t.Fatalf("blocking take: %v %v", raws(got), err)
	}
	// A server that forgot the take script (a restart, SCRIPT FLUSH) still hands the entry over.
	for _, n := range c.Nodes() {
		if err := n.Do(ctx, n.B().ScriptFlush().Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	go func() { time.Sleep(200 * time.Millisecond); push(t, c, q.o.Keys.Queue, "after-flush") }()
	got, err = q.Take(ctx, got[:0], 10)
	if err != nil || fmt.Sprint(raws(got)) != "[after-flush]" {
		t.Fatalf("take after SCRIPT FLUSH: %v %v", raws(got), err)
	}
}

func TestReapReturnsDeadInstanceMessages(t *testing.T) {
	ctx := context.Background()
	c := redistest.Client(t, redistest.Standalone(t).URL())
	dead := newQueue(c, "reap", Options{Lease: time.Second})
	push(t, c, dead.o.Keys.Queue, "1", "2", "3", "4")
	if err := dead.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dead.Take(ctx, nil, 2); err != nil {
		t.Fatal(err)
	}
	// The instance "dies" now: no renewal, no ack.
	live := newQueue(c, "reap", Options{Lease: time.Second})
	if err := live.reap(ctx); err != nil {
		t.Fatal(err)
	}
	if l := lrange(t, c, live.o.Keys.Queue); fmt.Sprint(l) != "[3 4]" {
		t.Fatalf("a live lease must not be reaped: queue %v", l)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := live.reap(ctx); err != nil {
		t.Fatal(err)
	}
	if l := lrange(t, c, live.o.Keys.Queue); fmt.Sprint(l) != "[1 2 3 4]" {
		t.Fatalf("after the lease expired the queue is %v, want [1 2 3 4]", l)
	}
	if fl := held(t, c, dead.InflightKey()); len(fl) != 0 {
		t.Fatalf("dead in-flight list not emptied: %v", fl)
	}
}

// TestPumpWithReferencePumps runs Herald's pump beside pumps that do what the Python deliverer
// does (ZRANGEBYSCORE 0 now LIMIT 0 10, ZREM, RPUSH only when ZREM returned 1) on the same keys:
// every due member must reach the queue exactly once.
func TestPumpWithReferencePumps(t *testing.T) {
	ctx := context.Background()
	c := redistest.Client(t, redistest.Standalone(t).URL())
	q := newQueue(c, "pump", Options{PumpBatch: 10})
	q2 := newQueue(c, "pump", Options{PumpBatch: 7})
	const n = 3000
	past := float64(time.Now().Add(-time.Minute).Unix())
	cmd := c.B().Zadd().Key(q.o.Keys.RetrySet).ScoreMember()
	for i := range n {
		cmd = cmd.ScoreMember(past, "m"+strconv.Itoa(i))
	}
	if err := c.Do(ctx, cmd.Build()).Error(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				now := strconv.FormatInt(time.Now().Unix(), 10)
				rows, err := c.Do(ctx, c.B().Zrangebyscore().Key(q.o.Keys.RetrySet).Min("0").Max(now).Limit(0, 10).Build()).AsStrSlice()
				if err != nil || len(rows) == 0 {
					return
				}
				for _, r := range rows {
					if removed, _ := c.Do(ctx, c.B().Zrem().Key(q.o.Keys.RetrySet).Member(r).Build()).AsInt64(); removed == 1 {
						push(t, c, q.o.Keys.Queue, r)
					}
				}
			}
		}()
	}
	for _, pq := range []*Queue{q, q2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				moved, err := pq.pumpOnce(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if moved == 0 {
					return
				}
			}
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for _, v := range lrange(t, c, q.o.Keys.Queue) {
		seen[v]++
	}
	for i := range n {
		if k := seen["m"+strconv.Itoa(i)]; k != 1 {
			t.Fatalf("member m%d reached the queue %d times", i, k)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct members in the queue, want %d", len(seen), n)
	}
}

// TestPumpCrashInStaging leaves members in a dead pump's staging list, as a crash between the
// staging script and the push would: a live pump must claim and push them.
func TestPumpCrashInStaging(t *testing.T) {
	ctx := context.Background()
	c := redistest.Client(t, redistest.Standalone(t).URL())
	dead := newQueue(c, "crash", Options{Lease: time.Second})
	if err := c.Do(ctx, c.B().Zadd().Key(dead.o.Keys.RetrySet).ScoreMember().ScoreMember(1, "x").ScoreMember(2, "y").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := stageScript.Exec(ctx, c, []string{dead.o.Keys.RetrySet, dead.staging, dead.o.Keys.pumpLeases},
		[]string{strconv.FormatInt(time.Now().Unix(), 10), "10", dead.o.Instance,
			strconv.FormatInt(time.Now().Add(time.Second).UnixMilli(), 10)}).AsInt64(); err != nil {
		t.Fatal(err)
	}
	live := newQueue(c, "crash", Options{Lease: time.Second})
	if _, err := live.pumpOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if l := lrange(t, c, live.o.Keys.Queue); len(l) != 0 {
		t.Fatalf("claimed a live pump's staging: %v", l)
	}
	time.Sleep(1100 * time.Millisecond)
	if _, err := live.pumpOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if l := lrange(t, c, live.o.Keys.Queue); fmt.Sprint(l) != "[x y]" {
		t.Fatalf("queue after claim: %v, want [x y]", l)
	}
	if s := lrange(t, c, dead.staging); len(s) != 0 {
		t.Fatalf("dead staging left: %v", s)
	}
}

func TestAtMostOnce(t *testing.T) {
	ctx := context.Background()
	c := redistest.Client(t, redistest.Standalone(t).URL())
	q := newQueue(c, "amo", Options{Mode: AtMostOnce})
	push(t, c, q.o.Keys.Queue, "a", "b", "c")
	got, err := q.Take(ctx, nil, 2)
	if err != nil || fmt.Sprint(raws(got)) != "[a b]" {
		t.Fatalf("take: %v %v", raws(got), err)
	}
	if fl := held(t, c, q.InflightKey()); len(fl) != 0 {
		t.Fatalf("at-most-once keeps no in-flight list: %v", fl)
	}
	if err := q.Release(ctx, got); err != nil {
		t.Fatal(err)
	}
	if l := lrange(t, c, q.o.Keys.Queue); fmt.Sprint(l) != "[a b c]" {
		t.Fatalf("queue after release: %v", l)
	}
}

func TestPingEveryClusterNode(t *testing.T) {
	cl := redistest.Cluster(t, 3)
	q := newQueue(redistest.Client(t, cl.URL()), "ping", Options{})
	if err := q.Ping(context.Background()); err != nil {
		t.Fatalf("healthy cluster: %v", err)
	}
	cl.Node(2).Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := q.Ping(ctx); err == nil {
		t.Fatal("a cluster with a stopped primary still answers every PING")
	}
}

// TestLostTakeReplyReturnsEntries: a take that ran on the server but whose answer never came
// back (the node went away mid-reply) leaves entries in this live instance's in-flight hash. The
// next take gives them back to the queue and takes them again, instead of leaving them there for
// as long as the instance lives.
func TestLostTakeReplyReturnsEntries(t *testing.T) {
	c := redistest.Client(t, redistest.Standalone(t).URL())
	ctx := context.Background()
	q := newQueue(c, "lost", Options{})
	for _, e := range []string{"a", "b", "c"} {
		_ = c.Do(ctx, c.B().Rpush().Key(q.o.Keys.Queue).Element(e).Build()).Error()
	}
	// The take as the server ran it, with the numbers the client had chosen.
	first := q.seq.Add(3) - 3
	if err := takeScript.Exec(ctx, c, []string{q.o.Keys.Queue, q.inflight, q.o.Keys.leases},
		[]string{"3", q.o.Instance, "9999999999999", strconv.FormatUint(first, 10)}).Error(); err != nil {
		t.Fatal(err)
	}
	q.noteFailedTake(first, 3) // ... and the client saw only an error
	got, err := q.Take(ctx, nil, 10)
	if err != nil || len(got) != 3 || string(got[0].Raw) != "a" || string(got[2].Raw) != "c" {
		t.Fatalf("take after a lost answer: %d entries, %v", len(got), err)
	}
	if n, _ := c.Do(ctx, c.B().Hlen().Key(q.inflight).Build()).AsInt64(); n != 3 {
		t.Fatalf("%d entries in flight, want the 3 just taken", n)
	}
	for _, m := range got {
		if m.Token < first+3 {
			t.Fatalf("entry %s kept the lost take's number %d", m.Raw, m.Token)
		}
	}
}
