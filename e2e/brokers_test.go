package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/amqpq"
	"github.com/heraldhq/herald/internal/amqpq/amqptest"
	"github.com/heraldhq/herald/internal/broker"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/kafkaq/kafkatest"
	"github.com/heraldhq/herald/internal/natsq/natstest"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// brokerURLs are the servers of the broker tests: NATS and RabbitMQ as scripts/services.sh runs
// them (a NATS server of the test's own where subjects must not clash), Kafka as an in-process
// kfake cluster.
var brokerURLs = []struct {
	kind string
	url  func(t *testing.T) string
}{
	{config.KindNATS, func(t *testing.T) string { return natstest.Start(t).URL() }},
	{config.KindKafka, func(t *testing.T) string { return "kafka://" + kafkatest.Start(t).Addr() }},
	{config.KindAMQP, func(t *testing.T) string { return "amqp://guest:guest@127.0.0.1:5672/" }},
}

func openPublisher(t *testing.T, url string, queues ...string) *broker.Publisher {
	t.Helper()
	b, err := config.ParseBroker("test", url)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := broker.OpenPublisher(ctx, b, broker.PublisherOptions{Queues: queues}, quietLog)
	if err != nil {
		t.Fatalf("publisher on %s: %v", url, err)
	}
	t.Cleanup(p.Close)
	return p
}

// outboundDest is where an outbound entry for queue is published: RabbitMQ's default exchange
// with the queue as routing key, the subject or topic of that name elsewhere.
func outboundDest(kind, queue string) (dest, key string) {
	if kind == config.KindAMQP {
		return "", queue
	}
	return queue, ""
}

// cleanupAMQP deletes, when t ends, what a test declared on the shared RabbitMQ: outbound queues
// (with their dead-letter queue and exchange) and exchanges.
func cleanupAMQP(t *testing.T, queues []string, exchanges ...string) {
	t.Cleanup(func() { _ = amqpq.Remove("amqp://guest:guest@127.0.0.1:5672/", queues, exchanges...) })
}

// metric reads the value of one series of a service's /metrics (its labels ignored).
func metric(t *testing.T, port, name string) string {
	_, body := status(t, port, "/metrics", "k")
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			return l[strings.LastIndexByte(l, ' ')+1:]
		}
	}
	return ""
}

// TestDeliverFromBrokers runs `herald deliver --source` against each broker: every entry of the
// reference format arrives once at least, malformed ones are dead-lettered, and readiness is
// reported.
func TestDeliverFromBrokers(t *testing.T) {
	const n, bad = 2000, 3
	for _, bk := range brokerURLs {
		t.Run(bk.kind, func(t *testing.T) {
			url := bk.url(t)
			prefix := fmt.Sprintf("e2e%d", rand.Uint32())
			queue := prefix + "_outbound"
			if bk.kind == config.KindAMQP {
				cleanupAMQP(t, []string{queue})
			}
			p := openPublisher(t, url, queue)
			recv := newReceiver(t, n)
			dest, key := outboundDest(bk.kind, queue)
			ctx := context.Background()
			if err := fixture.Publish(ctx, p, dest, key, recv.URL()+"/in", 0, n, 300); err != nil {
				t.Fatal(err)
			}
			var junk []engine.Publication
			for i := range bad {
				junk = append(junk, engine.Publication{Dest: []byte(dest), Key: []byte(key), Body: fmt.Appendf(nil, `{"not": "an entry %d"}`, i)})
			}
			if err := p.Publish(ctx, junk); err != nil {
				t.Fatal(err)
			}
			port := freePort(t)
			d := start(t, []string{"TOPIC_PREFIX=" + prefix, "STATUS_ENDPOINT_HOST=127.0.0.1", "STATUS_ENDPOINT_PORT=" + port,
				"STATUS_ENDPOINT_API_KEY=k"}, "deliver", "--source", url)
			if !recv.WaitAll(60 * time.Second) {
				_, missing, _ := recv.Tally()
				t.Fatalf("%d of %d entries never arrived", missing, n)
			}
			eventually(t, 20*time.Second, "3 dead letters", func() bool {
				return metric(t, port, "herald_messages_dead_lettered_total") == "3"
			})
			if code, body := status(t, port, "/status/ready", "k"); code != 200 || body != `{"ready":true}` {
				t.Errorf("ready: %d %s", code, body)
			}
			_, _, dups := recv.Tally()
			t.Logf("%s: %d delivered (%d duplicates), %d dead-lettered", bk.kind, n, dups, bad)
			_ = d.cmd.Process.Signal(interrupt)
			if code := d.wait(20 * time.Second); code != 0 {
				t.Errorf("exit code %d after SIGINT", code)
			}
		})
	}
}

