package e2e

import (
	"context"
	"encoding/base64"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
)

// TestRetryScheduleAndDeadLetter: a receiver that fails once gets the message again after the
// reference's 5 s through the retry set, whose member is byte-identical to the reference's; an
// entry that already used its 5 retries and fails is dead-lettered with the status.
func TestRetryScheduleAndDeadLetter(t *testing.T) {
	v := loadVectors(t)
	srv := redistest.Standalone(t)
	c := client(t, srv.URL())
	ctx := context.Background()
	recv, err := fixture.NewReceiver(2)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	var calls [2]atomic.Int32
	recv.Respond = func(id int) int {
		if id == 1 || calls[id].Add(1) == 1 {
			return 503
		}
		return 200
	}
	prefix := "retry"
	keys := redisq.NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
	url := recv.URL() + "/endpoint-0"
	headers := []engine.Header{{Name: []byte("Content-Type"), Value: []byte("application/json")}}
	first := acapy.AppendOutbound(nil, url, headers, fixture.Payload(nil, 0, 40))
	// The second entry says it was already retried 5 times, as a reference retry member would.
	m := &engine.Message{URL: []byte(url), Headers: headers, Payload: fixture.Payload(nil, 1, 40)}
	exhausted := acapy.AppendRetryMember(nil, m, 5)
	if err := c.Do(ctx, c.B().Rpush().Key(keys.Queue).Element(string(first), string(exhausted)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	start(t, []string{"REDIS_SERVER_URL=" + srv.URL(), "TOPIC_PREFIX=" + prefix}, "deliver")

	var member string
	var score float64
	eventually(t, 5*time.Second, "the retry member", func() bool {
		zs, err := c.Do(ctx, c.B().Zrange().Key(keys.RetrySet).Min("0").Max("-1").Withscores().Build()).AsZScores()
		if err != nil || len(zs) == 0 {
			return false
		}
		member, score = zs[0].Member, zs[0].Score
		return true
	})
	failedAt := time.Now()
	// The vectors' member for retries 1, with this test's URL and payload.
	want := strings.Replace(v.Retry[0].Member, "http://127.0.0.1:8080/endpoint-0", url, 1)
	want = strings.Replace(want, "eyJoZWxsbyI6IndvcmxkIn0=", base64.URLEncoding.EncodeToString(fixture.Payload(nil, 0, 40)), 1)
	if member != want {
		t.Errorf("retry member\n got %s\nwant %s", member, want)
	}
	if d := score - float64(failedAt.Unix()); d < 4 || d > 5 {
		t.Errorf("score is now%+.0f s, want int(now + 5)", d)
	}
	eventually(t, 10*time.Second, "redelivery through the pump", func() bool { return recv.Count(0) == 2 })
	if took := time.Since(failedAt); took < 3*time.Second {
		t.Errorf("redelivered after %s, before the 5 s delay", took)
	}

	dead := keys.Dead
	eventually(t, 5*time.Second, "the exhausted entry in the dead-letter list", func() bool { return llen(t, c, dead) == 1 })
	e, _ := c.Do(ctx, c.B().Lindex().Key(dead).Index(0).Build()).ToString()
	d, err := acapy.ParseDeadLetter([]byte(e))
	if err != nil || d.Status != 503 || string(d.Raw) != string(exhausted) || !strings.Contains(d.Reason, "exceeded max retries") {
		t.Errorf("dead-letter entry %+v (%v)", d, err)
	}
	if n, _ := c.Do(ctx, c.B().Zcard().Key(keys.RetrySet).Build()).AsInt64(); n != 0 {
		t.Errorf("retry set still holds %d members", n)
	}
}

// TestDropExhaustedLikeTheReference: HERALD_ON_EXHAUSTED=drop gives up silently, as the Python
// deliverer does.
func TestDropExhaustedLikeTheReference(t *testing.T) {
	srv := redistest.Standalone(t)
	c := client(t, srv.URL())
	recv, err := fixture.NewReceiver(1)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	recv.Respond = func(int) int { return 500 }
	keys := redisq.NewKeys("drop_outbound", "drop_outbound_retry", "")
	m := &engine.Message{URL: []byte(recv.URL() + "/x"), Payload: fixture.Payload(nil, 0, 40)}
	if err := c.Do(context.Background(), c.B().Rpush().Key(keys.Queue).
		Element(string(acapy.AppendRetryMember(nil, m, 5))).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	start(t, []string{"REDIS_SERVER_URL=" + srv.URL(), "TOPIC_PREFIX=drop", "HERALD_ON_EXHAUSTED=drop"}, "deliver")
	eventually(t, 5*time.Second, "the attempt", func() bool { return recv.Count(0) == 1 })
	time.Sleep(300 * time.Millisecond)
	if n := llen(t, c, keys.Dead); n != 0 {
		t.Errorf("dead-letter list has %d entries in drop mode", n)
	}
	if n := llen(t, c, keys.Queue); n != 0 {
		t.Errorf("queue has %d entries", n)
	}
}

// TestBadConfigurationExits2: a missing or malformed REDIS_SERVER_URL stops the process at once
// with exit status 2 and one line naming the key.
func TestBadConfigurationExits2(t *testing.T) {
	for _, env := range [][]string{
		nil,
		{"REDIS_SERVER_URL=localhost:6379"},
		{"REDIS_SERVER_URL=redis://"},
		{"REDIS_SERVER_URL=redis://127.0.0.1:6379", "HERALD_CONCURRENCY=lots"},
	} {
		p := start(t, env, "deliver")
		code := p.wait(5 * time.Second)
		out := strings.TrimSpace(p.log.String())
		key := "REDIS_SERVER_URL"
		if len(env) > 1 {
			key = "HERALD_CONCURRENCY"
		}
		if code != 2 || strings.Count(out, "\n") != 0 || !strings.Contains(out, key) {
			t.Errorf("env %v: exit %d, output %q; want exit 2 and one line naming %s", env, code, out, key)
		}
	}
}

func TestRelayBadConfigurationExits2(t *testing.T) {
	for _, tc := range []struct {
		env []string
		key string
	}{
		{nil, "REDIS_SERVER_URL"},
		{[]string{"REDIS_SERVER_URL=redis://127.0.0.1:6379"}, "INBOUND_TRANSPORT_CONFIG"},
		{[]string{"REDIS_SERVER_URL=redis://127.0.0.1:6379", `INBOUND_TRANSPORT_CONFIG=[["http","0.0.0.0"]]`}, "INBOUND_TRANSPORT_CONFIG"},
		{[]string{"REDIS_SERVER_URL=redis://127.0.0.1:6379", `INBOUND_TRANSPORT_CONFIG=[["smtp","0.0.0.0",25]]`}, "INBOUND_TRANSPORT_CONFIG"},
		{[]string{"REDIS_SERVER_URL=redis://127.0.0.1:6379", `INBOUND_TRANSPORT_CONFIG=not json`}, "INBOUND_TRANSPORT_CONFIG"},
		{[]string{"REDIS_SERVER_URL=redis://127.0.0.1:6379", `INBOUND_TRANSPORT_CONFIG=[["http","0.0.0.0",8021]]`, "HERALD_MAX_BODY=big"}, "HERALD_MAX_BODY"},
	} {
		p := start(t, tc.env, "relay")
		code := p.wait(5 * time.Second)
		out := strings.TrimSpace(p.log.String())
		if code != 2 || strings.Count(out, "\n") != 0 || !strings.Contains(out, tc.key) {
			t.Errorf("env %v: exit %d, output %q; want exit 2 and one line naming %s", tc.env, code, out, tc.key)
		}
	}
}
