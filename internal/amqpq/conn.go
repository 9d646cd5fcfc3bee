package amqpq

import (
	"net"
	"sync"
	"time"
)

// coalescing is the most a coalescingConn holds before Write waits for the socket: hundreds of
// messages or thousands of acknowledgments, little beside a prefetch window's bodies.
const coalescing = 256 << 10

// coalescingConn gathers the writes of a connection and sends them in as few system calls as
// the socket allows. amqp091 flushes its buffer after every message and every acknowledgment,
// under the connection's send lock, so that each publish or ack costs a write(2) (a third of
// the Publisher's CPU time in a profile) and a packet for the broker to read, while every
// other channel of the connection waits. Here Write only appends to a buffer and wakes a
// goroutine that writes whatever accumulated meanwhile, so the frames queued while one
// write(2) runs leave together in the next.
//
// Nothing that matters is lost: a Write error ends the connection just as a failed write(2)
// would, only one call later, and whatever was not on the wire when the connection died is
// what the broker never saw either way: unconfirmed publishes, unacknowledged deliveries.
type coalescingConn struct {
	net.Conn

	mu      sync.Mutex
	wake    sync.Cond // the flusher waits for data, writers for room
	pending []byte
	spare   []byte // the buffer of the write in progress, reused for the next batch
	err     error  // why writing stopped; Write reports it from then on
	closing bool
	done    chan struct{} // closed when the flusher returned
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c, done: make(chan struct{})}
	cc.wake.L = &cc.mu
	go cc.flush()
	return cc
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closing && len(c.pending) >= coalescing {
		c.wake.Wait()
	}
	if c.closing {
		return 0, net.ErrClosed
	}
	if c.err != nil {
		return 0, c.err
	}
	if len(c.pending) == 0 {
		c.wake.Broadcast()
	}
	c.pending = append(c.pending, p...)
	return len(p), nil
}

func (c *coalescingConn) flush() {
	defer close(c.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for len(c.pending) == 0 && c.err == nil && !c.closing {
			c.wake.Wait()
		}
		if len(c.pending) == 0 || c.err != nil {
			return
		}
		b := c.pending
		c.pending = c.spare[:0]
		c.mu.Unlock()
		_, err := c.Conn.Write(b)
		c.mu.Lock()
		c.spare = b
		if err != nil {
			c.err = err
		}
		c.wake.Broadcast()
	}
}

// Close sends what is pending, giving the socket a second at most, then closes it. amqp091
// closes after the broker answered its connection.close, so normally nothing is pending.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	c.closing = true
	c.wake.Broadcast()
	c.mu.Unlock()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	<-c.done
	c.mu.Lock()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.wake.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}