// TestEventsToBrokers posts an ACA-Py webhook to `herald events` with each broker as its sink
// and reads the routed entries back from the broker.
func TestEventsToBrokers(t *testing.T) {
	const body = `{"state": "active", "connection_id": "c-1", "auth_req_id": "r-9"}`
	post := func(t *testing.T, listen string) {
		req, _ := http.NewRequest("POST", "http://"+listen+"/topic/connections/", strings.NewReader(body))
		req.Header.Set("x-wallet-id", "w1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 202 {
			t.Fatalf("POST: %d %s", resp.StatusCode, b)
		}
	}
	run := func(t *testing.T, env ...string) string {
		listen := "127.0.0.1:" + freePort(t)
		start(t, append(env, "HERALD_LISTEN="+listen, "STATUS_ENDPOINT_HOST=127.0.0.1", "STATUS_ENDPOINT_PORT="+freePort(t), "STATUS_ENDPOINT_API_KEY=k"), "events")
		eventually(t, 30*time.Second, "herald events listening", func() bool {
			resp, err := http.Get("http://" + listen + "/")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil
		})
		return listen
	}

	t.Run("nats", func(t *testing.T) {
		srv := natstest.Start(t)
		listen := run(t, "HERALD_SINK="+srv.URL())
		// Subscribed before the event: the subject the ACA-Py NATS plugin's map names.
		nc := natsConn(t, srv.URL())
		sub, err := nc.SubscribeSync("acapy.record-with-state.w1")
		if err != nil {
			t.Fatal(err)
		}
		post(t, listen)
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("nothing on acapy.record-with-state.w1: %v", err)
		}
		if !strings.Contains(string(m.Data), `"connection_id": "c-1"`) {
			t.Errorf("entry %s", m.Data)
		}
		// And stored: the stream acapy_events was created with the routes' subjects.
		info := streamMsgs(t, nc, "acapy_events")
		if info != 3 {
			t.Errorf("stream acapy_events holds %d entries, want 3 (webhook, record, record-with-state)", info)
		}
	})

	t.Run("kafka", func(t *testing.T) {
		k := kafkatest.Start(t)
		listen := run(t, "HERALD_SINK=kafka://"+k.Addr())
		post(t, listen)
		cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addr()), kgo.ConsumeTopics("acapy-record-with-state-w1"),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		var rec *kgo.Record
		for rec == nil && ctx.Err() == nil {
			cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { rec = r })
		}
		if rec == nil || string(rec.Key) != "w1" || !strings.Contains(string(rec.Value), `"connection_id": "c-1"`) {
			t.Fatalf("topic acapy-record-with-state-w1: %+v", rec)
		}
	})

	t.Run("amqp_teal_layout", func(t *testing.T) {
		// The TeaL layout: a direct exchange per type, named <prefix><type>, routing keys from
		// the event; consumers bind only the keys they want.
		prefix := fmt.Sprintf("e2e%d_", rand.Uint32())
		cfg := t.TempDir() + "/plugin.yml"
		writeFile(t, cfg, `redis_queue:
  event:
    event_topic_maps:
      "^acapy::record::connections::": callbacks
      "^acapy::webhook::connections$": openid_ciba_callbacks
    deliver_webhook: false
`)
		conn, err := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, _ := conn.Channel()
		bind := func(exchange, key string) string {
			if err := ch.ExchangeDeclare(exchange, "direct", true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			q, err := ch.QueueDeclare("", false, true, true, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := ch.QueueBind(q.Name, key, exchange, false, nil); err != nil {
				t.Fatal(err)
			}
			return q.Name
		}
		cleanupAMQP(t, nil, prefix+"callbacks", prefix+"openid_ciba_callbacks")
		byState := bind(prefix+"callbacks", "active")
		otherState := bind(prefix+"callbacks", "deleted")
		byRequest := bind(prefix+"openid_ciba_callbacks", "r-9")
		listen := run(t, "HERALD_SINK=amqp://guest:guest@127.0.0.1:5672/", "HERALD_PLUGIN_CONFIG="+cfg,
			"HERALD_EXCHANGE_PREFIX="+prefix, `HERALD_KEYS={"openid_ciba_callbacks": "$auth_req_id"}`)
		post(t, listen)
		for q, want := range map[string]int{byState: 1, byRequest: 1, otherState: 0} {
			got := 0
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				_, ok, err := ch.Get(q, true)
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					got++
				} else if got >= want {
					break
				} else {
					time.Sleep(50 * time.Millisecond)
				}
			}
			if got != want {
				t.Errorf("queue %s got %d entries, want %d", q, got, want)
			}
		}
	})
}

