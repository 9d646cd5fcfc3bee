package redisq

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/redistest"
)

// TestPublisherConformance runs the engine's Publisher suite against RPUSH on a cluster, where
// the lists of one batch live on different nodes.
func TestPublisherConformance(t *testing.T) {
	c := redistest.Client(t, redistest.Cluster(t, 3).URL())
	p := NewPublisher(c)
	var n atomic.Int64
	enginetest.RunPublisher(t, func(t *testing.T) *enginetest.Target {
		prefix := fmt.Sprintf("pub%d", n.Add(1))
		return &enginetest.Target{
			Publisher: p,
			Dest:      func(i int) []byte { return fmt.Appendf(nil, "%s-list-%d", prefix, i) },
			Read: func(t testing.TB, dest []byte, n int, d time.Duration) []enginetest.Stored {
				var got []string
				for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					var err error
					got, err = c.Do(context.Background(), c.B().Lrange().Key(string(dest)).Start(0).Stop(-1).Build()).AsStrSlice()
					if err != nil {
						t.Fatal(err)
					}
					if len(got) >= n {
						break
					}
				}
				out := make([]enginetest.Stored, len(got))
				for i, s := range got {
					out[i].Body = []byte(s)
				}
				return out
			},
		}
	})
}
