package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

// chaosFull is set by `make chaos` (HERALD_CHAOS=full): the sizes and durations issue 6 names.
// Without it the suite runs shortened, as part of `make test`.
func chaosFull() bool { return os.Getenv("HERALD_CHAOS") == "full" }

func chaosSize(full, short int) int {
	if chaosFull() {
		return full
	}
	return short
}

// chaosRow is one line of the table: lost must be 0.
type chaosRow struct {
	scenario                                        string
	sent, delivered, duplicated, deadLettered, lost int
}

type chaosScenario struct {
	name string
	run  func(t *testing.T) chaosRow
}

// TestChaos runs every fault scenario (in parallel), then prints the table of messages sent,
// delivered, duplicated, dead-lettered and lost. Any loss fails the test.
func TestChaos(t *testing.T) {
	scenarios := []chaosScenario{
		{"deliverer SIGKILLed 10 times, standalone", func(t *testing.T) chaosRow {
			return chaosKill9(t, redistest.Standalone(t).URL())
		}},
		{"deliverer SIGKILLed 10 times, cluster", func(t *testing.T) chaosRow { return chaosKill9(t, redistest.Cluster(t, 3).URL()) }},
		{"Redis (AOF) restarted mid-drain", chaosRedisRestart},
		{"receiver: 30% 500, 10% too slow, 5% connection closed", chaosFlakyReceiver},
		{"receiver down (connections refused), then back", chaosReceiverDown},
		{"two deliverers and a reference retry writer", chaosSharedKeys},
		{"cluster primary restarted mid-drain", chaosClusterPrimaryRestart},
	}
	rows := make([]chaosRow, len(scenarios))
	t.Run("scenarios", func(t *testing.T) {
		for i, sc := range scenarios {
			t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
				t.Parallel()
				row := sc.run(t)
				row.scenario = sc.name
				rows[i] = row
				if row.lost != 0 {
					t.Errorf("%s: %d messages lost", sc.name, row.lost)
				}
			})
		}
	})
	var b strings.Builder
	mode := "short (make test)"
	if chaosFull() {
		mode = "full (make chaos)"
	}
	fmt.Fprintf(&b, "chaos, %s:\n| %-55s | %8s | %9s | %10s | %13s | %4s |\n", mode, "scenario", "sent", "delivered", "duplicated", "dead-lettered", "lost")
	fmt.Fprintf(&b, "|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 57), strings.Repeat("-", 10), strings.Repeat("-", 11), strings.Repeat("-", 12), strings.Repeat("-", 15), strings.Repeat("-", 6))
	for _, r := range rows {
		fmt.Fprintf(&b, "| %-55s | %8d | %9d | %10d | %13d | %4d |\n", r.scenario, r.sent, r.delivered, r.duplicated, r.deadLettered, r.lost)
	}
	t.Log("\n" + b.String())
	fmt.Fprint(os.Stderr, b.String())
}

// tally counts what became of ids 0..n-1: delivered (at the receiver at least once), duplicated
// (extra arrivals), dead-lettered (in the dead-letter list and never delivered) and lost (neither).
func tally(t *testing.T, c rueidis.Client, keys redisq.Keys, recv *fixture.Receiver, n int) chaosRow {
	t.Helper()
	dead, err := c.Do(context.Background(), c.B().Lrange().Key(keys.Dead).Start(0).Stop(-1).Build()).AsStrSlice()
	if err != nil {
		t.Fatalf("reading the dead-letter list: %v", err)
	}
	deadIDs := map[int]bool{}
	for _, d := range dead {
		dl, err := acapy.ParseDeadLetter([]byte(d))
		if err != nil {
			t.Fatalf("dead-letter entry %q: %v", d, err)
		}
		m := engine.GetMessage()
		m.SetRaw(dl.Raw)
		if acapy.DecodeOutbound(m) == nil {
			deadIDs[fixture.PayloadID(m.Payload)] = true
		}
		engine.PutMessage(m)
	}
	row := chaosRow{sent: n}
	for id := range n {
		switch cnt := recv.Count(id); {
		case cnt > 0:
			row.delivered++
			row.duplicated += cnt - 1
		case deadIDs[id]:
			row.deadLettered++
		default:
			row.lost++
		}
	}
	return row
}

