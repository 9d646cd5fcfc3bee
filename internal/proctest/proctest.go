// Package proctest holds what tests that start servers and processes share: a free port to
// start them on and a buffer that captures what they, or background goroutines, write.
package proctest

import (
	"bytes"
	"net"
	"strings"
	"sync"
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
func (o *Output) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(o.String(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
