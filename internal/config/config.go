// Package config reads a service's settings from the environment the reference ACA-Py services
// use, plus Herald's own HERALD_* variables, and validates them so that a bad value stops the
// process at once with one line naming the key.
package config

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/endpoint"
	"go.yaml.in/yaml/v3"
)

// Error is an invalid or missing setting. Its text is the one line printed before exiting 2.
type Error struct {
	Key    string
	Reason string
}

func (e *Error) Error() string { return e.Key + ": " + e.Reason }

// Env reads variables; tests substitute a map.
type Env func(key string) (string, bool)

// OSEnv reads the process environment.
func OSEnv(key string) (string, bool) { return os.LookupEnv(key) }

// MapEnv reads from m.
func MapEnv(m map[string]string) Env {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// Var documents one setting for --help and the README.
type Var struct {
	Key, Default, Help string
}

// Redis is how to reach Redis and which keys to use.
type Redis struct {
	URL         string
	TopicPrefix string
}

// Status is the optional status endpoint: served only when all three are set, as the reference.
type Status struct {
	Host, Port, APIKey string
}

// Enabled reports whether the status server should run.
func (s Status) Enabled() bool { return s.Host != "" && s.Port != "" && s.APIKey != "" }

// Deliver is the configuration of `herald deliver`.
type Deliver struct {
	Redis  Redis
	Status Status
	// Source is where the outbound entries are taken from: Redis (REDIS_SERVER_URL) unless
	// HERALD_SOURCE names NATS, Kafka or RabbitMQ.
	Source Broker
	// PluginFile is the plugin configuration file read, empty for none.
	PluginFile string

	Mode          string
	Concurrency   int
	Batch         int
	Timeout       time.Duration
	DrainTimeout  time.Duration
	Lease         time.Duration
	DeadLetter    string
	DropExhausted bool
	Instance      string
	// MediatorMode queues packed DIDComm messages on <prefix>_outbound_<recipient key> instead of
	// POSTing them (the plugin's outbound.mediator_mode).
	MediatorMode bool
	Stale        time.Duration // mediator mode: silence after which an instance's keys may move
	// DenyPrivate refuses receivers at loopback, private and link-local addresses (SSRF guard).
	DenyPrivate bool
	// PooledClient sends every delivery through the pooled fasthttp client, one goroutine per
	// delivery, instead of the event loops (HERALD_HTTP_CLIENT=pooled).
	PooledClient bool
	// Endpoints are the per-endpoint delivery rules (HERALD_ENDPOINTS): signing, limits, breaker.
	Endpoints []endpoint.Rule
	LogFormat string
	LogLevel  string
}

// endpointsVar is HERALD_ENDPOINTS, read the same way by every command that delivers over HTTP.
var endpointsVar = Var{"HERALD_ENDPOINTS", "", "per-endpoint rules, a JSON array or a file holding one: [{\"url\": prefix, \"secret\": \"whsec_...\", \"rate\", \"burst\", \"concurrency\", \"break_after\", \"cooldown\", \"on_gone\"}] (README: Endpoints)"}

// DeliverVars lists every variable `herald deliver` reads, in the order --help shows them.
var DeliverVars = []Var{
	{"REDIS_SERVER_URL", "(required)", "Redis URL, redis:// or rediss://, user:pass@ optional; a cluster is detected"},
	{"TOPIC_PREFIX", "acapy", "queues are <prefix>_outbound and <prefix>_outbound_retry"},
	{"HERALD_SOURCE", "(REDIS_SERVER_URL)", "broker to take outbound entries from: redis://, nats://, kafka://host:port[,host:port], amqp:// (see README: Brokers)"},
	{"HERALD_PLUGIN_CONFIG", "", "plugin YAML; its herald.source is read when HERALD_SOURCE is unset"},
	{"STATUS_ENDPOINT_HOST", "", "status server host; served only when HOST, PORT and API_KEY are all set"},
	{"STATUS_ENDPOINT_PORT", "", "status server port"},
	{"STATUS_ENDPOINT_API_KEY", "", "value the access_token header must carry"},
	{"HERALD_DELIVERY_MODE", "at-least-once", "at-least-once (in-flight list + lease) or at-most-once (BLMPOP, the reference's)"},
	{"HERALD_CONCURRENCY", "256", "deliveries in flight at once"},
	{"HERALD_BATCH", "256", "most messages taken from the source in one round trip"},
	{"HERALD_TIMEOUT", "10s", "timeout of one delivery"},
	{"HERALD_HTTP_CLIENT", "event-loop", "event-loop (plain-http POSTs from one epoll loop per core; https and ws through the pooled client) or pooled (everything through the pooled client)"},
	{"HERALD_DRAIN_TIMEOUT", "15s", "on SIGTERM, how long started deliveries may finish"},
	{"HERALD_LEASE", "15s", "an instance silent this long is dead; its in-flight messages return to the queue"},
	{"HERALD_DEAD_LETTER_LIST", "{<prefix>_outbound}:dead", "list receiving undeliverable entries with the reason"},
	{"HERALD_ON_EXHAUSTED", "dead-letter", "after 5 retries: dead-letter, or drop (the reference's behaviour)"},
	{"HERALD_INSTANCE", "(random)", "name of this instance in lease and in-flight keys"},
	endpointsVar,
	{"HERALD_LOG_FORMAT", "text", "text or json"},
	{"HERALD_LOG_LEVEL", "info", "debug, info, warn or error"},
}

type reader struct {
	env Env
	err error
}

func (r *reader) str(key, def string) string {
	if v, ok := r.env(key); ok && v != "" {
		return v
	}
	return def
}

func (r *reader) fail(key, format string, a ...any) {
	if r.err == nil {
		r.err = &Error{Key: key, Reason: fmt.Sprintf(format, a...)}
	}
}

func (r *reader) positive(key string, def int) int {
	v := r.str(key, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		r.fail(key, "want a positive whole number, got %q", v)
		return def
	}
	return n
}

func (r *reader) duration(key string, def time.Duration) time.Duration {
	v := r.str(key, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		// A bare number is seconds, as Python services usually take it.
		if f, ferr := strconv.ParseFloat(v, 64); ferr == nil {
			d, err = time.Duration(f*float64(time.Second)), nil
		}
	}
	if err != nil || d <= 0 {
		r.fail(key, "want a positive duration such as 10s or 500ms, got %q", v)
		return def
	}
	return d
}

func (r *reader) oneOf(key, def string, allowed ...string) string {
	v := r.str(key, def)
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	r.fail(key, "want one of %s, got %q", strings.Join(allowed, ", "), v)
	return def
}

// endpoints reads HERALD_ENDPOINTS, the per-endpoint delivery rules.
func (r *reader) endpoints() []endpoint.Rule {
	rules, err := endpoint.ParseRules(r.str("HERALD_ENDPOINTS", ""))
	if err != nil {
		r.fail("HERALD_ENDPOINTS", "%v", err)
	}
	return rules
}

func (r *reader) redis() Redis {
	u := r.str("REDIS_SERVER_URL", "")
	if u == "" {
		r.fail("REDIS_SERVER_URL", "not set; want redis://[user:pass@]host:port (No Redis host/connection provided.)")
	} else if err := CheckRedisURL(u); err != nil {
		r.fail("REDIS_SERVER_URL", "%v", err)
	}
	prefix := r.str("TOPIC_PREFIX", "acapy")
	return Redis{URL: u, TopicPrefix: prefix}
}

func (r *reader) broker(key, s string) Broker {
	b, err := ParseBroker(key, s)
	if err != nil && r.err == nil {
		r.err = err
	}
	return b
}

func (r *reader) status() Status {
	s := Status{
		Host:   r.str("STATUS_ENDPOINT_HOST", ""),
		Port:   r.str("STATUS_ENDPOINT_PORT", ""),
		APIKey: r.str("STATUS_ENDPOINT_API_KEY", ""),
	}
	if s.Enabled() {
		if p, err := strconv.Atoi(s.Port); err != nil || p < 0 || p > 65535 {
			r.fail("STATUS_ENDPOINT_PORT", "want a port number 0-65535, got %q", s.Port)
		}
	}
	return s
}

// CheckRedisURL rejects what cannot name a Redis server, without connecting.
func CheckRedisURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %v", err)
	}
	switch u.Scheme {
	case "redis", "rediss":
	case "unix":
		if u.Path == "" {
			return fmt.Errorf("unix URL %q has no socket path", redact(u))
		}
		return nil
	default:
		return fmt.Errorf("scheme %q is not redis:// or rediss:// in %q", u.Scheme, redact(u))
	}
	if u.Hostname() == "" {
		return fmt.Errorf("no host in %q", redact(u))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n <= 0 || n > 65535 {
			return fmt.Errorf("bad port %q in %q", p, redact(u))
		}
	}
	return nil
}