// settled waits until every id is delivered or dead-lettered, or the timeout passes.
func settled(t *testing.T, c rueidis.Client, keys redisq.Keys, recv *fixture.Receiver, n int, timeout time.Duration) chaosRow {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		_, missing, _ := recv.Tally()
		if missing <= int(llen(t, c, keys.Dead)) {
			if row := tally(t, c, keys, recv, n); row.lost == 0 || time.Now().After(deadline) {
				return row
			}
		}
		if time.Now().After(deadline) {
			return tally(t, c, keys, recv, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func chaosEnv(redisURL, prefix string, extra ...string) []string {
	return append([]string{"REDIS_SERVER_URL=" + redisURL, "TOPIC_PREFIX=" + prefix, "HERALD_LEASE=2s", "HERALD_LOG_LEVEL=warn"}, extra...)
}

// chaosKill9 drains while killing the deliverer with SIGKILL ten times at random moments, then
// lets two survivors finish.
func chaosKill9(t *testing.T, redisURL string) chaosRow {
	n := chaosSize(100000, 20000)
	c := client(t, redisURL)
	recv := newReceiver(t, n)
	prefix := "kill" + strconv.Itoa(rand.IntN(1e6))
	keys := fill(t, c, prefix, recv, 0, n)
	env := chaosEnv(redisURL, prefix)
	for range 10 {
		p := start(t, env, "deliver")
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		p.wait(5 * time.Second)
	}
	start(t, env, "deliver")
	start(t, env, "deliver")
	return settled(t, c, keys, recv, n, 3*time.Minute)
}

// chaosRedisRestart stops Redis (append-only file on) with a third of the messages delivered and
// starts it again two seconds later.
func chaosRedisRestart(t *testing.T) chaosRow {
	n := chaosSize(100000, 20000)
	srv := redistest.Standalone(t, redistest.AppendOnly())
	c := client(t, srv.URL())
	recv := newReceiver(t, n)
	keys := fill(t, c, "aof", recv, 0, n)
	start(t, chaosEnv(srv.URL(), "aof"), "deliver")
	eventually(t, 60*time.Second, "a third delivered", func() bool { return recv.Total() >= int64(n/3) })
	srv.Stop()
	time.Sleep(2 * time.Second)
	srv.Start()
	return settled(t, c, keys, recv, n, 2*time.Minute)
}

// chaosFlakyReceiver: each request is answered 500 (30%), too slowly for the deliverer's 1 s
// timeout (10%: the receiver does get it), or has its connection closed without an answer (5%).
// Messages are retried on the reference schedule; those failing six times are dead-lettered.
func chaosFlakyReceiver(t *testing.T) chaosRow {
	n := chaosSize(10000, 2000)
	srv := redistest.Standalone(t)
	c := client(t, srv.URL())
	recv := newReceiver(t, n)
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(7, 7))
	roll := func() float64 { mu.Lock(); defer mu.Unlock(); return r.Float64() }
	recv.Refuse = func(int) (int, bool) {
		switch x := roll(); {
		case x < 0.30:
			return 500, true
		case x < 0.35:
			return 0, true // the connection closed without an answer
		}
		return 0, false
	}
	recv.Respond = func(int) int {
		if roll() < 0.10/0.65 { // 10% of all requests: the ones not refused, slowed past the timeout
			time.Sleep(1200 * time.Millisecond)
		}
		return 200
	}
	keys := fill(t, c, "flaky", recv, 0, n)
	start(t, chaosEnv(srv.URL(), "flaky", "HERALD_TIMEOUT=1s"), "deliver")
	// The last retry is 65 s after the first attempt.
	return settled(t, c, keys, recv, n, 3*time.Minute)
}

// chaosReceiverDown: the receiver is down (its port refuses connections) for 60 s (15 s in the
// short run), then back; the retries of the reference schedule carry every message over the gap.
func chaosReceiverDown(t *testing.T) chaosRow {
	n := chaosSize(10000, 2000)
	outage := time.Duration(chaosSize(60, 15)) * time.Second
	srv := redistest.Standalone(t)
	c := client(t, srv.URL())
	// Below the ephemeral range (32768 and up), so that no outgoing connection takes the port
	// while the receiver is down.
	var recv *fixture.Receiver
	for recv == nil {
		r, err := fixture.NewReceiverAt(n, fmt.Sprintf("127.0.0.1:%d", 10000+rand.IntN(22000)))
		if err == nil {
			recv = r
		}
	}
	t.Cleanup(func() { _ = recv.Close() })
	if err := recv.Down(); err != nil {
		t.Fatal(err)
	}
	keys := fill(t, c, "down", recv, 0, n)
	start(t, chaosEnv(srv.URL(), "down"), "deliver")
	time.Sleep(outage)
	if err := recv.Up(); err != nil {
		t.Fatalf("the receiver cannot listen on its port again: %v", err)
	}
	return settled(t, c, keys, recv, n, 3*time.Minute)
}

// chaosSharedKeys: two deliverers drain one queue while a third party writes retry members in the
// reference deliverer's format onto the shared retry set, due at random moments.
func chaosSharedKeys(t *testing.T) chaosRow {
	n := chaosSize(100000, 20000)
	extra := n / 10
	srv := redistest.Standalone(t)
	c := client(t, srv.URL())
	recv := newReceiver(t, n+extra)
	keys := fill(t, c, "shared", recv, 0, n)
	env := chaosEnv(srv.URL(), "shared")
	start(t, env, "deliver")
	start(t, env, "deliver")
	ctx := context.Background()
	for id := n; id < n+extra; id++ {
		m := &engine.Message{}
		m.SetRaw(acapy.AppendOutbound(nil, recv.URL()+"/in", nil, fixture.Payload(nil, id, 300)))
		if err := acapy.DecodeOutbound(m); err != nil {
			t.Fatal(err)
		}
		due := float64(time.Now().Add(time.Duration(rand.IntN(3000))*time.Millisecond).UnixNano()) / 1e9
		member := acapy.AppendRetryMember(nil, m, 1+rand.IntN(3))
		if err := c.Do(ctx, c.B().Zadd().Key(keys.RetrySet).ScoreMember().ScoreMember(due, string(member)).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	return settled(t, c, keys, recv, n+extra, 2*time.Minute)
}

// chaosClusterPrimaryRestart stops one primary of a 3-node cluster (append-only files on) with a
// third delivered, and starts it again three seconds later.
func chaosClusterPrimaryRestart(t *testing.T) chaosRow {
	n := chaosSize(100000, 20000)
	cl := redistest.Cluster(t, 3, redistest.AppendOnly())
	c := client(t, cl.URL())
	recv := newReceiver(t, n)
	keys := fill(t, c, "primary", recv, 0, n)
	// The node serving the queue's slot: the one whose loss matters.
	node := 0
	for i, a := range cl.Addrs() {
		if out, err := redistest.Do(a, "CLUSTER", "COUNTKEYSINSLOT", strconv.Itoa(int(redisq.Slot(keys.Queue)))); err == nil && out != "0" {
			node = i
		}
	}
	start(t, chaosEnv(cl.URL(), "primary"), "deliver")
	eventually(t, 60*time.Second, "a third delivered", func() bool { return recv.Total() >= int64(n/3) })
	cl.Node(node).Stop()
	time.Sleep(3 * time.Second)
	cl.Node(node).Start()
	return settled(t, c, keys, recv, n, 2*time.Minute)
}
