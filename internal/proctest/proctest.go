// Package proctest holds what tests that start servers and processes share: a free port to
// start them on, their life cycle (start, readiness, stop with a deadline), and buffers and log
// tails of what they write.
package proctest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on at the moment of the call.
func FreePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Output collects bytes written by one goroutine (a process's output copier, a logger's
// callback) and read by another, the test's.
type Output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

// String returns everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// Tail returns the last n lines written.
func (o *Output) Tail(n int) string { return lastLines(o.String(), n) }

// Process is a server process a test started. It is reaped in the background, so that its exit
// can be waited for with a deadline and a stop that hangs ends in a kill.
type Process struct {
	cmd   *exec.Cmd
	group bool
	done  chan struct{}
}

// Start starts cmd. With group, cmd runs in a process group of its own and a kill reaches the
// whole group: for a script that starts the real server as its child.
func Start(cmd *exec.Cmd, group bool) (*Process, error) {
	if group {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, group: group, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Stop sends sig and waits until the process is gone, killing it once grace has passed. A
// SIGKILL goes to the whole group of a group process.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) {
	if sig == syscall.SIGKILL {
		p.kill()
	} else {
		_ = p.cmd.Process.Signal(sig)
	}
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
		<-p.done
	}
}

func (p *Process) kill() {
	if p.group {
		// The group's id stays reserved while its unreaped leader is in it.
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		return
	}
	_ = p.cmd.Process.Kill()
}

// Slot holds the process a restartable server runs as, none while it is stopped. It is safe for
// concurrent use: one goroutine of a test may stop the server while another reads its PID.
type Slot struct {
	mu sync.Mutex
	p  *Process
}

// Set records the running process.
func (s *Slot) Set(p *Process) {
	s.mu.Lock()
	s.p = p
	s.mu.Unlock()
}

// PID is the running process's id, 0 while stopped.
func (s *Slot) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return 0
	}
	return s.p.PID()
}

// Stop stops the running process as Process.Stop does and empties the slot; it does nothing
// while stopped.
func (s *Slot) Stop(sig syscall.Signal, grace time.Duration) {
	s.mu.Lock()
	p := s.p
	s.p = nil
	s.mu.Unlock()
	if p != nil {
		p.Stop(sig, grace)
	}
}

// Await calls probe until it succeeds and returns nil, or returns an error once limit has passed
// or exited is closed (a server that died while booting). A nil exited is never closed.
func Await(exited <-chan struct{}, limit time.Duration, probe func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := probe()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("the process exited while starting")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %w", limit, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// FileTail returns the last n lines of the log file at path, and false when it cannot be read.
func FileTail(path string, n int) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	return lastLines(string(b), n), true
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Log is a logger, at debug level, that writes to t's output until t ends and discards after:
// a client library's callbacks may still log then, when writing to t would panic.
func Log(t testing.TB) *slog.Logger {
	w := &testWriter{w: t.Output()}
	t.Cleanup(func() {
		w.mu.Lock()
		w.w = nil
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.w == nil {
		return len(p), nil
	}
	return w.w.Write(p)
}
