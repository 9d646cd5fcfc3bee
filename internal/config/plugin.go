package config

import (
	"fmt"
	"os"
	"strings"

	"github.com/heraldhq/herald/engine"
	"go.yaml.in/yaml/v3"
)

// Plugin is the redis_events plugin's configuration, the redis_queue section of the file ACA-Py
// takes with --plugin-config. Sections that are absent take the plugin's defaults.
type Plugin struct {
	ConnectionURL string

	InboundTopic    string // acapy_inbound_topic
	DirectRespTopic string // acapy_direct_resp_topic

	OutboundTopic string // acapy_outbound_topic
	MediatorMode  bool

	// EventTopicMaps routes topics to list names, in the file's order: every matching pattern
	// yields a list.
	EventTopicMaps []engine.Route
	// TopicMapsSet says the file gave event_topic_maps (a NATS sink's defaults differ).
	TopicMapsSet bool
	// WebhookTopicMaps names the webhook topic of an event topic (exact topic, not a pattern).
	WebhookTopicMaps map[string]string
	DeliverWebhook   bool

	// Herald is the file's herald section: Herald's own settings, which the plugin ignores.
	Herald HeraldSection

	// Ignored lists what the file holds that the plugin does not read (the plugin ignores it
	// too), so that the service can log it: a misspelt key is otherwise a silent default.
	Ignored []string
}

// HeraldSection is the herald mapping of a plugin file (beside redis_queue): the brokers and
// keys of Herald's services, each overridden by its environment variable.
type HeraldSection struct {
	Source, Sink, From string
	Key                string
	Keys               map[string]string
	ExchangePrefix     string
	NATSStream         string
}

// DefaultNATSEventTopicMaps is the default event_topic_maps with a NATS sink: the dotted subjects
// of ACA-Py's NATS events plugin, one subject tree under acapy.>.
var DefaultNATSEventTopicMaps = []engine.Route{
	{Pattern: "^acapy::webhook::(.*)$", Template: "acapy.webhook.$wallet_id"},
	{Pattern: "^acapy::record::([^:]*)::([^:]*)$", Template: "acapy.record-with-state.$wallet_id"},
	{Pattern: "^acapy::record::([^:])?", Template: "acapy.record.$wallet_id"},
	{Pattern: "acapy::basicmessage::received", Template: "acapy.basicmessage.received"},
	{Pattern: "acapy::problem_report", Template: "acapy.problem_report"},
	{Pattern: "acapy::ping::received", Template: "acapy.ping.received"},
	{Pattern: "acapy::ping::response_received", Template: "acapy.ping.response_received"},
	{Pattern: "acapy::actionmenu::received", Template: "acapy.actionmenu.received"},
	{Pattern: "acapy::actionmenu::get-active-menu", Template: "acapy.actionmenu.get-active-menu"},
	{Pattern: "acapy::actionmenu::perform-menu-action", Template: "acapy.actionmenu.perform-menu-action"},
	{Pattern: "acapy::keylist::updated", Template: "acapy.keylist.updated"},
	{Pattern: "acapy::revocation-notification::received", Template: "acapy.revocation-notification.received"},
	{Pattern: "acapy::revocation-notification-v2::received", Template: "acapy.revocation-notification-v2.received"},
	{Pattern: "acapy::forward::received", Template: "acapy.forward.received"},
	{Pattern: "acapy::outbound-message::queued_for_delivery", Template: "acapy.outbound-message.queued-for-delivery"},
}

