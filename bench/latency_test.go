package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/deliver"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

// latencySeconds is how long each open-loop run offers load (HERALD_BENCH_SECONDS, default 10).
func latencySeconds() time.Duration {
	if s, err := strconv.Atoi(os.Getenv("HERALD_BENCH_SECONDS")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 10 * time.Second
}

// latencyWarmup is how long each run offers load before the measured span starts
// (HERALD_BENCH_WARMUP_SECONDS, default 1; 0 measures from the first message). Its messages must
// arrive like the rest, but their latencies are not counted: the first tens of milliseconds of a
// run are a cold start (connections to the receiver being opened, the receiver starting a
// goroutine for each), a cost a deliverer that has been running does not pay again. Open-loop
// tools leave out a warm-up for the same reason (wrk2 calibrates for 10 s first). The floor and
// Herald get the same warm-up.
func latencyWarmup() time.Duration {
	if s, err := strconv.Atoi(os.Getenv("HERALD_BENCH_WARMUP_SECONDS")); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	return time.Second
}

// latencyRates are the offered rates (HERALD_BENCH_RATES, comma-separated; default 5000,20000).
func latencyRates() []int {
	v := os.Getenv("HERALD_BENCH_RATES")
	if v == "" {
		return []int{5000, 20000}
	}
	var out []int
	for _, f := range splitComma(v) {
		if n, err := strconv.Atoi(f); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// produce RPUSHes rate messages a second for d onto queue, open loop: every millisecond it sends
// what the schedule says is due, whatever the consumer does. sent[id] is when id was pushed.
func produce(ctx context.Context, c rueidis.Client, queue, url string, rate int, d time.Duration) ([]int64, error) {
	n := int(float64(rate) * d.Seconds())
	sent := make([]int64, n)
	headers := []engine.Header{{Name: []byte("Content-Type"), Value: []byte("application/json")}}
	var body, entry []byte
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	next := 0
	for next < n {
		<-tick.C
		due := min(int(float64(rate)*time.Since(start).Seconds()), n)
		if due <= next {
			continue
		}
		elems := make([]string, 0, due-next)
		for id := next; id < due; id++ {
			body = fixture.Payload(body[:0], id, 300)
			entry = acapy.AppendOutbound(entry[:0], url, headers, body)
			elems = append(elems, string(entry))
		}
		now := time.Now().UnixNano()
		if err := c.Do(ctx, c.B().Rpush().Key(queue).Element(elems...).Build()).Error(); err != nil {
			return sent, err
		}
		for id := next; id < due; id++ {
			sent[id] = now
		}
		next = due
	}
	return sent, nil
}

// percentiles of latencies in ms: p50, p99, p999 and how many never arrived.
type percentiles struct {
	p50, p99, p999 float64
	missing        int
}

// summarize counts as missing every message that never arrived, and takes the percentiles of
// those from id skip on (the ones before were the warm-up).
func summarize(sent []int64, skip int, arrived func(id int) int64) percentiles {
	lat := make([]float64, 0, len(sent))
	missing := 0
	for id, s := range sent {
		a := arrived(id)
		if a == 0 {
			missing++
			continue
		}
		if id >= skip {
			lat = append(lat, float64(a-s)/1e6)
		}
	}
	slices.Sort(lat)
	at := func(q float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(int(q*float64(len(lat))), len(lat)-1)]
	}
	return percentiles{at(0.50), at(0.99), at(0.999), missing}
}

// BenchmarkLatency offers fixed rates open loop and reports enqueue-to-arrival percentiles for
// Herald (enqueue to the receiver) beside the floor measured in the same run: the same producer
// into a list that a bare blocking-pop loop drains (Redis and producer only, no delivery). The
// loop pops with BLMPOP COUNT 1000 rather than one BLPOP per message: on this machine one round
// trip per message cannot keep up with 20,000 msgs/s, and a floor that falls behind measures
// nothing. Each run offers the rate for a warm-up (latencyWarmup) before the span it measures.
func BenchmarkLatency(b *testing.B) {
	srv := redistest.Standalone(b)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	c, err := redisq.Connect(ctx, srv.URL(), log)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	d, warm := latencySeconds(), latencyWarmup()
	var points []latencyPoint
	for _, rate := range latencyRates() {
		b.Run(strconv.Itoa(rate)+"/s", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				// Floor and Herald alternate, so that a disturbance from outside (the machine is
				// shared) falls on one round, and the median round is what is reported.
				var rounds []latencyPoint
				for r := range benchRounds() {
					floor := floorRun(b, c, fmt.Sprintf("floor%d_%d_%d", rate, i, r), rate, warm, d)
					her := heraldRun(b, c, srv.URL(), fmt.Sprintf("lat%d_%d_%d", rate, i, r), rate, warm, d, log)
					fmt.Printf("latency at %d msgs/s for %s after %s of warm-up, round %d: floor (blocking-pop loop) p50 %.2f p99 %.2f p999 %.2f ms, %d left behind; herald p50 %.2f p99 %.2f p999 %.2f ms, %d left behind; p99 above floor %.2f ms\n",
						rate, d, warm, r+1, floor.p50, floor.p99, floor.p999, floor.missing, her.p50, her.p99, her.p999, her.missing, her.p99-floor.p99)
					rounds = append(rounds, latencyPoint{rate: rate, floor: floor, herald: her})
					if her.missing > 0 {
						b.Errorf("%d messages left behind", her.missing)
					}
				}
				slices.SortFunc(rounds, func(x, y latencyPoint) int {
					return cmp.Compare(x.herald.p99-x.floor.p99, y.herald.p99-y.floor.p99)
				})
				med := rounds[len(rounds)/2]
				if len(rounds) > 1 {
					fmt.Printf("latency at %d msgs/s, median of %d rounds: floor p99 %.2f ms, herald p50 %.2f p99 %.2f ms; p99 above floor %.2f ms\n",
						rate, len(rounds), med.floor.p99, med.herald.p50, med.herald.p99, med.herald.p99-med.floor.p99)
				}
				points = append(points, med)
				b.ReportMetric(med.herald.p99, "p99-ms")
				b.ReportMetric(med.floor.p99, "floor-p99-ms")
				b.ReportMetric(med.herald.p99-med.floor.p99, "p99-above-floor-ms")
				b.ReportMetric(0, "ns/op")
				if limit, err := strconv.ParseFloat(os.Getenv("HERALD_BENCH_MAX_P99_MS"), 64); err == nil && med.herald.p99 > limit {
					b.Errorf("p99 %.2f ms at %d msgs/s, above the limit of %.0f ms", med.herald.p99, rate, limit)
				}
			}
		})
	}
	// make bench asks for the chart BENCHMARKS.md shows.
	if path := os.Getenv("HERALD_BENCH_CHART"); path != "" && len(points) > 0 {
		if err := writeLatencyChart(path, points); err != nil {
			b.Fatal(err)
		}
		fmt.Println("latency chart written to", path)
	}
}

