package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePlugin(t *testing.T) {
	p, err := ParsePlugin([]byte(`
redis_queue:
  connection:
    connection_url: "redis://default:pw@redis:6379"
  inbound:
    acapy-inbound-topic: in
  outbound:
    acapy_outbound_topic: out
    mediator-mode: true
  event:
    event_topic_maps:
      ^acapy::webhook::(.*)$: hook-$wallet_id
      acapy::basic-message::received: basic
    event-webhook-topic-maps:
      acapy::basic-message::received: basicmessages
    deliver_webhook: false
    colour: blue
other_plugin:
  x: 1
`))
	if err != nil {
		t.Fatal(err)
	}
	if p.ConnectionURL != "redis://default:pw@redis:6379" || p.InboundTopic != "in" || p.DirectRespTopic != "acapy_inbound_direct_resp" ||
		p.OutboundTopic != "out" || !p.MediatorMode || p.DeliverWebhook {
		t.Errorf("%+v", p)
	}
	// The maps replace the defaults, keep the file's order, and keep "-" in patterns and topics.
	if len(p.EventTopicMaps) != 2 || p.EventTopicMaps[0].Pattern != "^acapy::webhook::(.*)$" || p.EventTopicMaps[1].Template != "basic" ||
		p.EventTopicMaps[1].Pattern != "acapy::basic-message::received" {
		t.Errorf("event_topic_maps %+v", p.EventTopicMaps)
	}
	if len(p.WebhookTopicMaps) != 1 || p.WebhookTopicMaps["acapy::basic-message::received"] != "basicmessages" {
		t.Errorf("event_webhook_topic_maps %v", p.WebhookTopicMaps)
	}
	if strings.Join(p.Ignored, ",") != "redis_queue.event.colour" {
		t.Errorf("ignored %v", p.Ignored)
	}
}

func TestParsePluginDefaults(t *testing.T) {
	for _, doc := range []string{"", "redis_queue:\n", "redis_queue:\n  event:\n", "something_else: 1\n"} {
		p, err := ParsePlugin([]byte(doc))
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		if len(p.EventTopicMaps) != 15 || len(p.WebhookTopicMaps) != 8 || !p.DeliverWebhook || p.OutboundTopic != "acapy_outbound" {
			t.Errorf("%q: not the defaults: %+v", doc, p)
		}
	}
}

func TestParsePluginErrorsNameTheKey(t *testing.T) {
	for doc, key := range map[string]string{
		"redis_queue:\n  event:\n    deliver_webhook: maybe\n":          "redis_queue.event.deliver_webhook",
		"redis_queue:\n  event:\n    event_topic_maps: [a, b]\n":        "redis_queue.event.event_topic_maps",
		"redis_queue:\n  event:\n    event_topic_maps:\n      a: [x]\n": "redis_queue.event.event_topic_maps.a",
		"redis_queue:\n  connection: url\n":                             "redis_queue.connection",
		"redis_queue: [\n":                                              "yaml",
	} {
		_, err := ParsePlugin([]byte(doc))
		if err == nil || !strings.HasPrefix(err.Error(), key+":") {
			t.Errorf("%q: %v, want an error naming %s", doc, err, key)
		}
	}
	path := filepath.Join(t.TempDir(), "plugin.yml")
	_ = os.WriteFile(path, []byte("redis_queue:\n  outbound:\n    mediator_mode: 3\n"), 0o600)
	if _, err := LoadPluginFile(path); err == nil || !strings.Contains(err.Error(), path+": redis_queue.outbound.mediator_mode") {
		t.Errorf("file: %v", err)
	}
}