// DefaultEventTopicMaps is the plugin's default event_topic_maps, in its order.
var DefaultEventTopicMaps = []engine.Route{
	{Pattern: "^acapy::webhook::(.*)$", Template: "acapy-webhook-$wallet_id"},
	{Pattern: "^acapy::record::([^:]*)::([^:]*)$", Template: "acapy-record-with-state-$wallet_id"},
	{Pattern: "^acapy::record::([^:])?", Template: "acapy-record-$wallet_id"},
	{Pattern: "acapy::basicmessage::received", Template: "acapy-basicmessage-received"},
	{Pattern: "acapy::problem_report", Template: "acapy-problem_report"},
	{Pattern: "acapy::ping::received", Template: "acapy-ping-received"},
	{Pattern: "acapy::ping::response_received", Template: "acapy-ping-response_received"},
	{Pattern: "acapy::actionmenu::received", Template: "acapy-actionmenu-received"},
	{Pattern: "acapy::actionmenu::get-active-menu", Template: "acapy-actionmenu-get-active-menu"},
	{Pattern: "acapy::actionmenu::perform-menu-action", Template: "acapy-actionmenu-perform-menu-action"},
	{Pattern: "acapy::keylist::updated", Template: "acapy-keylist-updated"},
	{Pattern: "acapy::revocation-notification::received", Template: "acapy-revocation-notification-received"},
	{Pattern: "acapy::revocation-notification-v2::received", Template: "acapy-revocation-notification-v2-received"},
	{Pattern: "acapy::forward::received", Template: "acapy-forward-received"},
	{Pattern: "acapy::outbound-message::queued_for_delivery", Template: "acapy-outbound-message-queued-for-delivery"},
}

// DefaultWebhookTopicMaps is the plugin's default event_webhook_topic_maps.
func DefaultWebhookTopicMaps() map[string]string {
	return map[string]string{
		"acapy::basicmessage::received":          "basicmessages",
		"acapy::problem_report":                  "problem_report",
		"acapy::ping::received":                  "ping",
		"acapy::ping::response_received":         "ping",
		"acapy::actionmenu::received":            "actionmenu",
		"acapy::actionmenu::get-active-menu":     "get-active-menu",
		"acapy::actionmenu::perform-menu-action": "perform-menu-action",
		"acapy::keylist::updated":                "keylist",
	}
}

// DefaultPlugin is the configuration the plugin uses without a file.
func DefaultPlugin() Plugin {
	return Plugin{
		ConnectionURL:    "redis://default:test1234@172.28.0.103:6379",
		InboundTopic:     "acapy_inbound",
		DirectRespTopic:  "acapy_inbound_direct_resp",
		OutboundTopic:    "acapy_outbound",
		EventTopicMaps:   append([]engine.Route(nil), DefaultEventTopicMaps...),
		WebhookTopicMaps: DefaultWebhookTopicMaps(),
		DeliverWebhook:   true,
	}
}

// LoadPluginFile reads a plugin configuration file. Errors name the file and the key.
func LoadPluginFile(path string) (Plugin, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Plugin{}, &Error{Key: "--plugin-config", Reason: err.Error()}
	}
	p, err := ParsePlugin(b)
	if e, ok := err.(*Error); ok {
		e.Key = path + ": " + e.Key
	}
	return p, err
}

// ParsePlugin reads the YAML of a plugin configuration: the redis_queue section with connection,
// inbound, outbound and event; keys may use "_" or "-". As with the plugin, what it does not know
// is ignored (and listed in Ignored) and a file without redis_queue means the defaults; a value
// of the wrong type is an error naming its key.
func ParsePlugin(b []byte) (Plugin, error) {
	p := DefaultPlugin()
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return p, &Error{Key: "yaml", Reason: err.Error()}
	}
	if len(doc.Content) == 0 {
		return p, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return p, &Error{Key: "yaml", Reason: "the document is not a mapping"}
	}
	var rq *yaml.Node
	y := yamlReader{p: &p}
	for i := 0; i+1 < len(root.Content); i += 2 {
		switch strings.ReplaceAll(root.Content[i].Value, "-", "_") {
		case "redis_queue":
			rq = root.Content[i+1]
		case "herald":
			y.herald(root.Content[i+1])
		}
	}
	if rq == nil {
		p.Ignored = append(p.Ignored, "no redis_queue section: the plugin's defaults apply")
		return p, y.err
	}
	y.each(rq, "redis_queue", false, func(path, key string, v *yaml.Node) {
		switch key {
		case "connection":
			y.each(v, path, false, func(path, k string, v *yaml.Node) {
				switch k {
				case "connection_url":
					p.ConnectionURL = y.str(v, path)
				default:
					y.ignore(path)
				}
			})
		case "inbound":
			y.each(v, path, false, func(path, k string, v *yaml.Node) {
				switch k {
				case "acapy_inbound_topic":
					p.InboundTopic = y.str(v, path)
				case "acapy_direct_resp_topic":
					p.DirectRespTopic = y.str(v, path)
				default:
					y.ignore(path)
				}
			})
		case "outbound":
			y.each(v, path, false, func(path, k string, v *yaml.Node) {
				switch k {
				case "acapy_outbound_topic":
					p.OutboundTopic = y.str(v, path)
				case "mediator_mode":
					p.MediatorMode = y.bool(v, path)
				default:
					y.ignore(path)
				}
			})
		case "event":
			y.each(v, path, false, func(path, k string, v *yaml.Node) {
				switch k {
				case "event_topic_maps":
					p.EventTopicMaps, p.TopicMapsSet = nil, true
					y.each(v, path, true, func(path, pattern string, t *yaml.Node) {
						p.EventTopicMaps = append(p.EventTopicMaps, engine.Route{Pattern: pattern, Template: y.str(t, path)})
					})
				case "event_webhook_topic_maps":
					p.WebhookTopicMaps = y.strMap(v, path)
				case "deliver_webhook":
					p.DeliverWebhook = y.bool(v, path)
				default:
					y.ignore(path)
				}
			})
		default:
			y.ignore(path)
		}
	})
	return p, y.err
}

