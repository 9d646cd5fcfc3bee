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
)

// BenchmarkDrainProcess drains the prefilled messages with the herald binary, started as an
// operator starts it (reference environment only, default settings), and reports its rate and
// peak resident memory (VmHWM).
func BenchmarkDrainProcess(b *testing.B) {
	bin, err := fixture.BuildHerald(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	srv := redistest.Standalone(b)
	n := messages()
	ctx := context.Background()
	c, err := redisq.Connect(ctx, srv.URL(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var rate, rss float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		recv, err := fixture.NewReceiver(n)
		if err != nil {
			b.Fatal(err)
		}
		prefix := fmt.Sprintf("proc%d", i)
		keys := redisq.NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
		if _, err := fixture.Fill(ctx, c, keys.Queue, recv.URL()+"/in", 0, n, 300); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin, "deliver")
		cmd.Env = []string{"REDIS_SERVER_URL=" + srv.URL(), "TOPIC_PREFIX=" + prefix}
		b.StartTimer()
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		for recv.Total() < int64(n) {
			time.Sleep(2 * time.Millisecond)
		}
		took := time.Since(start)
		b.StopTimer()
		peak := fixture.PeakRSS(cmd.Process.Pid)
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		_ = recv.Close()
		rate = float64(n) / took.Seconds()
		rss = float64(peak) / (1 << 20)
		b.Logf("herald deliver process: %d messages in %s: %.0f msgs/s, peak RSS %.1f MiB", n, took.Round(time.Millisecond), rate, rss)
	}
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(rss, "peak-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}
