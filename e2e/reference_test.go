package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redistest"
)

// These tests run the reference Python deliverer of ACA-Py's redis_events plugin beside Herald.
// They need a checkout of the plugin's redis_events folder (the directory holding the
// redis_events package) in HERALD_REFERENCE_DIR and a Python with its dependencies
// (aiohttp, redis, pydantic 1, fastapi, uvicorn, nest_asyncio) as HERALD_REFERENCE_PYTHON
// (default python3); they are skipped otherwise. The reference always uses a cluster client, so
// both run against a 3-node cluster.

// referenceCluster skips unless a reference deliverer is available, and starts the cluster it
// needs.
func referenceCluster(t *testing.T) string {
	t.Helper()
	if os.Getenv("HERALD_REFERENCE_DIR") == "" {
		t.Skip("HERALD_REFERENCE_DIR is not set: no reference deliverer to compare with")
	}
	return redistest.Cluster(t, 3).URL()
}

func referenceDeliverer(t *testing.T, redisURL, prefix, logName string) *exec.Cmd {
	t.Helper()
	dir := os.Getenv("HERALD_REFERENCE_DIR")
	python := os.Getenv("HERALD_REFERENCE_PYTHON")
	if python == "" {
		python = "python3"
	}
	cmd := exec.Command(python, "-m", "redis_events.v1_0.services.deliverer.deliver")
	cmd.Dir = dir
	cmd.Env = []string{"REDIS_SERVER_URL=" + redisURL, "TOPIC_PREFIX=" + prefix, "PATH=" + os.Getenv("PATH")}
	log, err := os.Create(filepath.Join(t.TempDir(), logName+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the reference deliverer: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// TestReferenceDrainRate drains the same number of messages with the reference and with Herald,
// one after the other in one run, and logs both rates and CPU use.
func TestReferenceDrainRate(t *testing.T) {
	url := referenceCluster(t)
	c := client(t, url)
	const n = 20000
	rate := func(name string, run func() *exec.Cmd, prefix string) float64 {
		recv := newReceiver(t, n)
		fill(t, c, prefix, recv, 0, n)
		t0 := time.Now()
		cmd := run()
		if !recv.WaitAll(5 * time.Minute) {
			t.Fatalf("%s did not deliver everything", name)
		}
		took := time.Since(t0)
		cpu := 100 * fixture.CPUTime(cmd.Process.Pid).Seconds() / took.Seconds()
		r := float64(n) / took.Seconds()
		t.Logf("%s: %d messages in %s: %.0f msgs/s, %.0f%% of a core (startup included)", name, n, took.Round(time.Millisecond), r, cpu)
		return r
	}
	ref := rate("reference", func() *exec.Cmd { return referenceDeliverer(t, url, "ref", "ref") }, "ref")
	her := rate("herald", func() *exec.Cmd {
		return start(t, []string{"REDIS_SERVER_URL=" + url, "TOPIC_PREFIX=her"}, "deliver").cmd
	}, "her")
	t.Logf("herald / reference = %.1fx", her/ref)
}

// TestReferenceInterop runs two reference deliverers and two Herald deliverers on the same keys
// while every third message fails twice, so that both kinds of pump move members the other kind
// wrote: every message must arrive, and exactly as often as it was attempted.
func TestReferenceInterop(t *testing.T) {
	url := referenceCluster(t)
	c := client(t, url)
	const n = 3000
	recv := newReceiver(t, n)
	var calls [n]atomic.Int32
	recv.Respond = func(id int) int {
		if id >= 0 && id < n && id%3 == 0 && calls[id].Add(1) <= 2 {
			return 503
		}
		return 200
	}
	keys := fill(t, c, "mix", recv, 0, n)
	referenceDeliverer(t, url, "mix", "ref1")
	referenceDeliverer(t, url, "mix", "ref2")
	env := []string{"REDIS_SERVER_URL=" + url, "TOPIC_PREFIX=mix", "HERALD_LOG_LEVEL=warn"}
	start(t, env, "deliver")
	start(t, env, "deliver")
	want := func(id int) int {
		if id%3 == 0 {
			return 3
		}
		return 1
	}
	eventually(t, 2*time.Minute, "every attempt", func() bool {
		for id := range n {
			if recv.Count(id) < want(id) {
				return false
			}
		}
		return true
	})
	time.Sleep(5 * time.Second) // a duplicate from a racing pump would arrive by now
	extra := 0
	for id := range n {
		extra += recv.Count(id) - want(id)
	}
	t.Logf("%d messages, 1,000 of them retried twice through the shared retry set: %d extra deliveries, queue %d",
		n, extra, llen(t, c, keys.Queue))
	if extra != 0 {
		t.Fatalf("%d deliveries beyond the expected attempts", extra)
	}
}
