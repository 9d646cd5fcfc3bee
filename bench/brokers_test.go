package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/amqpq"
	"github.com/heraldhq/herald/internal/broker"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/kafkaq/kafkatest"
	"github.com/heraldhq/herald/internal/natsq/natstest"
	"github.com/heraldhq/herald/internal/redistest"
)

// brokerMessages is how many messages one broker drain delivers (HERALD_BENCH_BROKER_N, default
// 50,000) and how many events one routing run posts.
func brokerMessages() int {
	if n, err := strconv.Atoi(os.Getenv("HERALD_BENCH_BROKER_N")); err == nil && n > 0 {
		return n
	}
	return 50000
}

// BenchmarkBrokers measures, for Redis and for each other broker in the same run, how fast
// `herald deliver --source` drains prefilled 300-byte outbound entries into the local receiver,
// and how fast `herald events` routes NDJSON events into that broker, and prints each beside
// Redis's. NATS is a server of the benchmark's own (its JetStream store on disk, as the shared
// one), RabbitMQ the one on 5672, Kafka an in-process kfake cluster, which shares this process's
// CPU with the in-process deliverer.
func BenchmarkBrokers(b *testing.B) {
	bin, err := fixture.BuildHerald(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	rs := redistest.Standalone(b)
	ns := natstest.Start(b)
	kinds := []struct {
		kind string
		url  string
		pid  func() int // the broker's process, 0 for kfake (it runs in this one)
	}{
		{config.KindRedis, rs.URL(), rs.PID},
		{config.KindNATS, ns.URL(), ns.PID},
		{config.KindKafka, "kafka://" + kafkatest.Start(b).Addr(), func() int { return 0 }},
		{config.KindAMQP, "amqp://guest:guest@127.0.0.1:5672/", rabbitPID},
	}
	n := brokerMessages()
	drains, routes := map[string]cost{}, map[string]cost{}
	for _, k := range kinds {
		b.Run("drain/"+k.kind, func(b *testing.B) { drains[k.kind] = brokerDrain(b, k.kind, k.url, k.pid(), n) })
		b.Run("events/"+k.kind, func(b *testing.B) { routes[k.kind] = brokerEvents(b, bin, k.kind, k.url, k.pid(), n) })
	}
	fmt.Println("CPU is each process's user + system time over the run divided by the messages or events;")
	fmt.Println("kfake runs inside the benchmark's process, so its own CPU is not told apart.")
	for _, k := range kinds {
		d, e := drains[k.kind], routes[k.kind]
		fmt.Printf("%-6s drain %7.0f msgs/s (%.2f of Redis), broker %s/msg; events routed %7.0f events/s (%.2f of Redis), broker %s/event, herald events %.1f µs/event\n",
			k.kind, d.rate, ratio(d.rate, drains[config.KindRedis].rate), micros(d.broker),
			e.rate, ratio(e.rate, routes[config.KindRedis].rate), micros(e.broker), e.herald)
	}
}

// cost is one measured run: its rate, and the CPU microseconds per message or event that the
// broker (-1: not measured) and the herald events process spent.
type cost struct {
	rate, broker, herald float64
}

func micros(us float64) string {
	if us < 0 {
		return "   n/a"
	}
	return fmt.Sprintf("%4.1f µs", us)
}

// rabbitPID finds the RabbitMQ node on this machine (its Erlang VM, beam.smp), 0 if none.
func rabbitPID() int {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if comm, _ := os.ReadFile("/proc/" + d.Name() + "/comm"); strings.TrimSpace(string(comm)) == "beam.smp" {
			if cmdline, _ := os.ReadFile("/proc/" + d.Name() + "/cmdline"); strings.Contains(string(cmdline), "rabbit") {
				return pid
			}
		}
	}
	return 0
}