// redact hides a password so that the one-line error can be logged safely.
func redact(u *url.URL) string { return u.Redacted() }

// RedactURL returns s with any password replaced, for logs.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// LoadDeliver reads and validates the configuration of `herald deliver`.
func LoadDeliver(env Env) (Deliver, error) {
	r := &reader{env: env}
	var plugin Plugin
	path := r.str("HERALD_PLUGIN_CONFIG", "")
	if path != "" {
		p, err := LoadPluginFile(path)
		if err != nil {
			return Deliver{}, err
		}
		plugin = p
	}
	src := r.str("HERALD_SOURCE", plugin.Herald.Source)
	var source Broker
	if src != "" {
		source = r.broker("HERALD_SOURCE", src)
	}
	// Redis is needed when it is the source, and in mediator mode (the recipient-key lists).
	needRedis := source.Kind == "" || source.Kind == KindRedis || r.str("HERALD_MEDIATOR_MODE", "") == "true"
	var redis Redis
	if source.Kind == KindRedis && r.str("REDIS_SERVER_URL", "") == "" {
		redis = Redis{URL: source.URL, TopicPrefix: r.str("TOPIC_PREFIX", "acapy")}
	} else if needRedis {
		redis = r.redis()
	} else {
		redis = Redis{URL: r.str("REDIS_SERVER_URL", ""), TopicPrefix: r.str("TOPIC_PREFIX", "acapy")}
	}
	if source.Kind == "" {
		source = Broker{Kind: KindRedis, URL: redis.URL, Params: map[string]string{}}
	}
	c := Deliver{
		Redis:        redis,
		Source:       source,
		PluginFile:   path,
		Status:       r.status(),
		Mode:         r.oneOf("HERALD_DELIVERY_MODE", "at-least-once", "at-least-once", "at-most-once"),
		Concurrency:  r.positive("HERALD_CONCURRENCY", 256),
		Batch:        r.positive("HERALD_BATCH", 256),
		Timeout:      r.duration("HERALD_TIMEOUT", 10*time.Second),
		DrainTimeout: r.duration("HERALD_DRAIN_TIMEOUT", 15*time.Second),
		Lease:        r.duration("HERALD_LEASE", 15*time.Second),
		DeadLetter:   r.str("HERALD_DEAD_LETTER_LIST", ""),
		Instance:     r.str("HERALD_INSTANCE", ""),
		LogFormat:    r.oneOf("HERALD_LOG_FORMAT", "text", "text", "json"),
		LogLevel:     r.oneOf("HERALD_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
	}
	c.DropExhausted = r.oneOf("HERALD_ON_EXHAUSTED", "dead-letter", "dead-letter", "drop") == "drop"
	c.MediatorMode = r.oneOf("HERALD_MEDIATOR_MODE", "false", "false", "true") == "true"
	c.Stale = r.duration("HERALD_STALE_AFTER", 15*time.Second)
	c.DenyPrivate = r.oneOf("HERALD_DENY_PRIVATE", "false", "false", "true") == "true"
	c.PooledClient = r.oneOf("HERALD_HTTP_CLIENT", "event-loop", "event-loop", "pooled") == "pooled"
	c.Endpoints = r.endpoints()
	if c.Batch > 1000 {
		r.fail("HERALD_BATCH", "at most 1000, got %d", c.Batch)
	}
	if c.Lease < time.Second {
		r.fail("HERALD_LEASE", "at least 1s, got %s", c.Lease)
	}
	return c, r.err
}

// Listener is one entry of INBOUND_TRANSPORT_CONFIG.
type Listener struct {
	Transport string // "http" or "ws"
	Host      string
	Port      int
}

// Addr is host:port for net.Listen.
func (l Listener) Addr() string { return net.JoinHostPort(l.Host, strconv.Itoa(l.Port)) }

// Relay is the configuration of `herald relay`.
type Relay struct {
	Redis     Redis
	Status    Status
	Listeners []Listener

	InboundTopic    string        // lists are <topic>_<recipient key>
	DirectResponses []string      // lists read for direct responses
	ResponseWait    time.Duration // how long a request waits for its direct response
	MaxBody         int           // bytes; larger bodies get 413
	ReadTimeout     time.Duration // the longest a client may take to send a request
	Stale           time.Duration // silence after which an instance's keys may move
	LogFormat       string
	LogLevel        string
}

// RelayVars lists every variable `herald relay` reads, in the order --help shows them.
var RelayVars = []Var{
	{"REDIS_SERVER_URL", "(required)", "Redis URL, redis:// or rediss://, user:pass@ optional; a cluster is detected"},
	{"TOPIC_PREFIX", "acapy", "messages go to <prefix>_inbound_<recipient key>"},
	{"INBOUND_TRANSPORT_CONFIG", "(required)", `JSON list of [type, host, port], type http or ws: [["http","0.0.0.0",8021],["ws","0.0.0.0",8023]]`},
	{"STATUS_ENDPOINT_HOST", "", "status server host; served only when HOST, PORT and API_KEY are all set"},
	{"STATUS_ENDPOINT_PORT", "", "status server port"},
	{"STATUS_ENDPOINT_API_KEY", "", "value the access_token header must carry"},
	{"HERALD_DIRECT_RESPONSE_LISTS", "<prefix>_inbound_direct_response,<prefix>_inbound_direct_resp", "comma-separated lists read for direct responses (the reference relay's name and the plugin's default)"},
	{"HERALD_RESPONSE_WAIT", "15s", "how long a request asking for a direct response waits for it; then HTTP 200 with no body"},
	{"HERALD_MAX_BODY", "10485760", "largest accepted message in bytes; larger ones get 413"},
	{"HERALD_READ_TIMEOUT", "30s", "the longest a client may take to send one request (a slow client is cut off, not waited for)"},
	{"HERALD_STALE_AFTER", "15s", "an ACA-Py instance silent this long with messages pending loses its recipient keys"},
	{"HERALD_LOG_FORMAT", "text", "text or json"},
	{"HERALD_LOG_LEVEL", "info", "debug, info, warn or error"},
}

// LoadRelay reads and validates the configuration of `herald relay`.
func LoadRelay(env Env) (Relay, error) {
	r := &reader{env: env}
	c := Relay{
		Redis:        r.redis(),
		Status:       r.status(),
		Listeners:    r.listeners(),
		ResponseWait: r.duration("HERALD_RESPONSE_WAIT", 15*time.Second),
		MaxBody:      r.positive("HERALD_MAX_BODY", 10<<20),
		ReadTimeout:  r.duration("HERALD_READ_TIMEOUT", 30*time.Second),
		Stale:        r.duration("HERALD_STALE_AFTER", 15*time.Second),
		LogFormat:    r.oneOf("HERALD_LOG_FORMAT", "text", "text", "json"),
		LogLevel:     r.oneOf("HERALD_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
	}
	c.InboundTopic = c.Redis.TopicPrefix + "_inbound"
	lists := r.str("HERALD_DIRECT_RESPONSE_LISTS", c.InboundTopic+"_direct_response,"+c.InboundTopic+"_direct_resp")
	for _, l := range strings.Split(lists, ",") {
		if l = strings.TrimSpace(l); l != "" {
			c.DirectResponses = append(c.DirectResponses, l)
		}
	}
	if len(c.DirectResponses) == 0 {
		r.fail("HERALD_DIRECT_RESPONSE_LISTS", "names no list")
	}
	return c, r.err
}

func (r *reader) listeners() []Listener {
	const key = "INBOUND_TRANSPORT_CONFIG"
	v := r.str(key, "")
	if v == "" {
		r.fail(key, `not set; want e.g. [["http","0.0.0.0",8021],["ws","0.0.0.0",8023]] (No inbound transport config provided.)`)
		return nil
	}
	var raw [][]any
	if err := json.Unmarshal([]byte(v), &raw); err != nil {
		r.fail(key, "not a JSON list of [type, host, port]: %v", err)
		return nil
	}
	if len(raw) == 0 {
		r.fail(key, "lists no transport")
		return nil
	}
	var out []Listener
	for i, t := range raw {
		if len(t) != 3 {
			r.fail(key, "entry %d has %d items; want [type, host, port]", i, len(t))
			return nil
		}
		typ, _ := t[0].(string)
		host, hok := t[1].(string)
		if typ != "http" && typ != "ws" {
			r.fail(key, "entry %d: transport %v is not http or ws", i, t[0])
			return nil
		}
		if !hok {
			r.fail(key, "entry %d: host %v is not a string", i, t[1])
			return nil
		}
		port, ok := portOf(t[2])
		if !ok {
			r.fail(key, "entry %d: port %v is not a number 0-65535", i, t[2])
			return nil
		}
		out = append(out, Listener{Transport: typ, Host: host, Port: port})
	}
	return out
}

// portOf accepts 8021 and "8021", as Python's aiohttp would.
func portOf(v any) (int, bool) {
	var n int
	switch p := v.(type) {
	case float64:
		if p != float64(int(p)) {
			return 0, false
		}
		n = int(p)
	case string:
		var err error
		if n, err = strconv.Atoi(p); err != nil {
			return 0, false
		}
	default:
		return 0, false
	}
	return n, n >= 0 && n <= 65535
}

// WebhookURL is one of ACA-Py's admin.webhook_urls: a URL, and the API key ACA-Py takes after a
// '#' and sends as x-api-key.
type WebhookURL struct {
	URL, APIKey string
}

// Events is the configuration of `herald events`.
type Events struct {
	Redis  Redis
	Status Status
	Plugin Plugin
	// PluginFile is the plugin configuration file read, empty for the defaults.
	PluginFile string

	// Sink is where routed events are written: Redis unless HERALD_SINK names NATS, Kafka or
	// RabbitMQ. From, when set, is a broker whose events are routed too (bridge mode).
	Sink, From Broker
	// Key is the template of the record key (Kafka) or routing key (RabbitMQ) of every route;
	// Keys overrides it per route, by the route's template.
	Key  string
	Keys map[string]string
	// ExchangePrefix is put before a route's name to make its RabbitMQ exchange.
	ExchangePrefix string
	// NATSStream is the JetStream stream holding the routed subjects, created when missing.
	NATSStream string

	Listen       string       // address of the ingest listener
	WebhookURLs  []WebhookURL // where deliver_webhook sends the mapped topics
	RecordEvents bool         // a webhook POST with a state also makes the acapy::record event
	MaxBody      int          // bytes; larger requests get 413
	ReadTimeout  time.Duration
	LogFormat    string
	LogLevel     string
}

// EventsVars lists every variable `herald events` reads, in the order --help shows them.
var EventsVars = []Var{
	{"REDIS_SERVER_URL", "(the plugin's connection_url)", "Redis URL, redis:// or rediss://; overrides redis_queue.connection.connection_url"},
	{"HERALD_PLUGIN_CONFIG", "", "the plugin's YAML file (redis_queue: connection, inbound, outbound, event), as ACA-Py's --plugin-config; its defaults without one"},
	{"HERALD_SINK", "(the Redis URL)", "broker the routed events go to: redis://, nats://, kafka://host:port[,...], amqp:// (README: Brokers)"},
	{"HERALD_FROM", "", "bridge mode: also route the events read from this broker (nats://...?subject=, kafka://...?topic=, amqp://...?queue=, redis://...?list=)"},
	{"HERALD_KEY", "$wallet_id (Kafka), $state (RabbitMQ)", "template of the Kafka record key or RabbitMQ routing key: $wallet_id, $state, $topic, $category or a payload member"},
	{"HERALD_KEYS", "", "JSON object: per-route key templates by route template, e.g. {\"callbacks\": \"$state\"}"},
	{"HERALD_EXCHANGE_PREFIX", "", "RabbitMQ: the exchange of a route is <prefix><route template>"},
	{"HERALD_NATS_STREAM", "acapy_events", "NATS: the stream holding the routed subjects, created when missing"},
	{"HERALD_LISTEN", "127.0.0.1:8090", "address of the ingest listener (POST /topic/{topic}/, POST /v1/events)"},
	{"HERALD_WEBHOOK_URLS", "", "comma-separated admin.webhook_urls (url or url#apikey) for deliver_webhook"},
	{"HERALD_RECORD_EVENTS", "true", "a webhook POST whose body has a state also makes acapy::record::{topic}::{state}"},
	{"HERALD_MAX_BODY", "10485760", "largest accepted request in bytes; larger ones get 413"},
	{"HERALD_READ_TIMEOUT", "30s", "the longest a client may take to send one request (a slow client is cut off, not waited for)"},
	{"STATUS_ENDPOINT_HOST", "", "status server host; served only when HOST, PORT and API_KEY are all set"},
	{"STATUS_ENDPOINT_PORT", "", "status server port"},
	{"STATUS_ENDPOINT_API_KEY", "", "value the access_token header must carry"},
	{"HERALD_LOG_FORMAT", "text", "text or json"},
	{"HERALD_LOG_LEVEL", "info", "debug, info, warn or error"},
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// LoadEvents reads and validates the configuration of `herald events`.
func LoadEvents(env Env) (Events, error) {
	r := &reader{env: env}
	c := Events{
		Status:       r.status(),
		Listen:       r.str("HERALD_LISTEN", "127.0.0.1:8090"),
		RecordEvents: r.oneOf("HERALD_RECORD_EVENTS", "true", "true", "false") == "true",
		MaxBody:      r.positive("HERALD_MAX_BODY", 10<<20),
		ReadTimeout:  r.duration("HERALD_READ_TIMEOUT", 30*time.Second),
		LogFormat:    r.oneOf("HERALD_LOG_FORMAT", "text", "text", "json"),
		LogLevel:     r.oneOf("HERALD_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
		Plugin:       DefaultPlugin(),
	}
	if path := r.str("HERALD_PLUGIN_CONFIG", ""); path != "" {
		p, err := LoadPluginFile(path)
		if err != nil && r.err == nil {
			r.err = err
		}
		c.Plugin, c.PluginFile = p, path
	}
	h := c.Plugin.Herald
	if s := r.str("HERALD_SINK", h.Sink); s != "" {
		c.Sink = r.broker("HERALD_SINK", s)
	}
	if s := r.str("HERALD_FROM", h.From); s != "" {
		c.From = r.broker("HERALD_FROM", s)
	}
	c.Redis.URL = r.str("REDIS_SERVER_URL", "")
	if c.Redis.URL == "" && c.PluginFile != "" {
		c.Redis.URL = c.Plugin.ConnectionURL
	}
	switch {
	case c.Sink.Kind != "":
		// The sink's URL names its broker (a bridge source names its own): REDIS_SERVER_URL
		// and the file's connection_url are not used.
		c.Redis.URL = ""
	case c.Redis.URL == "":
		r.fail("REDIS_SERVER_URL", "not set, and no plugin configuration names a connection_url")
	default:
		if err := CheckRedisURL(c.Redis.URL); err != nil {
			r.fail("REDIS_SERVER_URL", "%v", err)
		}
	}
	if c.Sink.Kind == "" {
		c.Sink = Broker{Kind: KindRedis, URL: c.Redis.URL, Params: map[string]string{}}
	}
	if c.Sink.Kind == KindNATS && !c.Plugin.TopicMapsSet {
		c.Plugin.EventTopicMaps = append([]engine.Route(nil), DefaultNATSEventTopicMaps...)
	}
	if c.From.Kind != "" && c.From.Params[QueueParam[c.From.Kind]] == "" {
		r.fail("HERALD_FROM", "a %s source names what to read with ?%s=", c.From.Kind, QueueParam[c.From.Kind])
	}
	c.Key = r.str("HERALD_KEY", h.Key)
	if c.Key == "" {
		switch c.Sink.Kind {
		case KindKafka:
			c.Key = "$wallet_id"
		case KindAMQP:
			c.Key = "$state"
		}
	}
	c.Keys = h.Keys
	if s := r.str("HERALD_KEYS", ""); s != "" {
		c.Keys = nil
		if err := json.Unmarshal([]byte(s), &c.Keys); err != nil {
			r.fail("HERALD_KEYS", "want a JSON object of route template to key template: %v", err)
		}
	}
	for route, k := range c.Keys {
		if _, err := engine.ParseTemplate(k); err != nil {
			r.fail("HERALD_KEYS", "key template %q of route %q: %v", k, route, err)
		}
	}
	if _, err := engine.ParseTemplate(c.Key); err != nil {
		r.fail("HERALD_KEY", "template %q: %v", c.Key, err)
	}
	c.ExchangePrefix = r.str("HERALD_EXCHANGE_PREFIX", h.ExchangePrefix)
	c.NATSStream = r.str("HERALD_NATS_STREAM", orDefault(h.NATSStream, "acapy_events"))
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		r.fail("HERALD_LISTEN", "want host:port, got %q", c.Listen)
	}
	for _, u := range strings.Split(r.str("HERALD_WEBHOOK_URLS", ""), ",") {
		if u = strings.TrimSpace(u); u == "" {
			continue
		}
		w := WebhookURL{URL: u}
		if i := strings.IndexByte(u, '#'); i >= 0 {
			w.URL, w.APIKey = u[:i], u[i+1:]
		}
		if p, err := url.Parse(w.URL); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			r.fail("HERALD_WEBHOOK_URLS", "want http(s)://host[:port][/path][#apikey], got %q", w.URL)
		}
		c.WebhookURLs = append(c.WebhookURLs, w)
	}
	return c, r.err
}

// Waypoint is the configuration of `herald waypoint`.
type Waypoint struct {
	// NATSURL is the JetStream server; Stream and Subject are where the state events are.
	NATSURL, Stream, Subject string
	CredsFile                string // NATS credentials file, empty for none
	// Source, when set, is a redis:// list to read events from instead of NATS.
	Source Broker

	Listen    string
	Timeout   time.Duration // a stream with no match closes after this long
	Ping      time.Duration // keep-alive comment interval
	LookBack  time.Duration // default look_back, and how far back the replay window reaches
	ReplayMax int           // most events the replay window holds

	GovernanceKey, TenantAdminKey []byte // admin keys; empty refuses that role
	TenantAdminGroup              string // when set, tenant-admin sees only this group's events
	JWTSecret                     []byte // HS256 secret of tenant tokens; empty refuses tenants
	MaxStreams                    int
	LogFormat, LogLevel           string
}

// WaypointVars lists every variable `herald waypoint` reads, in the order --help shows them.
var WaypointVars = []Var{
	{"NATS_SERVER", "nats://127.0.0.1:4222", "NATS server(s) with JetStream, comma-separated"},
	{"NATS_STATE_STREAM", "cloudapi_aries_state_monitoring", "JetStream stream holding the state events"},
	{"NATS_STATE_SUBJECT", "cloudapi.aries.state_monitoring", "subject prefix: <prefix>.<group_id>.<wallet_id>.<topic>.<state>"},
	{"NATS_CREDS_FILE", "", "NATS credentials file (.creds)"},
	{"HERALD_SOURCE", "(NATS)", "redis://host:port?list=NAME: read event entries from this Redis list (filled by herald events) instead of NATS"},
	{"HERALD_LISTEN", "127.0.0.1:3011", "address of the SSE listener (GET /v1/sse/..., /health/live, /health/ready, /metrics)"},
	{"SSE_TIMEOUT", "60", "seconds a stream waits for its event before closing with no data"},
	{"HERALD_SSE_PING", "15s", "time between keep-alive comments"},
	{"SSE_LOOK_BACK", "60", "default look_back in seconds, and the age of the oldest event kept for it"},
	{"HERALD_REPLAY_MAX", "200000", "most events kept for look_back; the oldest go first"},
	{"HERALD_MAX_STREAMS", "100000", "most streams open at once; more get 503"},
	{"ACAPY_GOVERNANCE_AGENT_API_KEY", "", "key of role governance (x-api-key: governance.<key>); unset refuses the role"},
	{"ACAPY_TENANT_AGENT_API_KEY", "", "key of role tenant-admin (x-api-key: tenant-admin.<key>); unset refuses the role"},
	{"HERALD_TENANT_ADMIN_GROUP", "", "when set, tenant-admin streams see only events of this group_id"},
	{"ACAPY_MULTITENANT_JWT_SECRET", "", "HS256 secret of tenant tokens (x-api-key: tenant.<jwt>); unset refuses tenants"},
	{"HERALD_LOG_FORMAT", "text", "text or json"},
	{"HERALD_LOG_LEVEL", "info", "debug, info, warn or error"},
}

// LoadWaypoint reads and validates the configuration of `herald waypoint`.
func LoadWaypoint(env Env) (Waypoint, error) {
	r := &reader{env: env}
	c := Waypoint{
		NATSURL:          r.str("NATS_SERVER", "nats://127.0.0.1:4222"),
		Stream:           r.str("NATS_STATE_STREAM", "cloudapi_aries_state_monitoring"),
		Subject:          r.str("NATS_STATE_SUBJECT", "cloudapi.aries.state_monitoring"),
		CredsFile:        r.str("NATS_CREDS_FILE", ""),
		Listen:           r.str("HERALD_LISTEN", "127.0.0.1:3011"),
		Timeout:          r.duration("SSE_TIMEOUT", 60*time.Second),
		Ping:             r.duration("HERALD_SSE_PING", 15*time.Second),
		LookBack:         r.duration("SSE_LOOK_BACK", 60*time.Second),
		ReplayMax:        r.positive("HERALD_REPLAY_MAX", 200000),
		MaxStreams:       r.positive("HERALD_MAX_STREAMS", 100000),
		GovernanceKey:    []byte(r.str("ACAPY_GOVERNANCE_AGENT_API_KEY", "")),
		TenantAdminKey:   []byte(r.str("ACAPY_TENANT_AGENT_API_KEY", "")),
		TenantAdminGroup: r.str("HERALD_TENANT_ADMIN_GROUP", ""),
		JWTSecret:        []byte(r.str("ACAPY_MULTITENANT_JWT_SECRET", "")),
		LogFormat:        r.oneOf("HERALD_LOG_FORMAT", "text", "text", "json"),
		LogLevel:         r.oneOf("HERALD_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		r.fail("HERALD_LISTEN", "want host:port, got %q", c.Listen)
	}
	if src := r.str("HERALD_SOURCE", ""); src != "" {
		c.Source = r.broker("HERALD_SOURCE", src)
		switch {
		case c.Source.Kind == "":
		case c.Source.Kind != KindRedis:
			r.fail("HERALD_SOURCE", "waypoint reads NATS (NATS_SERVER) or a redis:// list, not %s", c.Source.Kind)
		case c.Source.Params["list"] == "":
			r.fail("HERALD_SOURCE", "name the list to read: redis://host:port?list=NAME")
		}
	}
	if strings.ContainsAny(c.Subject, "*> ") || strings.HasSuffix(c.Subject, ".") || c.Subject == "" {
		r.fail("NATS_STATE_SUBJECT", "want a literal subject prefix such as cloudapi.aries.state_monitoring, got %q", c.Subject)
	}
	if strings.ContainsAny(c.Stream, ".*> ") {
		r.fail("NATS_STATE_STREAM", "a stream name has no '.', '*', '>' or space, got %q", c.Stream)
	}
	if c.CredsFile != "" {
		if _, err := os.Stat(c.CredsFile); err != nil {
			r.fail("NATS_CREDS_FILE", "%v", err)
		}
	}
	if len(c.GovernanceKey) == 0 && len(c.TenantAdminKey) == 0 && len(c.JWTSecret) == 0 {
		r.fail("ACAPY_MULTITENANT_JWT_SECRET", "no role could ever open a stream: set it, ACAPY_GOVERNANCE_AGENT_API_KEY or ACAPY_TENANT_AGENT_API_KEY")
	}
	return c, r.err
}

// Callbacks is the configuration of `herald callbacks`, in the Anchor Platform's own keys.
type Callbacks struct {
	Seeds []string // events.queue.kafka.bootstrap_server
	Topic string   // the Kafka topic carrying every event (TRANSACTION)

	ClientCallbacks bool // event_processor.client_status_callback.enabled
	BusinessServer  bool // event_processor.callback_api_request.enabled

	BaseURL       string // callback_api.base_url
	AuthType      string // callback_api.auth.type: none, api_key or jwt
	AuthSecret    string // SECRET_CALLBACK_API_AUTH_SECRET
	JWTExpiration time.Duration
	JWTHeader     string
	APIKeyHeader  string

	SigningSeed string // SECRET_SEP10_SIGNING_SEED
	Clients     []CallbackClient

	Timeout     time.Duration
	Attempts    int           // deliveries tried before the dead-letter topic
	BackoffBase time.Duration // first wait between attempts, doubled each time
	BackoffCap  time.Duration
	Lanes       int // transactions delivered at once per destination
	Endpoints   []endpoint.Rule
	Status      Status
	LogFormat   string
	LogLevel    string
}

// CallbackClient is one wallet of clients: its callback URL per SEP.
type CallbackClient struct {
	Name, Domain string
	URLs         map[string]string // sep6, sep24, sep31, sep12
}

// CallbacksVars lists every variable `herald callbacks` reads, in the order --help shows them.
var CallbacksVars = []Var{
	{"STELLAR_ANCHOR_CONFIG", "", "the Anchor Platform's YAML (file:/path or a path): events, event_processor, callback_api, clients"},
	{"EVENTS_QUEUE_KAFKA_BOOTSTRAP_SERVER", "(required)", "Kafka brokers, host:port[,host:port]"},
	{"EVENT_PROCESSOR_CLIENT_STATUS_CALLBACK_ENABLED", "false", "send signed status callbacks to the clients' callback_urls"},
	{"EVENT_PROCESSOR_CALLBACK_API_REQUEST_ENABLED", "false", "send every event to the business server, POST {callback_api.base_url}/event"},
	{"CALLBACK_API_BASE_URL", "", "the business server"},
	{"CALLBACK_API_AUTH_TYPE", "none", "none, api_key or jwt"},
	{"CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS", "30000", "lifetime of each token (at least 5000)"},
	{"CALLBACK_API_AUTH_JWT_HTTP_HEADER", "Authorization", "header carrying Bearer <jwt>"},
	{"CALLBACK_API_AUTH_API_KEY_HTTP_HEADER", "X-Api-Key", "header carrying the API key"},
	{"SECRET_CALLBACK_API_AUTH_SECRET", "", "the API key, or the JWT's HS256 secret (at least 32 bytes)"},
	{"SECRET_SEP10_SIGNING_SEED", "", "Stellar secret seed S... signing client callbacks"},
	{"HERALD_TOPIC", "TRANSACTION", "the Kafka topic of the events"},
	{"HERALD_TIMEOUT", "10s", "timeout of one callback"},
	{"HERALD_ATTEMPTS", "8", "attempts of one callback before it goes to the dead-letter topic <topic>.<group>.dead"},
	{"HERALD_BACKOFF", "1s", "first wait between attempts, doubled each time"},
	{"HERALD_BACKOFF_MAX", "300s", "longest wait between attempts"},
	{"HERALD_LANES", "64", "transactions delivered at once per destination (each transaction's events in order)"},
	endpointsVar,
	{"STATUS_ENDPOINT_HOST", "", "status server host; served only when HOST, PORT and API_KEY are all set"},
	{"STATUS_ENDPOINT_PORT", "", "status server port"},
	{"STATUS_ENDPOINT_API_KEY", "", "value the access_token header must carry"},
	{"HERALD_LOG_FORMAT", "text", "text or json"},
	{"HERALD_LOG_LEVEL", "info", "debug, info, warn or error"},
}

// anchorFile is the part of the Anchor Platform's configuration the callbacks read.
type anchorFile struct {
	Events struct {
		Queue struct {
			Kafka struct {
				BootstrapServer string `yaml:"bootstrap_server"`
			} `yaml:"kafka"`
		} `yaml:"queue"`
	} `yaml:"events"`
	EventProcessor struct {
		ClientStatusCallback struct {
			Enabled *bool `yaml:"enabled"`
		} `yaml:"client_status_callback"`
		CallbackAPIRequest struct {
			Enabled *bool `yaml:"enabled"`
		} `yaml:"callback_api_request"`
	} `yaml:"event_processor"`
	CallbackAPI struct {
		BaseURL string `yaml:"base_url"`
		Auth    struct {
			Type string `yaml:"type"`
			JWT  struct {
				ExpirationMilliseconds int64  `yaml:"expiration_milliseconds"`
				HTTPHeader             string `yaml:"http_header"`
			} `yaml:"jwt"`
			APIKey struct {
				HTTPHeader string `yaml:"http_header"`
			} `yaml:"api_key"`
		} `yaml:"auth"`
	} `yaml:"callback_api"`
	Clients []struct {
		Name         string            `yaml:"name"`
		Domain       string            `yaml:"domain"`
		Domains      []string          `yaml:"domains"`
		CallbackURL  string            `yaml:"callback_url"`
		CallbackURLs map[string]string `yaml:"callback_urls"`
	} `yaml:"clients"`
}

// LoadCallbacks reads and validates the configuration of `herald callbacks`: the YAML file first,
// then the environment variables of the same keys, as the Anchor Platform does.
func LoadCallbacks(env Env) (Callbacks, error) {
	r := &reader{env: env}
	var f anchorFile
	if path := strings.TrimPrefix(r.str("STELLAR_ANCHOR_CONFIG", ""), "file:"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return Callbacks{}, &Error{Key: "STELLAR_ANCHOR_CONFIG", Reason: err.Error()}
		}
		if err := yaml.Unmarshal(b, &f); err != nil {
			return Callbacks{}, &Error{Key: "STELLAR_ANCHOR_CONFIG", Reason: "not the Anchor Platform's YAML: " + err.Error()}
		}
	}
	boolOf := func(key string, file *bool) bool {
		def := "false"
		if file != nil && *file {
			def = "true"
		}
		return r.oneOf(key, def, "true", "false") == "true"
	}
	c := Callbacks{
		Topic:           r.str("HERALD_TOPIC", "TRANSACTION"),
		ClientCallbacks: boolOf("EVENT_PROCESSOR_CLIENT_STATUS_CALLBACK_ENABLED", f.EventProcessor.ClientStatusCallback.Enabled),
		BusinessServer:  boolOf("EVENT_PROCESSOR_CALLBACK_API_REQUEST_ENABLED", f.EventProcessor.CallbackAPIRequest.Enabled),
		BaseURL:         strings.TrimRight(r.str("CALLBACK_API_BASE_URL", f.CallbackAPI.BaseURL), "/"),
		AuthType:        r.oneOf("CALLBACK_API_AUTH_TYPE", orDefault(f.CallbackAPI.Auth.Type, "none"), "none", "api_key", "jwt"),
		AuthSecret:      r.str("SECRET_CALLBACK_API_AUTH_SECRET", ""),
		JWTHeader:       r.str("CALLBACK_API_AUTH_JWT_HTTP_HEADER", orDefault(f.CallbackAPI.Auth.JWT.HTTPHeader, "Authorization")),
		APIKeyHeader:    r.str("CALLBACK_API_AUTH_API_KEY_HTTP_HEADER", orDefault(f.CallbackAPI.Auth.APIKey.HTTPHeader, "X-Api-Key")),
		SigningSeed:     r.str("SECRET_SEP10_SIGNING_SEED", ""),
		Timeout:         r.duration("HERALD_TIMEOUT", 10*time.Second),
		Attempts:        r.positive("HERALD_ATTEMPTS", 8),
		BackoffBase:     r.duration("HERALD_BACKOFF", time.Second),
		BackoffCap:      r.duration("HERALD_BACKOFF_MAX", 300*time.Second),
		Lanes:           r.positive("HERALD_LANES", 64),
		Endpoints:       r.endpoints(),
		Status:          r.status(),
		LogFormat:       r.oneOf("HERALD_LOG_FORMAT", "text", "text", "json"),
		LogLevel:        r.oneOf("HERALD_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
	}
	seeds := r.str("EVENTS_QUEUE_KAFKA_BOOTSTRAP_SERVER", f.Events.Queue.Kafka.BootstrapServer)
	for _, s := range strings.Split(seeds, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if err := checkHostPort(s); err != nil {
				r.fail("EVENTS_QUEUE_KAFKA_BOOTSTRAP_SERVER", "%v", err)
			}
			c.Seeds = append(c.Seeds, s)
		}
	}
	if len(c.Seeds) == 0 {
		r.fail("EVENTS_QUEUE_KAFKA_BOOTSTRAP_SERVER", "not set (events.queue.kafka.bootstrap_server): want host:port")
	}
	ms := f.CallbackAPI.Auth.JWT.ExpirationMilliseconds
	if ms == 0 {
		ms = 30000
	}
	if v := r.str("CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS", ""); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			r.fail("CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS", "want a whole number of milliseconds, got %q", v)
		}
		ms = n
	}
	c.JWTExpiration = time.Duration(ms) * time.Millisecond
	if !c.ClientCallbacks && !c.BusinessServer {
		r.fail("EVENT_PROCESSOR_CALLBACK_API_REQUEST_ENABLED", "neither it nor EVENT_PROCESSOR_CLIENT_STATUS_CALLBACK_ENABLED is true: nothing would be sent")
	}
	if c.BusinessServer {
		if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			r.fail("CALLBACK_API_BASE_URL", "want http(s)://host[:port][/path] (callback_api.base_url), got %q", c.BaseURL)
		}
		switch c.AuthType {
		case "jwt":
			if len(c.AuthSecret) < 32 {
				r.fail("SECRET_CALLBACK_API_AUTH_SECRET", "the JWT secret is %d bytes; at least 32 are needed", len(c.AuthSecret))
			}
			if c.JWTExpiration < 5000*time.Millisecond {
				r.fail("CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS", "at least 5000, got %d", ms)
			}
		case "api_key":
			if c.AuthSecret == "" {
				r.fail("SECRET_CALLBACK_API_AUTH_SECRET", "not set: api_key authentication needs the key")
			}
		}
	}
	if c.ClientCallbacks {
		if c.SigningSeed == "" {
			r.fail("SECRET_SEP10_SIGNING_SEED", "not set: client callbacks are signed with it")
		}
		if len(f.Clients) == 0 {
			r.fail("STELLAR_ANCHOR_CONFIG", "client status callbacks are enabled but the file lists no clients")
		}
	}
	for i, fc := range f.Clients {
		cl := CallbackClient{Name: fc.Name, Domain: fc.Domain, URLs: map[string]string{}}
		if cl.Domain == "" && len(fc.Domains) > 0 {
			cl.Domain = fc.Domains[0]
		}
		for sep, u := range fc.CallbackURLs {
			cl.URLs[sep] = u
		}
		if fc.CallbackURL != "" && len(cl.URLs) == 0 { // the older single-URL form
			for _, sep := range []string{"sep6", "sep24", "sep31", "sep12"} {
				cl.URLs[sep] = fc.CallbackURL
			}
		}
		if cl.Name == "" || strings.Trim(cl.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
			r.fail("STELLAR_ANCHOR_CONFIG", "clients[%d] name %q: want letters, digits, '.', '_' or '-' (it names a consumer group and a topic)", i, cl.Name)
		}
		for sep, u := range cl.URLs {
			if u == "" {
				continue
			}
			if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
				r.fail("STELLAR_ANCHOR_CONFIG", "clients[%d] (%s) callback_urls.%s: want http(s)://host/..., got %q", i, cl.Name, sep, u)
			}
		}
		c.Clients = append(c.Clients, cl)
	}
	return c, r.err
}