// herald reads the herald section.
func (y *yamlReader) herald(n *yaml.Node) {
	h := &y.p.Herald
	y.each(n, "herald", false, func(path, key string, v *yaml.Node) {
		switch key {
		case "source":
			h.Source = y.str(v, path)
		case "sink":
			h.Sink = y.str(v, path)
		case "from":
			h.From = y.str(v, path)
		case "key":
			h.Key = y.str(v, path)
		case "keys":
			h.Keys = y.strMap(v, path)
		case "exchange_prefix":
			h.ExchangePrefix = y.str(v, path)
		case "nats_stream":
			h.NATSStream = y.str(v, path)
		default:
			y.ignore(path)
		}
	})
}

// yamlReader walks the document, keeping the first error with the path of its key.
type yamlReader struct {
	p   *Plugin
	err error
}

func (y *yamlReader) ignore(path string) { y.p.Ignored = append(y.p.Ignored, path) }

func (y *yamlReader) fail(path, reason string) {
	if y.err == nil {
		y.err = &Error{Key: path, Reason: reason}
	}
}

// each calls f for every member of the mapping n, in the file's order, with the member's path
// and key; "-" in keys is read as "_" unless raw (the keys of the topic maps are patterns and
// topics). A null section is an empty one.
func (y *yamlReader) each(n *yaml.Node, path string, raw bool, f func(path, key string, v *yaml.Node)) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		y.fail(path, fmt.Sprintf("want a mapping, got %s at line %d", kind(n), n.Line))
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i].Value
		if !raw {
			k = strings.ReplaceAll(k, "-", "_")
		}
		f(path+"."+k, k, n.Content[i+1])
	}
}

func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	return fmt.Sprintf("%q", n.Value)
}

func (y *yamlReader) str(n *yaml.Node, path string) string {
	if n.Kind != yaml.ScalarNode {
		y.fail(path, fmt.Sprintf("want a string, got %s at line %d", kind(n), n.Line))
		return ""
	}
	return n.Value
}

// strMap reads a mapping of strings whose keys are taken as they are written.
func (y *yamlReader) strMap(n *yaml.Node, path string) map[string]string {
	m := map[string]string{}
	y.each(n, path, true, func(path, key string, v *yaml.Node) { m[key] = y.str(v, path) })
	return m
}

func (y *yamlReader) bool(n *yaml.Node, path string) bool {
	if n.Kind == yaml.ScalarNode {
		switch strings.ToLower(n.Value) {
		case "true", "yes", "on":
			return true
		case "false", "no", "off":
			return false
		}
	}
	y.fail(path, fmt.Sprintf("want true or false, got %s at line %d", kind(n), n.Line))
	return false
}
