package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Broker kinds, from the scheme of a broker URL.
const (
	KindRedis = "redis"
	KindNATS  = "nats"
	KindKafka = "kafka"
	KindAMQP  = "amqp"
)

// Broker is a broker named by URL: redis:// or rediss://, nats:// or tls://, kafka:// (seeds
// separated by commas), amqp:// or amqps://. Query parameters name what to read or write when the
// defaults do not fit; they are listed per kind by BrokerParams.
type Broker struct {
	Kind string
	// URL is the URL without Herald's query parameters, as the client library takes it.
	URL string
	// Seeds are the Kafka brokers' host:port.
	Seeds []string
	// Params are Herald's query parameters.
	Params map[string]string
}

// BrokerParams lists the query parameters each kind takes.
var BrokerParams = map[string][]string{
	KindRedis: {"list"},
	KindNATS:  {"stream", "subject", "consumer"},
	KindKafka: {"topic", "group"},
	KindAMQP:  {"queue", "exchange", "routing_key"},
}

// QueueParam is the query parameter naming what a source reads, by kind: a bridge source must
// have it; the deliverer's source defaults it to its outbound queue.
var QueueParam = map[string]string{KindRedis: "list", KindNATS: "subject", KindKafka: "topic", KindAMQP: "queue"}

// Param returns the query parameter name, or def when absent.
func (b Broker) Param(name, def string) string {
	if v := b.Params[name]; v != "" {
		return v
	}
	return def
}

// Redacted is the URL with any password hidden, for logs.
func (b Broker) Redacted() string { return RedactURL(b.URL) }

// ParseBroker reads a broker URL; key names the setting in errors.
func ParseBroker(key, s string) (Broker, error) {
	// A Kafka URL lists several seeds, which url.Parse would take for a bad port: it parses a
	// stand-in host and the seeds are read apart.
	var seeds string
	if rest, ok := strings.CutPrefix(s, "kafka://"); ok {
		end := strings.IndexAny(rest, "/?#")
		if end < 0 {
			end = len(rest)
		}
		seeds, s = rest[:end], "kafka://seeds"+rest[end:]
	}
	u, err := url.Parse(s)
	if err != nil {
		// The parser's message quotes the whole URL, password included: only its reason is kept.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Broker{}, &Error{Key: key, Reason: fmt.Sprintf("not a URL: %v", err)}
	}
	var b Broker
	switch u.Scheme {
	case "redis", "rediss", "unix":
		b.Kind = KindRedis
	case "nats", "tls":
		b.Kind = KindNATS
	case "kafka":
		b.Kind = KindKafka
	case "amqp", "amqps":
		b.Kind = KindAMQP
	default:
		return Broker{}, &Error{Key: key, Reason: fmt.Sprintf("scheme %q is none of redis://, rediss://, nats://, kafka://, amqp://, amqps:// in %q", u.Scheme, u.Redacted())}
	}
	b.Params = map[string]string{}
	q := u.Query()
	kept := url.Values{}
	for name, vs := range q {
		known := false
		for _, p := range BrokerParams[b.Kind] {
			known = known || p == name
		}
		switch {
		case known:
			b.Params[name] = vs[len(vs)-1]
		case b.Kind == KindRedis || b.Kind == KindAMQP:
			// The client libraries read options of their own from the query (db, heartbeat...).
			kept[name] = vs
		default:
			return Broker{}, &Error{Key: key, Reason: fmt.Sprintf("unknown parameter %q in %q; a %s URL takes %s", name, u.Redacted(), b.Kind, strings.Join(BrokerParams[b.Kind], ", "))}
		}
	}
	u.RawQuery = kept.Encode()
	if b.Kind == KindKafka {
		u.Host = seeds
	}
	b.URL = u.String()
	switch b.Kind {
	case KindRedis:
		if err := CheckRedisURL(b.URL); err != nil {
			return Broker{}, &Error{Key: key, Reason: err.Error()}
		}
	case KindKafka:
		for _, h := range strings.Split(u.Host, ",") {
			if err := checkHostPort(h); err != nil {
				return Broker{}, &Error{Key: key, Reason: fmt.Sprintf("seed %q in %q: %v", h, u.Redacted(), err)}
			}
			b.Seeds = append(b.Seeds, h)
		}
	default:
		if err := checkHostPort(u.Host); err != nil {
			return Broker{}, &Error{Key: key, Reason: fmt.Sprintf("%v in %q", err, u.Redacted())}
		}
	}
	return b, nil
}

func checkHostPort(h string) error {
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		return fmt.Errorf("want host:port")
	}
	if host == "" {
		return fmt.Errorf("no host")
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}