// TestBridge routes events read from another broker to Redis lists (bridge mode), from each
// broker: a NATS stream another service writes (limits retention, as a NATS events plugin keeps
// them), a Kafka topic, a RabbitMQ queue. Each event is acknowledged once its entries are in
// Redis; a message that is not an event is dead-lettered.
func TestBridge(t *testing.T) {
	for _, tc := range []struct {
		kind  string
		setup func(t *testing.T) (from, pubURL, dest, key string)
	}{
		{config.KindNATS, func(t *testing.T) (string, string, string, string) {
			srv := natstest.Start(t)
			js, err := jetstream.New(natsConn(t, srv.URL()))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "upstream", Subjects: []string{"events.>"}}); err != nil {
				t.Fatal(err)
			}
			return srv.URL() + "?subject=events.in&stream=upstream", srv.URL(), "events.in", ""
		}},
		{config.KindKafka, func(t *testing.T) (string, string, string, string) {
			k := kafkatest.Start(t, "events_in")
			return "kafka://" + k.Addr() + "?topic=events_in", "kafka://" + k.Addr(), "events_in", ""
		}},
		{config.KindAMQP, func(t *testing.T) (string, string, string, string) {
			q := fmt.Sprintf("e2e-bridge-%d", rand.Uint32())
			url := "amqp://guest:guest@127.0.0.1:5672/"
			cleanupAMQP(t, []string{q})
			return url + "?queue=" + q, url, "", q
		}},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			from, pubURL, dest, key := tc.setup(t)
			rs := redistest.Standalone(t)
			c := client(t, rs.URL())
			port := freePort(t)
			start(t, []string{"REDIS_SERVER_URL=" + rs.URL(), "HERALD_LISTEN=127.0.0.1:" + freePort(t),
				"HERALD_FROM=" + from, "STATUS_ENDPOINT_HOST=127.0.0.1", "STATUS_ENDPOINT_PORT=" + port,
				"STATUS_ENDPOINT_API_KEY=k"}, "events")
			var queues []string
			if tc.kind == config.KindAMQP {
				queues = []string{key} // declared as the bridge declares it, before it may have started
			}
			p := openPublisher(t, pubURL, queues...)
			var ps []engine.Publication
			for i := range 100 {
				ps = append(ps, engine.Publication{Dest: []byte(dest), Key: []byte(key), Body: fmt.Appendf(nil,
					`{"topic": "acapy::record::connections::active", "wallet_id": "w%d", "payload": {"state": "active", "n": %d}}`, i%2, i)})
			}
			ps = append(ps, engine.Publication{Dest: []byte(dest), Key: []byte(key), Body: []byte(`not an event`)})
			if err := p.Publish(context.Background(), ps); err != nil {
				t.Fatal(err)
			}
			eventually(t, 30*time.Second, "100 events in each of two list families", func() bool {
				return llen(t, c, "acapy-record-with-state-w0")+llen(t, c, "acapy-record-with-state-w1") == 100 &&
					llen(t, c, "acapy-record-w0")+llen(t, c, "acapy-record-w1") == 100
			})
			eventually(t, 10*time.Second, "the malformed message dead-lettered", func() bool {
				return metric(t, port, "herald_messages_dead_lettered_total") == "1"
			})
		})
	}
}

// restartable is a broker server of the test's own that can be stopped and started again with
// its data.
type restartable interface {
	Stop()
	Restart()
}

