package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/natsq/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestWaypointBinary runs `herald waypoint` against its own nats-server: not ready until the
// stream exists, a stream gets its event, and SIGTERM ends the streams still open with the last
// chunk (no data) before the process exits 0.
func TestWaypointBinary(t *testing.T) {
	ns := natstest.Start(t)
	port := freePort(t)
	addr := "127.0.0.1:" + port
	p := start(t, []string{"NATS_SERVER=" + ns.URL(), "HERALD_LISTEN=" + addr,
		"ACAPY_GOVERNANCE_AGENT_API_KEY=gov", "SSE_TIMEOUT=30"}, "waypoint")
	ready := func() int {
		res, err := http.Get("http://" + addr + "/health/ready")
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	deadline := time.Now().Add(10 * time.Second)
	for ready() != 503 {
		if time.Now().After(deadline) {
			t.Fatalf("/health/ready: %d, want 503 while the stream does not exist", ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "cloudapi_aries_state_monitoring",
		Subjects: []string{"cloudapi.aries.state_monitoring.>"}, MaxAge: time.Minute}); err != nil {
		t.Fatal(err)
	}
	for ready() != 200 {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("/health/ready: %d after the stream was created", ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	open := func(id string) *bufio.Reader {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /v1/sse/w1/connections/connection_id/%s/completed HTTP/1.1\r\nHost: x\r\nx-api-key: governance.gov\r\n\r\n", id)
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		br := bufio.NewReader(c)
		status, _ := br.ReadString('\n')
		if !strings.HasPrefix(status, "HTTP/1.1 200") {
			t.Fatalf("status %q", status)
		}
		for line, _ := br.ReadString('\n'); line != "\r\n"; line, _ = br.ReadString('\n') {
			if line == "" {
				t.Fatal("headers cut short")
			}
		}
		return br
	}
	answered, pending := open("c1"), open("c2") // indexed before their headers were written
	body := `{"wallet_id":"w1","topic":"connections","origin":"tenant","group_id":"g","payload":{"state":"completed","connection_id":"c1"}}`
	if _, err := js.Publish(ctx, "cloudapi.aries.state_monitoring.g.w1.connections.completed", []byte(body)); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(answered)
	want := fmt.Sprintf("%x\r\ndata: %s\n\n\r\n0\r\n\r\n", len(body)+8, body)
	if string(rest) != want {
		t.Fatalf("answered stream: %q, want %q", rest, want)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	rest, _ = io.ReadAll(pending)
	if string(rest) != "0\r\n\r\n" {
		t.Fatalf("stream open at SIGTERM: %q, want the last chunk alone", rest)
	}
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}

func TestWaypointBadConfigurationExits2(t *testing.T) {
	for _, tc := range []struct {
		env []string
		key string
	}{
		{nil, "ACAPY_MULTITENANT_JWT_SECRET"},
		{[]string{"ACAPY_MULTITENANT_JWT_SECRET=s", "SSE_TIMEOUT=soon"}, "SSE_TIMEOUT"},
		{[]string{"ACAPY_MULTITENANT_JWT_SECRET=s", "HERALD_SOURCE=amqp://127.0.0.1:5672?queue=q"}, "HERALD_SOURCE"},
	} {
		p := start(t, tc.env, "waypoint")
		code := p.wait(5 * time.Second)
		out := strings.TrimSpace(p.log.String())
		if code != 2 || strings.Count(out, "\n") != 0 || !strings.Contains(out, tc.key) {
			t.Errorf("env %v: exit %d, output %q; want exit 2 and one line naming %s", tc.env, code, out, tc.key)
		}
	}
}
