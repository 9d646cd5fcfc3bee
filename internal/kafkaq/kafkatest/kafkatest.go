// Package kafkatest runs franz-go's in-process Kafka (kfake) for tests: one broker on a free
// loopback port, its state kept in a directory of the test, so that it can be stopped and
// started again on the same address with everything it had stored, the way a broker restarts.
package kafkatest

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Cluster is one kfake broker that survives restarts.
type Cluster struct {
	t      testing.TB
	dir    string
	topics []string

	mu   sync.Mutex
	port int
	c    *kfake.Cluster // nil while stopped
}

// Start starts a broker for t with topics created (one partition each), stopped when t ends.
func Start(t testing.TB, topics ...string) *Cluster {
	t.Helper()
	c := &Cluster{t: t, dir: t.TempDir(), topics: topics}
	if err := c.start(); err != nil {
		t.Fatalf("kafkatest: starting kfake: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// start runs a broker on c.port (a free one the first time) over c.dir. Called with mu held or
// before c is shared.
func (c *Cluster) start() error {
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.DataDir(c.dir), kfake.Ports(c.port)}
	if len(c.topics) > 0 {
		// Only the first start creates them: later ones reload what the directory holds.
		opts = append(opts, kfake.SeedTopics(1, c.topics...))
	}
	// The port was ours a moment ago; a connection of the previous run still closing can hold it
	// briefly, and nothing else should take a port of the ephemeral range that fast.
	deadline := time.Now().Add(5 * time.Second)
	for {
		k, err := kfake.NewCluster(opts...)
		if err == nil {
			c.c = k
			if c.port == 0 {
				_, p, _ := net.SplitHostPort(k.ListenAddrs()[0])
				c.port, _ = strconv.Atoi(p)
			}
			return nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Addr is the broker's host:port, the same across restarts.
func (c *Cluster) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port))
}

// Seeds is Addr as the seed list of a client.
func (c *Cluster) Seeds() []string { return []string{c.Addr()} }

// Kfake is the running broker, for kfake's own controls; nil while stopped.
func (c *Cluster) Kfake() *kfake.Cluster {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c
}

// Stop shuts the broker down, closing every client connection; what it stored stays in its
// directory. Stopping a stopped cluster does nothing.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

// Restart starts the broker again on the same port with what it stored, stopping it first if it
// runs. It fails the test when the broker cannot start, so it belongs on the test's goroutine.
func (c *Cluster) Restart() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
	if err := c.start(); err != nil {
		c.t.Fatalf("kafkatest: restarting kfake on port %d: %v", c.port, err)
	}
}
