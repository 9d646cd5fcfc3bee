// Package redistest starts real redis-server processes on free loopback ports for tests: a fresh
// standalone server, or a Redis Cluster of several nodes. Servers can be stopped and restarted on
// the same port to simulate outages. Nothing here mocks Redis.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/proctest"
	"github.com/redis/rueidis"
)

// Option adjusts a server before it starts.
type Option func(*Server)

// AppendOnly turns on AOF persistence, so that a restart keeps the data.
func AppendOnly() Option { return func(s *Server) { s.args = append(s.args, "--appendonly", "yes") } }

// Args adds redis-server arguments.
func Args(a ...string) Option { return func(s *Server) { s.args = append(s.args, a...) } }

func clusterNode() Option { return func(s *Server) { s.bus = -1 } }

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	port int
	bus  int // cluster bus port; 0 when not a cluster node
	dir  string
	args []string

	proc proctest.Slot
}

func binary(t testing.TB) string {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not installed: run scripts/services.sh redis (%v)", err)
	}
	return p
}

// Standalone starts a fresh server for t, stopped when t ends.
func Standalone(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := newServer(t, t.TempDir(), opts...)
	s.startOrFail()
	return s
}

func newServer(t testing.TB, dir string, opts ...Option) *Server {
	s := &Server{t: t, dir: dir, args: []string{"--save", "", "--appendonly", "no"}}
	for _, o := range opts {
		o(s)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("redis-server :%d log tail:\n%s", s.port, s.logTail(30))
		}
		s.Kill()
	})
	return s
}

func (s *Server) startOrFail() {
	s.t.Helper()
	var err error
	for range 5 { // another process may take the free port between choosing and binding it
		s.port = proctest.FreePort()
		if s.bus != 0 {
			s.bus = proctest.FreePort()
		}
		if err = s.start(); err == nil {
			return
		}
	}
	s.t.Fatalf("starting redis-server: %v", err)
}

func (s *Server) start() error {
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"), "--daemonize", "no",
	}, s.args...)
	if s.bus != 0 {
		// Redis puts the bus at port+10000 unless told otherwise, which fails for ports above
		// 55535; a free port chosen here does not.
		args = append(args, "--cluster-port", strconv.Itoa(s.bus))
	}
	proc, err := proctest.Start(exec.Command(binary(s.t), args...), false)
	if err != nil {
		return err
	}
	s.proc.Set(proc)
	if err := WaitReady(s.Addr(), 10*time.Second); err != nil {
		s.Kill()
		return fmt.Errorf("%w; log:\n%s", err, s.logTail(10))
	}
	return nil
}

// PID is the server's process id, 0 when it is stopped.
func (s *Server) PID() int {
	return s.proc.PID()
}

// Addr is host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Stop shuts the server down with SIGTERM and waits until it is gone.
func (s *Server) Stop() { s.proc.Stop(syscall.SIGTERM, 10*time.Second) }

// Kill stops the server with SIGKILL.
func (s *Server) Kill() { s.proc.Stop(syscall.SIGKILL, 10*time.Second) }

// Start restarts a stopped server on the same port and directory.
func (s *Server) Start() {
	s.t.Helper()
	var err error
	for range 50 { // the old socket may linger for a moment
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restarting redis-server on %s: %v", s.Addr(), err)
}

func (s *Server) logTail(n int) string {
	if t, ok := proctest.FileTail(filepath.Join(s.dir, "redis.log"), n); ok {
		return t
	}
	return "(no log)"
}

// ClusterServers is a Redis Cluster of primaries without replicas.
type ClusterServers struct {
	nodes []*Server
}

// Cluster starts an n-node cluster (n >= 3), stopped when t ends. opts apply to every node
// (AppendOnly, for a node that must keep its data across a restart).
func Cluster(t testing.TB, n int, opts ...Option) *ClusterServers {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redis-cli is not installed: run scripts/services.sh redis (%v)", err)
	}
	c := &ClusterServers{}
	addrs := make([]string, n)
	for i := range n {
		s := newServer(t, t.TempDir(), append([]Option{Args("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000"), clusterNode()}, opts...)...)
		s.startOrFail()
		c.nodes = append(c.nodes, s)
		addrs[i] = s.Addr()
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, a := range addrs {
		for {
			info, err := Do(a, "CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s not ok after 20 s: %v %s", a, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// Addrs lists the nodes' host:port.
func (c *ClusterServers) Addrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.Addr()
	}
	return out
}

// URL is the redis:// URL of the first node; cluster clients discover the others from it.
func (c *ClusterServers) URL() string { return c.nodes[0].URL() }

// Node returns node i, to stop or restart it.
func (c *ClusterServers) Node(i int) *Server { return c.nodes[i] }

// WaitReady waits until addr answers PING.
func WaitReady(addr string, timeout time.Duration) error {
	err := proctest.Await(nil, timeout, func() error {
		r, err := Do(addr, "PING")
		if err == nil && r != "PONG" {
			return fmt.Errorf("PING answered %q", r)
		}
		if err != nil && strings.HasPrefix(err.Error(), "NOAUTH") {
			return nil // a server asking for a password is up
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("redis at %s: %w", addr, err)
	}
	return nil
}

// Do sends one command over a fresh connection and renders the reply as text: simple strings,
// bulk strings and integers as themselves, arrays one element per line, nil as "(nil)".
func Do(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(conn))
}

func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "(nil)", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, _ := strconv.Atoi(line[1:])
		parts := make([]string, 0, max(n, 0))
		for range n {
			p, err := readReply(r)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, "\n"), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// Client connects a rueidis client to url for the length of the test, with client-side caching
// off so that every read goes to the server.
func Client(t testing.TB, url string) rueidis.Client {
	t.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}
