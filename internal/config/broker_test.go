package config

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseBroker(t *testing.T) {
	for _, tc := range []struct {
		in     string
		kind   string
		url    string
		seeds  []string
		params map[string]string
	}{
		{"nats://127.0.0.1:4222?subject=acapy.events.%3E&stream=EV", KindNATS, "nats://127.0.0.1:4222", nil, map[string]string{"subject": "acapy.events.>", "stream": "EV"}},
		{"kafka://k1:9092,k2:9093?topic=t&group=g", KindKafka, "kafka://k1:9092,k2:9093", []string{"k1:9092", "k2:9093"}, map[string]string{"topic": "t", "group": "g"}},
		{"amqp://guest:guest@127.0.0.1:5672/?queue=q&routing_key=a,b&heartbeat=10", KindAMQP, "amqp://guest:guest@127.0.0.1:5672/?heartbeat=10", nil, map[string]string{"queue": "q", "routing_key": "a,b"}},
		{"redis://127.0.0.1:6379/0?list=events", KindRedis, "redis://127.0.0.1:6379/0", nil, map[string]string{"list": "events"}},
	} {
		b, err := ParseBroker("HERALD_SOURCE", tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if b.Kind != tc.kind || b.URL != tc.url || !reflect.DeepEqual(b.Seeds, tc.seeds) || !reflect.DeepEqual(b.Params, tc.params) {
			t.Errorf("%s: got %+v", tc.in, b)
		}
	}
}

func TestParseBrokerErrorsNameTheKey(t *testing.T) {
	for in, want := range map[string]string{
		"http://h:1":                 "scheme",
		"nats://h:4222?queue=x":      `unknown parameter "queue"`,
		"kafka://k1:9092,k2?topic=t": `seed "k2"`,
		"amqp://:5672":               "no host",
		"nats://user:secret@h:bad":   "not a URL",
	} {
		_, err := ParseBroker("HERALD_SINK", in)
		var ce *Error
		if !errors.As(err, &ce) || ce.Key != "HERALD_SINK" || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error on HERALD_SINK containing %q", in, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error shows the password: %v", in, err)
		}
	}
}

func TestDeliverSource(t *testing.T) {
	c, err := LoadDeliver(MapEnv(map[string]string{"HERALD_SOURCE": "nats://127.0.0.1:4222"}))
	if err != nil {
		t.Fatalf("a NATS source needs no Redis: %v", err)
	}
	if c.Source.Kind != KindNATS || c.Redis.TopicPrefix != "acapy" {
		t.Errorf("got %+v", c)
	}
	if _, err := LoadDeliver(MapEnv(map[string]string{"HERALD_SOURCE": "nats://127.0.0.1:4222", "HERALD_MEDIATOR_MODE": "true"})); err == nil || !strings.Contains(err.Error(), "REDIS_SERVER_URL") {
		t.Errorf("mediator mode without Redis: %v", err)
	}
	c, err = LoadDeliver(MapEnv(map[string]string{"REDIS_SERVER_URL": "redis://127.0.0.1:6379"}))
	if err != nil || c.Source.Kind != KindRedis || c.Source.URL != "redis://127.0.0.1:6379" {
		t.Errorf("default source: %+v %v", c.Source, err)
	}
}

func TestEventsSinkAndKeys(t *testing.T) {
	c, err := LoadEvents(MapEnv(map[string]string{
		"HERALD_SINK": "amqp://guest:guest@127.0.0.1:5672/", "HERALD_EXCHANGE_PREFIX": "teal_",
		"HERALD_KEYS": `{"openid_ciba_callbacks": "$auth_req_id"}`,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Sink.Kind != KindAMQP || c.Key != "$state" || c.Keys["openid_ciba_callbacks"] != "$auth_req_id" || c.ExchangePrefix != "teal_" {
		t.Errorf("got %+v", c)
	}
	c, err = LoadEvents(MapEnv(map[string]string{"HERALD_SINK": "nats://127.0.0.1:4222"}))
	if err != nil || c.Plugin.EventTopicMaps[1].Template != "acapy.record-with-state.$wallet_id" || c.NATSStream != "acapy_events" {
		t.Errorf("NATS defaults: %+v %v", c.Plugin.EventTopicMaps, err)
	}
	for env, key := range map[string]string{
		`{"HERALD_SINK": "kafka://k:9092", "HERALD_KEYS": "{"}`:                    "HERALD_KEYS",
		`{"HERALD_SINK": "kafka://k:9092", "HERALD_KEY": "${x"}`:                   "HERALD_KEY",
		`{"HERALD_SINK": "nats://n:4222", "HERALD_FROM": "kafka://k:9092"}`:        "HERALD_FROM",
		`{"HERALD_SINK": "nats://n:4222", "HERALD_FROM": "redis://r:6379?list=e"}`: "",
	} {
		m := map[string]string{}
		for _, kv := range strings.Split(strings.Trim(env, "{}"), `", "`) {
			k, v, _ := strings.Cut(strings.Trim(kv, `"`), `": "`)
			m[k] = v
		}
		_, err := LoadEvents(MapEnv(m))
		var ce *Error
		if key == "" {
			if err != nil {
				t.Errorf("%s: %v", env, err)
			}
			continue
		}
		if !errors.As(err, &ce) || ce.Key != key {
			t.Errorf("%s: got %v, want an error on %s", env, err, key)
		}
	}
}

func TestPluginHeraldSection(t *testing.T) {
	p, err := ParsePlugin([]byte(`
herald:
  source: kafka://127.0.0.1:9092
  sink: amqp://guest:guest@127.0.0.1:5672/
  exchange-prefix: teal_
  keys:
    callbacks: $state
    powens_domain_webhooks: $domain
redis_queue: {}
`))
	if err != nil {
		t.Fatal(err)
	}
	h := p.Herald
	if h.Source != "kafka://127.0.0.1:9092" || h.Sink == "" || h.ExchangePrefix != "teal_" || h.Keys["powens_domain_webhooks"] != "$domain" {
		t.Errorf("got %+v", h)
	}
}

func TestDeliverSourceFromYAML(t *testing.T) {
	path := t.TempDir() + "/plugin.yml"
	if err := os.WriteFile(path, []byte("herald:\n  source: amqp://guest:guest@127.0.0.1:5672/\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadDeliver(MapEnv(map[string]string{"HERALD_PLUGIN_CONFIG": path}))
	if err != nil || c.Source.Kind != KindAMQP {
		t.Fatalf("source from the file: %+v %v", c.Source, err)
	}
	c, err = LoadDeliver(MapEnv(map[string]string{"HERALD_PLUGIN_CONFIG": path, "HERALD_SOURCE": "nats://127.0.0.1:4222"}))
	if err != nil || c.Source.Kind != KindNATS {
		t.Fatalf("the environment wins over the file: %+v %v", c.Source, err)
	}
}
