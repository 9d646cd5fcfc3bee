package amqpq

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	amqp "github.com/rabbitmq/amqp091-go"
)

// These benchmarks set Queue and Publisher beside bare amqp091 loops doing the same work on the
// same broker, so that the RabbitMQ figures of bench/BenchmarkBrokers can be read against what
// RabbitMQ itself allows on the machine: the bare loops are the ceiling. Each run moves benchN()
// messages (HERALD_BENCH_AMQP_N, default 50,000); run them with -benchtime 1x. Each prints its
// rate and the CPU time RabbitMQ spent per message, which on a small machine is what bounds
// them.

func benchN() int {
	if n, err := strconv.Atoi(os.Getenv("HERALD_BENCH_AMQP_N")); err == nil && n > 0 {
		return n
	}
	return 50000
}

// benchBody is the size of the drain entries of bench/BenchmarkBrokers.
var benchBody = make([]byte, 300)

// fill publishes n persistent entries onto a fresh durable queue, confirmed, and returns the
// queue's name.
func fill(b *testing.B, conn *amqp.Connection, n int) string {
	b.Helper()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	name := fmt.Sprintf("herald.bench.%x", rand.Uint64())
	if err := Declare(ch, name); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c := dial(b)
		defer c.Close()
		if ch, err := c.Channel(); err == nil {
			deleteQueue(ch, name)
		}
	})
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, n))
	for range n {
		if err := ch.Publish("", name, false, false, amqp.Publishing{Body: benchBody, DeliveryMode: amqp.Persistent}); err != nil {
			b.Fatal(err)
		}
	}
	for range n {
		if c := <-confirms; !c.Ack {
			b.Fatal("the broker refused an entry")
		}
	}
	return name
}

