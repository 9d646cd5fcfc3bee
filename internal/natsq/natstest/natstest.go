// Package natstest runs a real nats-server with JetStream for tests, one process per test on a
// free loopback port with its store in the test's temporary directory. A server can be stopped
// and restarted on the same port and store to simulate an outage that loses nothing. The
// nats-server binary is looked up on PATH, or named by HERALD_NATS_SERVER; without it the test
// is skipped.
package natstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/proctest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is one nats-server process. Its methods are for the test's own goroutine.
type Server struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	log  *proctest.Output

	proc proctest.Slot
}

// Start launches a JetStream-enabled server for t, stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := os.Getenv("HERALD_NATS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("nats-server"); err != nil {
			t.Skipf("nats-server is not installed (not on PATH, HERALD_NATS_SERVER unset): %v", err)
		}
	}
	// The directory comes first so that its removal, a cleanup of its own, runs after the stop.
	s := &Server{t: t, bin: bin, dir: t.TempDir(), log: &proctest.Output{}}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("nats-server on port %d, log tail:\n%s", s.port, s.log.Tail(30))
		}
	})
	var err error
	for range 5 { // another process may bind the free port between choosing and using it
		s.port = proctest.FreePort()
		if err = s.start(); err == nil {
			return s
		}
	}
	t.Fatalf("starting nats-server: %v", err)
	return nil
}

// URL is the server's nats:// URL.
func (s *Server) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

// PID is the server process's id, 0 while it is stopped.
func (s *Server) PID() int {
	return s.proc.PID()
}

// StoreDir is where the server keeps its JetStream data.
func (s *Server) StoreDir() string { return s.dir }

// Stop shuts the server down with SIGTERM, which lets JetStream write its state, and waits until
// the process is gone. It does nothing when the server is not running.
func (s *Server) Stop() { s.proc.Stop(syscall.SIGTERM, 10*time.Second) }

// Kill ends the server with SIGKILL, as a crash would: JetStream recovers from its store at the
// next start, possibly with acknowledgments of the last moments forgotten.
func (s *Server) Kill() { s.proc.Stop(syscall.SIGKILL, 10*time.Second) }

// Restart starts a stopped server again on the same port and store and waits until JetStream
// answers.
func (s *Server) Restart() {
	s.t.Helper()
	if s.proc.PID() != 0 {
		s.t.Fatal("natstest: Restart of a server that is running")
	}
	var err error
	for range 20 { // the old listener may linger for a moment
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restarting nats-server on %s: %v", s.URL(), err)
}

func (s *Server) start() error {
	cmd := exec.Command(s.bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-sd", s.dir)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	proc, err := proctest.Start(cmd, false)
	if err != nil {
		return err
	}
	s.proc.Set(proc)
	// Ready when JetStream answers a request, not just when the port accepts: after a restart
	// the streams are recovered from the store first.
	if err := proctest.Await(proc.Exited(), 10*time.Second, s.ping); err != nil {
		s.Kill()
		return fmt.Errorf("nats-server: %w; log tail:\n%s", err, s.log.Tail(10))
	}
	return nil
}

func (s *Server) ping() error {
	nc, err := nats.Connect(s.URL(), nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}