// TestDeliverSurvivesBrokerRestart stops the broker under `herald deliver --source`: readiness
// turns false while it is away, and everything published before and after arrives.
func TestDeliverSurvivesBrokerRestart(t *testing.T) {
	const n = 1000
	for _, tc := range []struct {
		kind  string
		start func(t *testing.T) (url string, srv restartable)
	}{
		{config.KindNATS, func(t *testing.T) (string, restartable) { s := natstest.Start(t); return s.URL(), s }},
		{config.KindKafka, func(t *testing.T) (string, restartable) { k := kafkatest.Start(t); return "kafka://" + k.Addr(), k }},
		{config.KindAMQP, func(t *testing.T) (string, restartable) { r := amqptest.Start(t); return r.URL(), r }},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			url, srv := tc.start(t)
			recv := newReceiver(t, 2*n)
			queue := "acapy_outbound"
			dest, key := outboundDest(tc.kind, queue)
			port := freePort(t)
			start(t, []string{"STATUS_ENDPOINT_HOST=127.0.0.1", "STATUS_ENDPOINT_PORT=" + port, "STATUS_ENDPOINT_API_KEY=k"},
				"deliver", "--source", url)
			p := openPublisher(t, url, queue)
			if err := fixture.Publish(context.Background(), p, dest, key, recv.URL()+"/in", 0, n, 300); err != nil {
				t.Fatal(err)
			}
			eventually(t, 30*time.Second, "the first half delivered", func() bool { return recv.Total() >= n })
			srv.Stop()
			eventually(t, 20*time.Second, "readiness false while the broker is down", func() bool {
				_, body := status(t, port, "/status/ready", "k")
				return body == `{"ready":false}`
			})
			srv.Restart()
			// The publisher reconnects too; a publish that fails meanwhile is tried again, as a
			// producer would.
			eventually(t, 60*time.Second, "the second half published", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				return fixture.Publish(ctx, p, dest, key, recv.URL()+"/in", n, n, 300) == nil
			})
			if !recv.WaitAll(60 * time.Second) {
				_, missing, _ := recv.Tally()
				t.Fatalf("%d of %d lost across the restart", missing, 2*n)
			}
			eventually(t, 30*time.Second, "readiness true again", func() bool {
				_, body := status(t, port, "/status/ready", "k")
				return body == `{"ready":true}`
			})
			_, _, dups := recv.Tally()
			t.Logf("%s: %d of %d delivered across the restart, %d duplicates", tc.kind, 2*n, 2*n, dups)
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func natsConn(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// streamMsgs is how many messages a JetStream stream holds, -1 when it does not exist.
func streamMsgs(t *testing.T, nc *nats.Conn, stream string) int {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		return -1
	}
	info, err := s.Info(context.Background())
	if err != nil {
		return -1
	}
	return int(info.State.Msgs)
}

const interrupt = syscall.SIGINT

// TestWebhookThroughBrokers: with the same broker behind `herald events` (sink) and `herald
// deliver` (source), an event of event_webhook_topic_maps reaches the webhook receiver, with
// the plugin's path and headers, through the broker's outbound queue.
func TestWebhookThroughBrokers(t *testing.T) {
	for _, bk := range brokerURLs {
		t.Run(bk.kind, func(t *testing.T) {
			url := bk.url(t)
			prefix := fmt.Sprintf("e2e%d", rand.Uint32())
			recv := newReceiver(t, 1)
			recv.Record = true
			listen := "127.0.0.1:" + freePort(t)
			env := []string{"HERALD_SINK=" + url, "HERALD_LISTEN=" + listen, "HERALD_WEBHOOK_URLS=" + recv.URL() + "/hook#secret-key"}
			if bk.kind == config.KindAMQP {
				// Fresh exchange and queue names on the shared server.
				cfg := t.TempDir() + "/plugin.yml"
				writeFile(t, cfg, "redis_queue:\n  outbound:\n    acapy_outbound_topic: "+prefix+"_outbound\n")
				env = append(env, "HERALD_PLUGIN_CONFIG="+cfg, "HERALD_EXCHANGE_PREFIX="+prefix+"_")
				cleanupAMQP(t, []string{prefix + "_outbound"}, prefix+"_acapy-basicmessage-received")
			} else {
				cfg := t.TempDir() + "/plugin.yml"
				writeFile(t, cfg, "redis_queue:\n  outbound:\n    acapy_outbound_topic: "+prefix+"_outbound\n")
				env = append(env, "HERALD_PLUGIN_CONFIG="+cfg)
			}
			start(t, env, "events")
			start(t, []string{"TOPIC_PREFIX=" + prefix}, "deliver", "--source", url)
			eventually(t, 30*time.Second, "herald events listening", func() bool {
				resp, err := http.Post("http://"+listen+"/v1/events", "application/json",
					strings.NewReader(`{"topic": "acapy::basicmessage::received", "payload": {"content": "hello"}, "wallet_id": "w-2"}`))
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == 202
			})
			eventually(t, 30*time.Second, "the webhook at the receiver", func() bool { return len(recv.Requests()) >= 1 })
			r := recv.Requests()[0]
			if r.Path != "/hook/topic/basicmessages/" || r.Headers["x-api-key"] != "secret-key" || r.Headers["x-wallet-id"] != "w-2" ||
				string(r.Body) != `{"wallet_id": "w-2", "state": null, "topic": "acapy::basicmessage::received", "category": null, "payload": {"content": "hello"}}` {
				t.Errorf("webhook: %s %v %s", r.Path, r.Headers, r.Body)
			}
		})
	}
}
