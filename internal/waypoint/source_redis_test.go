package waypoint

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestListSourceFeedsStreams reads the entries `herald events` pushes to a list: the event
// reaches its stream under acapy-cloud's topic name, and an entry that is not an event goes to the
// dead-letter list with the reason.
func TestListSourceFeedsStreams(t *testing.T) {
	rs := redistest.Standalone(t)
	b, err := config.ParseBroker("HERALD_SOURCE", "redis://"+rs.Addr()+"?list=waypoint")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub := NewHub(time.Minute, 100)
	src, err := OpenListSource(context.Background(), b, hub, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(hub, Options{Auth: Auth{GovernanceKey: []byte(testGovernance)}, Timeout: 10 * time.Second,
		Ping: 15 * time.Second, LookBack: time.Minute, Ready: src.Ready, Log: log})
	r := serve(t, hub, srv, src.Run)
	s := r.open("/v1/sse/w1/proofs/pres_ex_id/p1/presentation-received", "governance."+testGovernance)
	r.waitOpen(1)
	entry := `{"payload": {"wallet_id": "w1", "state": "presentation_received", "topic": "acapy::record::present_proof_v2_0::presentation_received", "category": "present_proof_v2_0", "payload": {"state": "presentation_received", "pres_ex_id": "p1"}}, "metadata": {"x-wallet-id": "w1"}}`
	if _, err := redistest.Do(rs.Addr(), "RPUSH", "waypoint", "not json", entry); err != nil {
		t.Fatal(err)
	}
	text, ended := s.rest(t)
	want := `data: {"wallet_id":"w1","topic":"proofs","origin":null,"group_id":null,"payload":{"state":"presentation_received","pres_ex_id":"p1"}}` + "\n\n"
	if text != want || !ended {
		t.Fatalf("body %q (ended %v), want %q", text, ended, want)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		dead, _ := redistest.Do(rs.Addr(), "LRANGE", "{waypoint}:dead", "0", "-1")
		if strings.Contains(dead, "not an event entry") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead-letter list: %q", dead)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if left, _ := redistest.Do(rs.Addr(), "LLEN", "waypoint"); left != "0" {
		t.Fatalf("%s entries left on the list", left)
	}
}
