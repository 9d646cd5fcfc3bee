package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/callbacks"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/kafkaq/kafkatest"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"
)

// BenchmarkCallbacks measures herald callbacks from Kafka records to callbacks answered: N
// events over 1,000 transactions prefilled in an in-process kfake broker, delivered to the
// business server (no signature) and, separately, as client callbacks signed with Ed25519.
// kfake runs in this process, so the CPU per event includes the broker's.
func BenchmarkCallbacks(b *testing.B) {
	n := 20000
	if v, err := strconv.Atoi(os.Getenv("HERALD_BENCH_CALLBACKS")); err == nil && v > 0 {
		n = v
	}
	var got atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { got.Add(1) }}
	go srv.Serve(ln)
	defer srv.Shutdown()
	url := "http://" + ln.Addr().String()
	for _, c := range []struct {
		name string
		cfg  config.Callbacks
	}{
		{"business-server", config.Callbacks{BusinessServer: true, BaseURL: url, AuthType: "none"}},
		{"client-ed25519", config.Callbacks{ClientCallbacks: true, SigningSeed: "SDHOAMBNLGCE2MV5ZKIVZAQD3VCLGP53P3OBSBI6UN5L5XZI5TKHFQL4",
			Clients: []config.CallbackClient{{Name: "wallet", URLs: map[string]string{"sep24": url + "/sep24"}}}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			k := kafkatest.Start(b, "TRANSACTION")
			prefill(b, k.Seeds(), n)
			cfg := c.cfg
			cfg.Seeds, cfg.Topic = k.Seeds(), "TRANSACTION"
			cfg.Timeout, cfg.Attempts, cfg.BackoffBase, cfg.BackoffCap, cfg.Lanes = 10*time.Second, 5, 100*time.Millisecond, time.Second, 256
			got.Store(0)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			cpu0 := fixture.CPUTime(os.Getpid())
			start := time.Now()
			go func() { done <- callbacks.Run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
			for got.Load() < int64(n) {
				if time.Since(start) > 5*time.Minute {
					b.Fatalf("%d of %d callbacks after 5 minutes", got.Load(), n)
				}
				time.Sleep(time.Millisecond)
			}
			took := time.Since(start)
			cpu := fixture.CPUTime(os.Getpid()) - cpu0
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			rate := float64(n) / took.Seconds()
			b.ReportMetric(rate, "events/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/event")
			fmt.Printf("callbacks %s: %d events in %s: %.0f events/s, %.1f µs of CPU per event (kfake and the receiver included)\n",
				c.name, n, took.Round(time.Millisecond), rate, float64(cpu.Microseconds())/float64(n))
		})
	}
}

// prefill writes n transaction events over 1,000 transactions of client "wallet", SEP-24.
func prefill(b *testing.B, seeds []string, n int) {
	p, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	recs := make([]*kgo.Record, 0, 1000)
	for i := range n {
		v := fmt.Sprintf(`{"type":"transaction_status_changed","id":"ev-%d","sep":"24","transaction":{"id":"tx-%d","sep":"24","kind":"deposit","status":"pending_anchor","client_name":"wallet","amount_in":{"amount":"%d.00","asset":"stellar:USDC:GA5ZSEJYB37JRC5AVCIA5MOP4RHTM335X2KGX3IHOJAPP5RE34K4KZVN"},"started_at":"2026-12-05T12:00:00Z","message":"step %d"}}`,
			i, i%1000, i, i)
		recs = append(recs, &kgo.Record{Topic: "TRANSACTION", Key: []byte(strconv.Itoa(i)), Value: []byte(v)})
		if len(recs) == cap(recs) || i == n-1 {
			if err := p.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
				b.Fatal(err)
			}
			recs = recs[:0]
		}
	}
}