func floorRun(b *testing.B, c rueidis.Client, queue string, rate int, warm, d time.Duration) percentiles {
	n := int(float64(rate) * (warm + d).Seconds())
	popped := make([]int64, n)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m := engine.GetMessage()
		for ctx.Err() == nil {
			kv, err := c.Do(ctx, c.B().Blmpop().Timeout(1).Numkeys(1).Key(queue).Left().Count(1000).Build()).AsLMPop()
			if err != nil {
				continue
			}
			now := time.Now().UnixNano()
			for _, v := range kv.Values {
				m.Raw = append(m.Raw[:0], v...)
				if acapy.DecodeOutbound(m) == nil {
					if id := fixture.PayloadID(m.Payload); id >= 0 && id < n {
						popped[id] = now
					}
				}
			}
		}
	}()
	sent, err := produce(context.Background(), c, queue, "http://127.0.0.1:1/floor", rate, warm+d)
	if err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if l, _ := c.Do(context.Background(), c.B().Llen().Key(queue).Build()).AsInt64(); l == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	stop()
	<-done
	return summarize(sent, int(float64(rate)*warm.Seconds()), func(id int) int64 { return popped[id] })
}

func heraldRun(b *testing.B, c rueidis.Client, redisURL, prefix string, rate int, warm, d time.Duration, log *slog.Logger) percentiles {
	n := int(float64(rate) * (warm + d).Seconds())
	recv, err := fixture.NewReceiver(n)
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	cfg, err := deliverConfig(map[string]string{"REDIS_SERVER_URL": redisURL, "TOPIC_PREFIX": prefix})
	if err != nil {
		b.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- deliver.Run(ctx, cfg, log) }()
	time.Sleep(300 * time.Millisecond) // connected and waiting, as in production
	sent, err := produce(context.Background(), c, prefix+"_outbound", recv.URL()+"/in", rate, warm+d)
	if err != nil {
		b.Fatal(err)
	}
	recv.WaitAll(10 * time.Second)
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return summarize(sent, int(float64(rate)*warm.Seconds()), recv.Arrived)
}
