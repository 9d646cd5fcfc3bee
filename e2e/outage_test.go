package e2e

import (
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redistest"
)

func mustDecode(t testing.TB, entry string) []byte {
	t.Helper()
	m := engine.GetMessage()
	m.SetRaw([]byte(entry))
	if err := acapy.DecodeOutbound(m); err != nil {
		t.Fatalf("decoding %q: %v", entry, err)
	}
	return append([]byte(nil), m.Payload...)
}

// TestRedisOutage stops Redis for 10 s under a running deliverer: it must neither crash nor spin,
// must say not ready meanwhile, and must resume by itself.
func TestRedisOutage(t *testing.T) {
	srv := redistest.Standalone(t)
	c := client(t, srv.URL())
	const n = 2000
	recv := newReceiver(t, n)
	prefix := "outage"
	fill(t, c, prefix, recv, 0, n/2)
	port, key := freePort(t), "k"
	p := start(t, referenceEnv(srv.URL(), prefix, port, key), "deliver")
	eventually(t, 20*time.Second, "first half delivered", func() bool { return recv.Total() >= n/2 })
	if code, body := status(t, port, "/status/ready", key); body != `{"ready":true}` {
		t.Fatalf("ready before the outage: %d %s", code, body)
	}

	srv.Stop()
	t.Log("redis stopped")
	time.Sleep(time.Second)
	before := fixture.CPUTime(p.cmd.Process.Pid)
	deadline := time.Now().Add(9 * time.Second)
	sawNotReady := false
	for time.Now().Before(deadline) {
		_, body := status(t, port, "/status/ready", key)
		sawNotReady = sawNotReady || body == `{"ready":false}`
		time.Sleep(500 * time.Millisecond)
	}
	used := fixture.CPUTime(p.cmd.Process.Pid) - before
	t.Logf("CPU during 9 s of outage: %s", used)
	if !sawNotReady {
		t.Error("/status/ready never said false while Redis was down")
	}
	if code, body := status(t, port, "/status/live", key); body != `{"alive":false}` {
		t.Errorf("live during the outage: %d %s", code, body)
	}
	// A spinning loop burns 9 s of CPU here; backing off costs a few ms.
	if used > 500*time.Millisecond {
		t.Errorf("the deliverer used %s of CPU in 9 s of outage: it spins", used)
	}
	select {
	case <-p.done:
		t.Fatal("the deliverer exited during the outage")
	default:
	}

	srv.Start()
	t.Log("redis restarted (empty: it keeps nothing on disk)")
	fill(t, client(t, srv.URL()), prefix, recv, n/2, n/2)
	eventually(t, 30*time.Second, "delivery to resume after the outage", func() bool {
		_, missing, _ := recv.Tally()
		return missing == 0
	})
	eventually(t, 10*time.Second, "ready again", func() bool {
		_, body := status(t, port, "/status/ready", key)
		return body == `{"ready":true}`
	})
}
