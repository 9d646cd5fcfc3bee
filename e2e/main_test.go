// Package e2e runs the herald binary as an operator would, against real Redis servers started by
// the tests (standalone and a 3-node cluster), and checks what arrives at real receivers.
package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/proctest"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/redis/rueidis"
)

var heraldBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "herald-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if heraldBin, err = fixture.BuildHerald(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running herald process whose log is kept for failures.
type proc struct {
	t    testing.TB
	cmd  *exec.Cmd
	log  *proctest.Output
	done chan struct{}
	err  error
}

// start runs `herald <args>` with exactly env (no inherited variables).
func start(t testing.TB, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(heraldBin, args...)
	cmd.Env = env
	p := &proc{t: t, cmd: cmd, log: &proctest.Output{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting herald: %v", err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("herald %v log (last 3000 bytes):\n%s", args, tail(p.log.String(), 3000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// wait waits for exit and returns the exit code, or -1 after the timeout.
func (p *proc) wait(timeout time.Duration) int {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		return -1
	}
}

func client(t testing.TB, url string) rueidis.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := redisq.Connect(ctx, url, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}

func freePort(t testing.TB) string { return strconv.Itoa(proctest.FreePort()) }

// status GETs a status path with the key and returns code and body.
func status(t testing.TB, port, path, key string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+path, nil)
	if key != "" {
		req.Header.Set("access_token", key)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func llen(t testing.TB, c rueidis.Client, key string) int64 {
	n, err := c.Do(context.Background(), c.B().Llen().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatalf("LLEN %s: %v", key, err)
	}
	return n
}

// newReceiver starts a fixture receiver for ids 0..n-1, closed when t ends.
func newReceiver(t testing.TB, n int) *fixture.Receiver {
	t.Helper()
	r, err := fixture.NewReceiver(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// fill queues count numbered 300-byte messages, ids first.., addressed to recv, onto prefix's
// outbound list, and returns the queue's keys.
func fill(t testing.TB, c rueidis.Client, prefix string, recv *fixture.Receiver, first, count int) redisq.Keys {
	t.Helper()
	keys := redisq.NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
	if _, err := fixture.Fill(context.Background(), c, keys.Queue, recv.URL()+"/in", first, count, 300); err != nil {
		t.Fatal(err)
	}
	return keys
}
