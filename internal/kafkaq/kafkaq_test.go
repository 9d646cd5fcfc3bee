package kafkaq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/acapy/acapytest"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestConformance runs the engine's Source suite against a consumer group on franz-go's
// in-process Kafka cluster (kfake).
func TestConformance(t *testing.T) {
	t.Parallel()
	enginetest.Run(t, func(t *testing.T) *enginetest.Queue {
		name := fmt.Sprintf("herald-test-%d", rand.Uint64())
		o := Options{Topic: name, RetryTopic: name + ".retry", DeadTopic: name + ".dead", Group: "deliver", Instance: "conformance",
			EncodeDead: acapy.EncodeDead}
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, o.Topic, o.RetryTopic, o.DeadTopic))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Close)
		o.Seeds = cluster.ListenAddrs()
		producer, err := kgo.NewClient(kgo.SeedBrokers(o.Seeds...))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(producer.Close)
		ctx := context.Background()
		return acapytest.Queue(&enginetest.Queue{
			Produce: func(t testing.TB, entries [][]byte) {
				recs := make([]*kgo.Record, len(entries))
				for i, e := range entries {
					recs[i] = &kgo.Record{Topic: o.Topic, Value: e}
				}
				if err := producer.ProduceSync(ctx, recs...).FirstErr(); err != nil {
					t.Fatal(err)
				}
			},
			Open: func(t testing.TB) (engine.Source, func()) {
				q, err := Open(o)
				if err != nil {
					t.Fatal(err)
				}
				return q, enginetest.Crash(t, q.Close) // leaves the group; nothing more is committed
			},
			Ordered:   true,
			Redeliver: 8 * time.Second, // the group's rebalance once the crashed member has left
		}, func(t testing.TB) [][]byte {
			cl, err := kgo.NewClient(kgo.SeedBrokers(o.Seeds...), kgo.ConsumeTopics(o.DeadTopic),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			var raw [][]byte
			for range 3 {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				cl.PollFetches(pctx).EachRecord(func(r *kgo.Record) { raw = append(raw, r.Value) })
				cancel()
			}
			return raw
		})
	})
}
