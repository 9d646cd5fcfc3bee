package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
)

// TestDLQTool: entries the deliverer dead-lettered are listed and shown; replay puts the
// selected ones back in the reference format and herald deliver delivers them; a second replay
// does nothing; purge asks first and refuses without a yes.
func TestDLQTool(t *testing.T) {
	t.Parallel()
	url := redistest.Standalone(t).URL()
	c := client(t, url)
	ctx := context.Background()
	recv := newReceiver(t, 2)
	keys := redisq.NewKeys("acapy_outbound", "acapy_outbound_retry", "")
	// Two entries for the receiver, given up on earlier (their retry count is spent), and one
	// malformed entry that a running deliverer dead-letters.
	for id := range 2 {
		m := &engine.Message{}
		m.SetRaw(acapy.AppendOutbound(nil, recv.URL()+"/in", nil, fixture.Payload(nil, id, 300)))
		if err := acapy.DecodeOutbound(m); err != nil {
			t.Fatal(err)
		}
		d := acapy.DeadLetter{Raw: acapy.AppendRetryMember(nil, m, 5), Reason: "exceeded max retries: status 503", Status: 503,
			Retries: 5, URL: []byte(recv.URL() + "/in"), At: time.Now().Add(-time.Hour), Instance: "old"}
		if err := c.Do(ctx, c.B().Rpush().Key(keys.Dead).Element(string(acapy.AppendDeadLetter(nil, d))).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	env := referenceEnv(url, "acapy", freePort(t), "k")
	start(t, env, "deliver")
	_ = c.Do(ctx, c.B().Rpush().Key(keys.Queue).Element(`{"service": {"url": "http://x/"}, "payload": 12}`).Build()).Error()
	eventually(t, 10*time.Second, "the malformed entry dead-lettered", func() bool { return llen(t, c, keys.Dead) == 3 })

	run := func(args ...string) (int, string) {
		p := start(t, env, append([]string{"dlq"}, args...)...)
		code := p.wait(20 * time.Second)
		return code, p.log.String()
	}
	code, out := run("list")
	if code != 0 || !strings.Contains(out, "3 entries selected") || !strings.Contains(out, "malformed entry") || strings.Count(out, "retries 5") != 2 {
		t.Fatalf("list: %d\n%s", code, out)
	}
	if code, out = run("show", "--reason", "malformed"); code != 0 || !strings.Contains(out, "payload is not a string") || !strings.Contains(out, "1 entries selected") {
		t.Fatalf("show: %d\n%s", code, out)
	}
	if code, out = run("replay", "--reason", "max retries", "--older-than", "30m"); code != 0 || !strings.Contains(out, "replayed 2 of 2") {
		t.Fatalf("replay: %d\n%s", code, out)
	}
	if !recv.WaitAll(10 * time.Second) {
		got, missing, dup := recv.Tally()
		t.Fatalf("replayed entries: %d received, %d missing, %d duplicated", got, missing, dup)
	}
	if code, out = run("replay", "--reason", "max retries"); code != 0 || !strings.Contains(out, "replayed 0 of 0") {
		t.Fatalf("second replay: %d\n%s", code, out)
	}
	// Purge without a yes on stdin refuses; with --yes it removes.
	if code, out = run("purge"); code != 1 || !strings.Contains(out, "nothing purged") || llen(t, c, keys.Dead) != 1 {
		t.Fatalf("purge without confirmation: %d\n%s", code, out)
	}
	if code, out = run("purge", "--yes", "0"); code != 0 || !strings.Contains(out, "purged 1 of 1") || llen(t, c, keys.Dead) != 0 {
		t.Fatalf("purge --yes: %d\n%s", code, out)
	}
	if code, _ = run("frobnicate"); code != 2 {
		t.Errorf("unknown action: exit %d", code)
	}
}