// perItem is cpu, the CPU process pid spent on items, in microseconds per item; -1 when pid is
// 0 (not measured).
func perItem(pid int, cpu time.Duration, items int) float64 {
	if pid == 0 {
		return -1
	}
	return float64(cpu.Microseconds()) / float64(items)
}

// brokerDrain prefills n entries for a fresh queue and times the deliverer emptying it.
func brokerDrain(b *testing.B, kind, url string, pid, n int) cost {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	prefix := fmt.Sprintf("bench%d", rand.Uint32())
	queue := prefix + "_outbound"
	bk, err := config.ParseBroker("bench", url)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	p, err := broker.OpenPublisher(ctx, bk, broker.PublisherOptions{Queues: []string{queue}}, log)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	if kind == config.KindAMQP {
		defer func() { _ = amqpq.Remove(url, []string{queue}) }()
	}
	var total, cpu time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		recv, err := fixture.NewReceiver(n)
		if err != nil {
			b.Fatal(err)
		}
		dest, key := queue, ""
		if kind == config.KindAMQP {
			dest, key = "", queue
		}
		if err := fixture.Publish(ctx, p, dest, key, recv.URL()+"/in", 0, n, 300); err != nil {
			b.Fatal(err)
		}
		env := map[string]string{"TOPIC_PREFIX": prefix, "HERALD_SOURCE": url}
		if kind == config.KindRedis {
			env = map[string]string{"TOPIC_PREFIX": prefix, "REDIS_SERVER_URL": url}
		}
		cfg, err := deliverConfig(env)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		cpu0 := fixture.CPUTime(pid)
		took := timedDrain(b, cfg, log, recv, n)
		b.StopTimer()
		cpu += fixture.CPUTime(pid) - cpu0
		total += took
		_, _, dups := recv.Tally()
		b.Logf("%s: drained %d messages in %s: %.0f msgs/s (%d duplicates)", kind, n, took.Round(time.Millisecond), float64(n)/took.Seconds(), dups)
		_ = recv.Close()
	}
	rate := float64(n*b.N) / total.Seconds()
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(0, "ns/op")
	return cost{rate: rate, broker: perItem(pid, cpu, n*b.N)}
}

// brokerEvents runs herald events with the broker as its sink and posts n events to it.
func brokerEvents(b *testing.B, bin, kind, url string, pid, n int) cost {
	env := []string{"HERALD_SINK=" + url}
	if kind == config.KindRedis {
		env = []string{"REDIS_SERVER_URL=" + url}
	}
	if kind == config.KindNATS {
		env = append(env, fmt.Sprintf("HERALD_NATS_STREAM=bench%d", rand.Uint32()))
	}
	if kind == config.KindAMQP {
		prefix := fmt.Sprintf("bench%d_", rand.Uint32())
		env = append(env, "HERALD_EXCHANGE_PREFIX="+prefix)
		var exchanges []string
		for w := range 10 {
			for _, route := range []string{"acapy-record-with-state-wallet-", "acapy-record-wallet-"} {
				exchanges = append(exchanges, fmt.Sprintf("%s%s%d", prefix, route, w))
			}
		}
		defer func() { _ = amqpq.Remove(url, nil, exchanges...) }()
	}
	addr, events := startEvents(b, bin, env...)
	total := n / ndjsonBatch * ndjsonBatch
	var c cost
	for i := 0; i < b.N; i++ {
		broker0, herald0 := fixture.CPUTime(pid), fixture.CPUTime(events)
		took := postNDJSON(b, addr, total)
		c = cost{rate: float64(total) / took.Seconds(), broker: perItem(pid, fixture.CPUTime(pid)-broker0, total),
			herald: perItem(events, fixture.CPUTime(events)-herald0, total)}
		b.Logf("%s: %d events (%d entries) routed in %s: %.0f events/s", kind, total, 2*total, took.Round(time.Millisecond), c.rate)
	}
	b.ReportMetric(c.rate, "events/s")
	b.ReportMetric(0, "ns/op")
	return c
}
