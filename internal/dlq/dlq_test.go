package dlq

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// fill dead-letters three entries the way the deliverer writes them.
func fill(t *testing.T, c rueidis.Client, dead string) {
	t.Helper()
	hdrs := []engine.Header{{Name: []byte("Content-Type"), Value: []byte("application/json")}}
	ok := acapy.AppendOutbound(nil, "http://a.example/hook", hdrs, []byte(`{"n": 1}`))
	// The retry member the deliverer gave up on: the entry with its retry count.
	m := &engine.Message{}
	m.SetRaw(acapy.AppendOutbound(nil, "http://b.example/x", hdrs, []byte(`{"n": 2}`)))
	if err := acapy.DecodeOutbound(m); err != nil {
		t.Fatal(err)
	}
	exhausted := acapy.AppendRetryMember(nil, m, 5)
	for _, d := range []acapy.DeadLetter{
		{Raw: ok, Reason: "exceeded max retries: status 500", Status: 500, Retries: 5, URL: []byte("http://a.example/hook"), At: now.Add(-2 * time.Hour), Instance: "i1"},
		{Raw: exhausted, Reason: "exceeded max retries: connection refused", Retries: 5, URL: []byte("http://b.example/x"), At: now.Add(-10 * time.Minute), Instance: "i1"},
		{Raw: []byte(`not json`), Reason: "malformed entry: invalid JSON at offset 0", At: now.Add(-time.Minute), Instance: "i2"},
	} {
		if err := c.Do(context.Background(), c.B().Rpush().Key(dead).Element(string(acapy.AppendDeadLetter(nil, d))).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestListFilters(t *testing.T) {
	c := redistest.Client(t, redistest.Standalone(t).URL())
	keys := redisq.NewKeys("acapy_outbound", "acapy_outbound_retry", "")
	fill(t, c, keys.Dead)
	ctx := context.Background()
	for _, tc := range []struct {
		f    Filter
		want []int
	}{
		{Filter{}, []int{0, 1, 2}},
		{Filter{Reason: "MAX RETRIES"}, []int{0, 1}},
		{Filter{Reason: "malformed"}, []int{2}},
		{Filter{Endpoint: "b.example"}, []int{1}},
		{Filter{OlderThan: time.Hour}, []int{0}},
		{Filter{NewerThan: 30 * time.Minute}, []int{1, 2}},
		{Filter{Reason: "retries", NewerThan: 30 * time.Minute}, []int{1}},
	} {
		tc.f.Now = now
		items, err := List(ctx, c, keys.Dead, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, it := range items {
			got = append(got, it.Index)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.f, got, tc.want)
		}
	}
}

// TestReplayIsIdempotent: replayed entries go back in the reference format with the retry count
// dropped, leave the dead-letter list, and a second replay of the same listing moves nothing.
func TestReplayIsIdempotent(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		url := redistest.Standalone(t).URL()
		if cluster {
			url = redistest.Cluster(t, 3).URL()
		}
		c := redistest.Client(t, url)
		ctx := context.Background()
		for _, dead := range []string{"", "elsewhere:dead"} { // the default, in the queue's slot; and another
			keys := redisq.NewKeys("acapy_outbound", "acapy_outbound_retry", dead)
			_ = c.Do(ctx, c.B().Del().Key(keys.Queue).Build()).Error()
			fill(t, c, keys.Dead)
			items, err := List(ctx, c, keys.Dead, Filter{Reason: "retries", Now: now})
			if err != nil || len(items) != 2 {
				t.Fatalf("list: %d %v", len(items), err)
			}
			for round, want := range []int{2, 0} {
				n, err := Replay(ctx, c, keys.Dead, keys.Queue, items)
				if err != nil || n != want {
					t.Fatalf("cluster %v, dead %q, replay %d: moved %d (%v), want %d", cluster, keys.Dead, round+1, n, err, want)
				}
			}
			queued, _ := c.Do(ctx, c.B().Lrange().Key(keys.Queue).Start(0).Stop(-1).Build()).AsStrSlice()
			if len(queued) != 2 || strings.Contains(queued[1], "retries") ||
				queued[0] != `{"service": {"url": "http://a.example/hook"}, "payload": "eyJuIjogMX0=", "headers": {"Content-Type": "application/json"}}` {
				t.Fatalf("queued: %q", queued)
			}
			left, _ := List(ctx, c, keys.Dead, Filter{})
			if len(left) != 1 || !strings.Contains(left[0].Entry.Reason, "malformed") {
				t.Fatalf("left in the dead-letter list: %+v", left)
			}
			if n, err := Purge(ctx, c, keys.Dead, left); n != 1 || err != nil {
				t.Fatalf("purge: %d %v", n, err)
			}
			_ = c.Do(ctx, c.B().Del().Key(keys.Dead).Build()).Error()
		}
	}
}
