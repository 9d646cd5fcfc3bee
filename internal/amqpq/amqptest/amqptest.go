// Package amqptest runs a RabbitMQ node of a test's own, so that a test can stop and restart
// its broker without disturbing the shared one others use. The node is a real rabbitmq-server
// with its own node name, AMQP and distribution ports, data directory and logs under the test's
// temporary directory, no plugins, and none of the machine's RabbitMQ configuration. Its AMQP
// listener binds 127.0.0.1 only and accepts guest/guest. Restart keeps the port and the data:
// durable queues, exchanges, bindings and persistent messages survive it, as in production.
//
// A node takes several seconds to boot (about 6 to 8 s on a two-core machine, the same for a
// restart), so tests that need one should share it where they can and run in parallel with
// others. The node registers with the machine's epmd, which Erlang starts when none runs (and
// which then outlives the test, as epmd does). Tests skip when rabbitmq-server is not
// installed.
package amqptest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/proctest"
	amqp "github.com/rabbitmq/amqp091-go"
)

// bootTimeout bounds one start; a loaded CI machine can take several times the usual boot.
const bootTimeout = 90 * time.Second

// Server is one RabbitMQ node.
type Server struct {
	t      testing.TB
	script string
	dir    string
	node   string
	port   int
	env    []string

	proc proctest.Slot
}

// Start boots a fresh node for t and waits until it accepts AMQP connections; the node is
// killed when t ends. It skips t when rabbitmq-server is not installed.
func Start(t testing.TB) *Server {
	t.Helper()
	script := serverScript(t)
	s := &Server{t: t, script: script, dir: t.TempDir()}
	s.node = fmt.Sprintf("herald-test-%d-%x@localhost", os.Getpid(), rand.Uint32())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("rabbitmq node %s log tail:\n%s", s.node, s.logTail(40))
		}
		s.Kill()
	})
	if err := s.prepare(); err != nil {
		t.Fatalf("preparing a RabbitMQ node: %v", err)
	}
	var err error
	for range 3 { // another process may take a free port between choosing and binding it
		s.port = proctest.FreePort()
		s.env = s.environment(proctest.FreePort())
		began := time.Now()
		if err = s.start(); err == nil {
			t.Logf("rabbitmq node %s on %s started in %s", s.node, s.Addr(), time.Since(began).Round(10*time.Millisecond))
			return s
		}
	}
	t.Fatalf("starting a RabbitMQ node: %v", err)
	return nil
}

// serverScript finds the rabbitmq-server script itself. Debian's /usr/sbin/rabbitmq-server is
// a wrapper that changes to /var/lib/rabbitmq and, for root, switches to the rabbitmq user,
// which could not write a test's temporary directory; the script it runs sits beside it.
func serverScript(t testing.TB) string {
	p, err := exec.LookPath("rabbitmq-server")
	if err != nil {
		t.Skipf("rabbitmq-server is not installed (%v): the tests that stop and restart a broker need their own RabbitMQ node", err)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatalf("resolving %s: %v", p, err)
	}
	if filepath.Base(real) == "rabbitmq-script-wrapper" {
		return filepath.Join(filepath.Dir(real), "rabbitmq-server")
	}
	return real
}

// prepare writes the files the node reads instead of the machine's: an empty environment
// file (Debian's names the node rabbit@localhost), a configuration and an empty plugin list.
func (s *Server) prepare() error {
	files := map[string]string{
		"rabbitmq-env.conf": "",
		// Tests fill disks and memory less than production; the defaults' 50 MB disk alarm
		// would block publishers on a nearly full temporary file system.
		"rabbitmq.conf":   "disk_free_limit.absolute = 1MB\nlog.file.level = info\n",
		"enabled_plugins": "[].\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(s.dir, name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// environment is the node's: the caller's, less any RABBITMQ_* or ERL_* setting, plus its
// own names, ports and paths. HOME holds the node's Erlang cookie, which rabbitmqctl reads.
func (s *Server) environment(distPort int) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RABBITMQ_") && !strings.HasPrefix(kv, "ERL_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env,
		"HOME="+s.dir,
		"RABBITMQ_NODENAME="+s.node,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(s.port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPort),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(s.dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(s.dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(s.dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(s.dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(s.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(s.dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(s.dir, "rabbitmq.pid"),
		// Distribution, like AMQP, on loopback only.
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
}

func (s *Server) start() error {
	out, err := os.OpenFile(filepath.Join(s.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(s.script)
	cmd.Dir = s.dir
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = out, out
	// A group of its own, so that Kill reaches the Erlang VM the script starts as well.
	proc, err := proctest.Start(cmd, true)
	if err != nil {
		return err
	}
	s.proc.Set(proc)
	// Ready when an AMQP login succeeds: the port opens only near the end of the boot, but a
	// login is the proof.
	err = proctest.Await(proc.Exited(), bootTimeout, func() error {
		conn, err := amqp.DialConfig(s.URL(), amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if err != nil {
		s.Kill()
		return fmt.Errorf("rabbitmq node %s on %s: %w; log:\n%s", s.node, s.Addr(), err, s.logTail(15))
	}
	return nil
}

// Addr is the host:port of the AMQP listener.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is the amqp:// URL of the node, with guest's credentials.
func (s *Server) URL() string { return "amqp://guest:guest@" + s.Addr() + "/" }

// Node is the Erlang node name, for rabbitmqctl -n.
func (s *Server) Node() string { return s.node }

// Stop shuts the node down gracefully, as an operator's stop does (clients see their
// connections closed by the broker), and returns once the process is gone and the port closed.
func (s *Server) Stop() {
	s.t.Helper()
	s.proc.Stop(syscall.SIGTERM, 30*time.Second)
	s.waitClosed()
}

// Kill ends the node at once with SIGKILL, as a crash does: clients see their connections
// reset. Persistent messages already confirmed survive; Restart recovers them. The signal goes
// to the process group, so that it reaches the Erlang VM the script started (SIGTERM goes to
// the script, which turns it into a graceful stop of the VM).
func (s *Server) Kill() {
	s.proc.Stop(syscall.SIGKILL, 30*time.Second)
	s.waitClosed()
}

// waitClosed waits until nothing accepts connections on the AMQP port.
func (s *Server) waitClosed() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond)
		if err != nil {
			return
		}
		_ = c.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart boots the stopped node again on the same port with the same data, and waits until it
// accepts AMQP connections. A node still running is stopped first.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	for range 3 { // the distribution port of the old VM may linger for a moment
		began := time.Now()
		if err = s.start(); err == nil {
			s.t.Logf("rabbitmq node %s restarted in %s", s.node, time.Since(began).Round(10*time.Millisecond))
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	s.t.Fatalf("restarting RabbitMQ node %s: %v", s.node, err)
}

// Ctl runs rabbitmqctl against the node and returns its output.
func (s *Server) Ctl(args ...string) (string, error) {
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(ctl); err == nil && filepath.Base(real) == "rabbitmq-script-wrapper" {
		ctl = filepath.Join(filepath.Dir(real), "rabbitmqctl")
	}
	cmd := exec.Command(ctl, append([]string{"-n", s.node}, args...)...)
	cmd.Dir, cmd.Env = s.dir, s.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), errors.Join(err, errors.New(strings.TrimSpace(string(out))))
	}
	return string(out), nil
}

// logTail is the end of the node's log, for failures.
func (s *Server) logTail(n int) string {
	for _, f := range []string{filepath.Join("log", s.node+".log"), "stdout.log"} {
		if t, ok := proctest.FileTail(filepath.Join(s.dir, f), n); ok {
			return t
		}
	}
	return "(no log)"
}
