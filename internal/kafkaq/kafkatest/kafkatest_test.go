package kafkatest

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestRestartKeepsData: a record stored before a stop is there after the restart, on the same
// address, and a client that saw the broker go finds it again.
func TestRestartKeepsData(t *testing.T) {
	c := Start(t, "kept")
	addr := c.Addr()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Seeds()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "kept", Value: []byte("before")}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	c.Stop()
	if c.Kfake() != nil {
		t.Fatal("a stopped cluster still has a broker")
	}
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	err = cl.Ping(pctx)
	cancel()
	if err == nil {
		t.Fatal("the broker answered while stopped")
	}

	c.Restart()
	if c.Addr() != addr {
		t.Fatalf("restarted on %s, was %s", c.Addr(), addr)
	}
	pctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(pctx, &kgo.Record{Topic: "kept", Value: []byte("after")}).FirstErr(); err != nil {
		t.Fatalf("producing after the restart: %v", err)
	}
	reader, err := kgo.NewClient(kgo.SeedBrokers(c.Seeds()...), kgo.ConsumeTopics("kept"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	var got []string
	for len(got) < 2 && pctx.Err() == nil {
		reader.PollFetches(pctx).EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	if len(got) != 2 || got[0] != "before" || got[1] != "after" {
		t.Fatalf("the topic holds %q, want before and after", got)
	}
}
