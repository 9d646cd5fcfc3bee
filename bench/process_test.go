package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

// BenchmarkDrainProcess drains the prefilled messages with the herald binary, started as an
// operator starts it (reference environment only, default settings), and reports its rate and
// peak resident memory (VmHWM).
func BenchmarkDrainProcess(b *testing.B) {
	r := newBinaryRig(b)
	n := messages()
	var rate, rss float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		d := r.drain(b, fmt.Sprintf("proc%d", i), n, nil, b.StartTimer)
		b.StopTimer()
		rate = float64(n) / d.took.Seconds()
		rss = float64(d.peak) / (1 << 20)
		b.Logf("herald deliver process: %d messages in %s: %.0f msgs/s, peak RSS %.1f MiB", n, d.took.Round(time.Millisecond), rate, rss)
	}
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(rss, "peak-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}

// binaryDrain is what one drain by the herald binary measured.
type binaryDrain struct {
	took time.Duration // from starting the process to the last message received
	cpu  time.Duration // the process's user+system CPU time by then
	peak int64         // its peak resident memory, bytes
	io   int64         // its read and write system calls by then
}

// binaryRig is the herald binary, built for the benchmark, and a Redis server of its own.
type binaryRig struct {
	bin string
	srv *redistest.Server
	c   rueidis.Client
}

func newBinaryRig(b *testing.B) *binaryRig {
	b.Helper()
	bin, err := fixture.BuildHerald(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	srv := redistest.Standalone(b)
	c, err := redisq.Connect(context.Background(), srv.URL(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return &binaryRig{bin: bin, srv: srv, c: c}
}

// drain fills prefix's queue with n 300-byte messages for a new receiver, starts `herald
// deliver` with the reference environment plus env, and measures it until every message arrived.
// started is called just before the process starts (a benchmark's StartTimer), when not nil.
func (r *binaryRig) drain(b *testing.B, prefix string, n int, env []string, started func()) binaryDrain {
	b.Helper()
	ctx := context.Background()
	recv, err := fixture.NewReceiver(n)
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	keys := redisq.NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
	if _, err := fixture.Fill(ctx, r.c, keys.Queue, recv.URL()+"/in", 0, n, 300); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(r.bin, "deliver")
	cmd.Env = append([]string{"REDIS_SERVER_URL=" + r.srv.URL(), "TOPIC_PREFIX=" + prefix}, env...)
	if started != nil {
		started()
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	for recv.Total() < int64(n) {
		time.Sleep(2 * time.Millisecond)
	}
	d := binaryDrain{took: time.Since(start), cpu: fixture.CPUTime(cmd.Process.Pid), peak: fixture.PeakRSS(cmd.Process.Pid),
		io: fixture.IOCalls(cmd.Process.Pid)}
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	_ = r.c.Do(ctx, r.c.B().Del().Key(keys.Queue, keys.RetrySet, keys.Dead).Build()).Error()
	return d
}
