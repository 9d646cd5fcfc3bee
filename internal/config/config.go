// Package config reads a service's settings from the environment the reference ACA-Py services
// use, plus Herald's own HERALD_* variables, and validates them so that a bad value stops the
// process at once with one line naming the key.
package config

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
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

	Mode          string
	Concurrency   int
	Batch         int
	Timeout       time.Duration
	DrainTimeout  time.Duration
	Lease         time.Duration
	DeadLetter    string
	DropExhausted bool
	Instance      string
	LogFormat     string
	LogLevel      string
}

// DeliverVars lists every variable `herald deliver` reads, in the order --help shows them.
var DeliverVars = []Var{
	{"REDIS_SERVER_URL", "(required)", "Redis URL, redis:// or rediss://, user:pass@ optional; a cluster is detected"},
	{"TOPIC_PREFIX", "acapy", "queues are <prefix>_outbound and <prefix>_outbound_retry"},
	{"STATUS_ENDPOINT_HOST", "", "status server host; served only when HOST, PORT and API_KEY are all set"},
	{"STATUS_ENDPOINT_PORT", "", "status server port"},
	{"STATUS_ENDPOINT_API_KEY", "", "value the access_token header must carry"},
	{"HERALD_DELIVERY_MODE", "at-least-once", "at-least-once (in-flight list + lease) or at-most-once (BLMPOP, the reference's)"},
	{"HERALD_CONCURRENCY", "256", "deliveries in flight at once"},
	{"HERALD_BATCH", "64", "messages taken from Redis per round trip"},
	{"HERALD_TIMEOUT", "10s", "timeout of one delivery"},
	{"HERALD_DRAIN_TIMEOUT", "15s", "on SIGTERM, how long started deliveries may finish"},
	{"HERALD_LEASE", "15s", "an instance silent this long is dead; its in-flight messages return to the queue"},
	{"HERALD_DEAD_LETTER_LIST", "{<prefix>_outbound}:dead", "list receiving undeliverable entries with the reason"},
	{"HERALD_ON_EXHAUSTED", "dead-letter", "after 5 retries: dead-letter, or drop (the reference's behaviour)"},
	{"HERALD_INSTANCE", "(random)", "name of this instance in lease and in-flight keys"},
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
	c := Deliver{
		Redis:        r.redis(),
		Status:       r.status(),
		Mode:         r.oneOf("HERALD_DELIVERY_MODE", "at-least-once", "at-least-once", "at-most-once"),
		Concurrency:  r.positive("HERALD_CONCURRENCY", 256),
		Batch:        r.positive("HERALD_BATCH", 64),
		Timeout:      r.duration("HERALD_TIMEOUT", 10*time.Second),
		DrainTimeout: r.duration("HERALD_DRAIN_TIMEOUT", 15*time.Second),
		Lease:        r.duration("HERALD_LEASE", 15*time.Second),
		DeadLetter:   r.str("HERALD_DEAD_LETTER_LIST", ""),
		Instance:     r.str("HERALD_INSTANCE", ""),
		LogFormat:    r.oneOf("HERALD_LOG_FORMAT", "text", "text", "json"),
		LogLevel:     r.oneOf("HERALD_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
	}
	c.DropExhausted = r.oneOf("HERALD_ON_EXHAUSTED", "dead-letter", "dead-letter", "drop") == "drop"
	if c.Batch > 1000 {
		r.fail("HERALD_BATCH", "at most 1000, got %d", c.Batch)
	}
	if c.Lease < time.Second {
		r.fail("HERALD_LEASE", "at least 1s, got %s", c.Lease)
	}
	return c, r.err
}