// brokerCPU is the CPU time the machine's RabbitMQ nodes (its beam.smp processes) have used,
// 0 where /proc cannot tell.
func brokerCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, p := range stats {
		stat, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(stat, []byte("(beam.smp)")) {
			continue
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 12 {
			user, _ := strconv.ParseInt(f[11], 10, 64)
			system, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += user + system
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// measure times f, which moves n messages, and prints its rate beside RabbitMQ's CPU time per
// message (other users of a shared broker count too).
func measure(b *testing.B, what string, n int, f func()) {
	b.StartTimer()
	cpu, start := brokerCPU(), time.Now()
	f()
	took, used := time.Since(start), brokerCPU()-cpu
	b.StopTimer()
	rate := float64(n) / took.Seconds()
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(float64(used.Nanoseconds())/float64(n), "broker-ns/msg")
	b.ReportMetric(0, "ns/op")
	fmt.Printf("%-66s %7.0f msgs/s, RabbitMQ %5.1f µs CPU a message (%3.0f%% of a core)\n",
		what, rate, float64(used.Microseconds())/float64(n), 100*used.Seconds()/took.Seconds())
}

// BenchmarkCeilingConsume is the bare consumer: consume a durable queue of persistent 300-byte
// messages with a prefetch window and acknowledge, nothing else; each delivery on its own or
// every 64th with multiple=true.
func BenchmarkCeilingConsume(b *testing.B) {
	for _, c := range []struct{ prefetch, every int }{{256, 1}, {1024, 1}, {1024, 64}} {
		b.Run(fmt.Sprintf("prefetch=%d/ack-every=%d", c.prefetch, c.every), func(b *testing.B) {
			n := benchN()
			conn := dial(b)
			defer conn.Close()
			for range b.N {
				b.StopTimer()
				name := fill(b, conn, n)
				ch, err := conn.Channel()
				if err != nil {
					b.Fatal(err)
				}
				if err := ch.Qos(c.prefetch, 0, false); err != nil {
					b.Fatal(err)
				}
				what := fmt.Sprintf("bare consume, prefetch %d, ack each", c.prefetch)
				if c.every > 1 {
					what = fmt.Sprintf("bare consume, prefetch %d, ack every %d (multiple)", c.prefetch, c.every)
				}
				measure(b, what, n, func() {
					ds, err := ch.Consume(name, "", false, false, false, false, nil)
					if err != nil {
						b.Fatal(err)
					}
					for i := 1; i <= n; i++ {
						d := <-ds
						if i%c.every == 0 || i == n {
							if err := d.Ack(c.every > 1); err != nil {
								b.Fatal(err)
							}
						}
					}
				})
				_ = ch.Close()
			}
		})
	}
}

// BenchmarkQueueDrain drains the same queue through a Queue opened with Dial (defaults), taking
// batches of 64 and acknowledging from 256 workers, with no delivery in between: the queue's own
// rate, beside the bare consumer's.
func BenchmarkQueueDrain(b *testing.B) {
	n := benchN()
	conn := dial(b)
	defer conn.Close()
	ctx := context.Background()
	for range b.N {
		b.StopTimer()
		name := fill(b, conn, n)
		q, err := Dial(ctx, amqpURL(), Options{Queue: name, Instance: "bench", EncodeDead: acapy.EncodeDead}, nil)
		if err != nil {
			b.Fatal(err)
		}
		measure(b, "Queue: Take 64 at a time, Ack from 256 workers", n, func() {
			work := make(chan *engine.Message, 64)
			var wg sync.WaitGroup
			for range 256 {
				wg.Go(func() {
					for m := range work {
						if err := q.Ack(ctx, m); err != nil {
							b.Error(err)
						}
						engine.PutMessage(m)
					}
				})
			}
			var buf []*engine.Message
			for taken := 0; taken < n; {
				if buf, err = q.Take(ctx, buf[:0], 64); err != nil {
					b.Fatal(err)
				}
				taken += len(buf)
				for _, m := range buf {
					work <- m
				}
			}
			close(work)
			wg.Wait()
		})
		q.Close()
	}
}

// publishers and perPublish are the shape of bench/BenchmarkBrokers' events load: 4 callers,
// each publishing 2,000 messages at a time.
const publishers, perPublish = 4, 2000

// BenchmarkCeilingPublish is the bare publisher: each of 4 goroutines publishes batches of
// 2,000 persistent 200-byte messages on a confirm-mode channel of its own and waits for the
// batch's confirms; to one direct exchange with no queue bound, or in turn to 20 of them, as
// herald events writes.
func BenchmarkCeilingPublish(b *testing.B) {
	publishLoads(b, func(b *testing.B, n int, conn *amqp.Connection, xs []string) {
		exchanges := len(xs)
		for range b.N {
			b.StopTimer()
			chs := make([]*amqp.Channel, publishers)
			for i := range chs {
				ch, err := conn.Channel()
				if err != nil {
					b.Fatal(err)
				}
				if err := ch.Confirm(false); err != nil {
					b.Fatal(err)
				}
				chs[i] = ch
			}
			measure(b, fmt.Sprintf("bare publish, 4 channels, batches of 2000, %d exchanges", exchanges), n, func() {
				var wg sync.WaitGroup
				for _, ch := range chs {
					confirms := ch.NotifyPublish(make(chan amqp.Confirmation, perPublish))
					wg.Go(func() {
						for range n / publishers / perPublish {
							for i := range perPublish {
								if err := ch.Publish(xs[i%len(xs)], "", false, false, amqp.Publishing{Body: benchBody[:200], DeliveryMode: amqp.Persistent}); err != nil {
									b.Error(err)
									return
								}
							}
							for range perPublish {
								if c := <-confirms; !c.Ack {
									b.Error("nack")
									return
								}
							}
						}
					})
				}
				wg.Wait()
			})
			for _, ch := range chs {
				_ = ch.Close()
			}
		}
	})
}

// BenchmarkPublisher runs the same loads through a Publisher: 4 concurrent Publish calls of
// 2,000 publications each.
func BenchmarkPublisher(b *testing.B) {
	publishLoads(b, func(b *testing.B, n int, conn *amqp.Connection, xs []string) {
		exchanges := len(xs)
		ctx := context.Background()
		p, err := NewPublisher(ctx, amqpURL(), PublisherOptions{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		ps := make([]engine.Publication, perPublish)
		for i := range ps {
			ps[i] = engine.Publication{Dest: []byte(xs[i%len(xs)]), Body: benchBody[:200]}
		}
		b.StopTimer()
		for range b.N {
			measure(b, fmt.Sprintf("Publisher, 4 callers, Publish of 2000, %d exchanges", exchanges), n, func() {
				var wg sync.WaitGroup
				for range publishers {
					wg.Go(func() {
						for range n / publishers / perPublish {
							if err := p.Publish(ctx, ps); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
			})
		}
	})
}

// publishLoads runs f with one exchange and with 20: n messages (whole batches of all
// publishers), a connection, and the exchanges.
func publishLoads(b *testing.B, f func(b *testing.B, n int, conn *amqp.Connection, xs []string)) {
	for _, exchanges := range []int{1, 20} {
		b.Run(fmt.Sprintf("exchanges=%d", exchanges), func(b *testing.B) {
			conn := dial(b)
			defer conn.Close()
			f(b, benchN()/(publishers*perPublish)*(publishers*perPublish), conn, benchExchanges(b, conn, exchanges))
		})
	}
}

// benchExchanges makes n durable direct exchanges with nothing bound, as herald events publishes
// to when no consumer subscribed.
func benchExchanges(b *testing.B, conn *amqp.Connection, n int) []string {
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	prefix := fmt.Sprintf("herald.bench.x.%x.", rand.Uint64())
	xs := make([]string, n)
	for i := range xs {
		xs[i] = prefix + strconv.Itoa(i)
		if err := ch.ExchangeDeclare(xs[i], "direct", true, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		c := dial(b)
		defer c.Close()
		if ch, err := c.Channel(); err == nil {
			for _, x := range xs {
				_ = ch.ExchangeDelete(x, false, false)
			}
		}
	})
	return xs
}
