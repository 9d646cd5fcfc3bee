package amqpq

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair is a coalescingConn and the far end of its connection.
func tcpPair(t *testing.T) (*coalescingConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	far := <-accepted
	if far == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { far.Close() })
	return newCoalescingConn(c), far
}

// TestCoalescingConnKeepsEveryByte: writes, small and larger than the buffer, arrive whole and
// in order, and Close sends what is still pending.
func TestCoalescingConnKeepsEveryByte(t *testing.T) {
	t.Parallel()
	cc, far := tcpPair(t)
	var want bytes.Buffer
	for i := range 20000 {
		fmt.Fprintf(&want, "frame %d;", i)
		if i%5000 == 0 {
			want.Write(bytes.Repeat([]byte{'x'}, coalescing+1000))
		}
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(far)
		got <- b
	}()
	rest := want.Bytes()
	for len(rest) > 0 {
		n := bytes.IndexByte(rest, ';') + 1
		if n == 0 {
			n = len(rest)
		}
		if m, err := cc.Write(rest[:n]); err != nil || m != n {
			t.Fatalf("write: %d of %d, %v", m, n, err)
		}
		rest = rest[n:]
	}
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("received %d bytes, not the %d written", len(b), want.Len())
	}
	if _, err := cc.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a write after Close: %v, want net.ErrClosed", err)
	}
}

// TestCoalescingConnReportsFailure: once the connection breaks, writes fail rather than pile up.
func TestCoalescingConnReportsFailure(t *testing.T) {
	t.Parallel()
	cc, far := tcpPair(t)
	defer cc.Close()
	far.Close()
	chunk := make([]byte, 64<<10)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := cc.Write(chunk); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a closed peer kept succeeding")
		}
		time.Sleep(time.Millisecond)
	}
}
