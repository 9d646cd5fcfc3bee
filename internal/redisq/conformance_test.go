package redisq

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/acapy/acapytest"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

// TestConformance runs the engine's Source suite against the at-least-once queue on a standalone
// server and on a cluster, with the ACA-Py entry formats the deliverer uses.
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"standalone", func(t *testing.T) string { return redistest.Standalone(t).URL() }},
		{"cluster", func(t *testing.T) string { return redistest.Cluster(t, 3).URL() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := redistest.Client(t, tc.url(t))
			var n atomic.Int64
			enginetest.Run(t, func(t *testing.T) *enginetest.Queue {
				return conformanceQueue(c, fmt.Sprintf("conf%d", n.Add(1)))
			})
		})
	}
}

func conformanceQueue(c rueidis.Client, prefix string) *enginetest.Queue {
	keys := NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
	return acapytest.Queue(&enginetest.Queue{
		Produce: func(t testing.TB, entries [][]byte) {
			els := make([]string, len(entries))
			for i, e := range entries {
				els[i] = string(e)
			}
			if err := c.Do(context.Background(), c.B().Rpush().Key(keys.Queue).Element(els...).Build()).Error(); err != nil {
				t.Fatal(err)
			}
		},
		Open: func(t testing.TB) (engine.Source, func()) {
			q := New(c, Options{Keys: keys, Mode: AtLeastOnce, Lease: time.Second, Log: quiet,
				EncodeRetry: acapy.AppendRetryMember,
				EncodeDead:  acapy.EncodeDead})
			ctx, cancel := context.WithCancel(context.Background())
			if err := q.Register(ctx); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); q.Run(ctx) }()
			return q, enginetest.Crash(t, func() { cancel(); wg.Wait() })
		},
		Ordered:   true,
		Redeliver: 3 * time.Second, // the 1 s lease, then the next reaper pass of a live instance
	}, func(t testing.TB) [][]byte {
		raw, err := c.Do(context.Background(), c.B().Lrange().Key(keys.Dead).Start(0).Stop(-1).Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		out := make([][]byte, len(raw))
		for i, r := range raw {
			out[i] = []byte(r)
		}
		return out
	})
}
