package redisq

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/redis/rueidis"
)

// acker removes delivered entries from the in-flight hash in the background, many per HDEL,
// so that a worker does not wait for Redis after each delivery. An acknowledgment that a crash
// loses leaves the entry in flight: it is delivered again, never lost.
type acker struct {
	c        rueidis.Client
	inflight string
	log      *slog.Logger

	mu      sync.Mutex
	pending []byte // sequence numbers in decimal, back to back
	ends    []int  // where each number in pending ends
	wake    chan struct{}
	flushed *sync.Cond // broadcast after every flush, for Flush callers
	inFlush bool
}

const maxAckBatch = 512

// ackLinger is how long the acker lets acknowledgments gather after the first one wakes it: a
// burst of deliveries then costs one HDEL instead of several, for at most this much more
// redelivery after a crash.
const ackLinger = time.Millisecond

func newAcker(c rueidis.Client, inflight string, log *slog.Logger) *acker {
	a := &acker{c: c, inflight: inflight, log: log, wake: make(chan struct{}, 1)}
	a.flushed = sync.NewCond(&a.mu)
	return a
}

// add queues the in-flight entry seq for removal.
func (a *acker) add(seq uint64) {
	a.mu.Lock()
	a.pending = strconv.AppendUint(a.pending, seq, 10)
	a.ends = append(a.ends, len(a.pending))
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// run flushes until ctx ends; the caller then calls flush once more for what is left.
func (a *acker) run(ctx context.Context) {
	var buf []byte
	var ends []int
	var args []string
	var backoff time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		}
		a.mu.Lock()
		few := len(a.ends) < maxAckBatch
		a.mu.Unlock()
		if few {
			engine.Sleep(ctx, ackLinger)
		}
		for {
			a.mu.Lock()
			if len(a.ends) == 0 {
				a.mu.Unlock()
				break
			}
			// Swap buffers: workers keep appending to the other one while this one is sent.
			buf, a.pending = a.pending, buf[:0]
			ends, a.ends = a.ends, ends[:0]
			a.inFlush = true
			a.mu.Unlock()

			for err := a.send(ctx, buf, ends, &args); err != nil; err = a.send(ctx, buf, ends, &args) {
				if ctx.Err() != nil {
					// Put them back for the final flush.
					a.mu.Lock()
					a.pending = append(a.pending, buf...)
					a.ends = appendShifted(a.ends, ends, len(a.pending)-len(buf))
					a.inFlush = false
					a.flushed.Broadcast()
					a.mu.Unlock()
					return
				}
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				a.log.Warn("acknowledging delivered messages failed; retrying", "count", len(ends), "err", err, "retry_in", backoff)
				engine.Sleep(ctx, backoff)
			}
			backoff = 0
			a.mu.Lock()
			a.inFlush = false
			a.flushed.Broadcast()
			a.mu.Unlock()
		}
	}
}

func appendShifted(dst, ends []int, shift int) []int {
	for _, e := range ends {
		dst = append(dst, e+shift)
	}
	return dst
}

// send removes the entries of buf in batches of maxAckBatch.
func (a *acker) send(ctx context.Context, buf []byte, ends []int, args *[]string) error {
	start := 0
	for len(ends) > 0 {
		n := min(len(ends), maxAckBatch)
		*args = (*args)[:0]
		for _, e := range ends[:n] {
			*args = append(*args, rueidis.BinaryString(buf[start:e]))
			start = e
		}
		if err := a.c.Do(ctx, a.c.B().Hdel().Key(a.inflight).Field(*args...).Build()).Error(); err != nil {
			return err
		}
		ends = ends[n:]
	}
	return nil
}

// flush sends whatever is pending now, after the background loop has stopped.
func (a *acker) flush(ctx context.Context) error {
	a.mu.Lock()
	for a.inFlush {
		a.flushed.Wait()
	}
	buf, ends := a.pending, a.ends
	a.pending, a.ends = nil, nil
	a.mu.Unlock()
	var args []string
	return a.send(ctx, buf, ends, &args)
}
