// Package endpoint holds what Herald keeps about each receiving endpoint across deliveries:
// Standard Webhooks signing, a rate limit and a concurrency limit, a circuit breaker, and the
// endpoints a 410 Gone disabled. Operators write Rules (HERALD_ENDPOINTS); a Table applies the
// rule whose URL prefix is the longest match, and is the engine.Gate of a delivery pipeline.
package endpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/sign"
)

// Rule is the delivery policy of the endpoints whose URL begins with URL. The empty URL matches
// every endpoint; a more specific rule replaces it entirely (rules do not merge).
type Rule struct {
	// URL is the prefix an endpoint's URL must start with.
	URL string `json:"url"`
	// Secret is one or more Standard Webhooks secrets (whsec_<base64>), newest first, separated by
	// spaces: each delivery carries one signature per secret, so a receiver can rotate.
	Secret string `json:"secret,omitempty"`
	// Rate is the most deliveries per second to one endpoint; 0 means no limit.
	Rate float64 `json:"rate,omitempty"`
	// Burst is how many deliveries may go at once above Rate after a quiet spell (default: Rate
	// rounded up, at least 1).
	Burst int `json:"burst,omitempty"`
	// Concurrency is the most deliveries in flight to one endpoint; 0 means no limit.
	Concurrency int `json:"concurrency,omitempty"`
	// BreakAfter is how many consecutive failed attempts open the endpoint's circuit; 0 means
	// no breaker.
	BreakAfter int `json:"break_after,omitempty"`
	// Cooldown is how long an open circuit refuses deliveries before one probe may go (30s).
	Cooldown Duration `json:"cooldown,omitempty"`
	// OnGone is what a 410 Gone answer does: "disable" (the default) refuses every later
	// delivery to the endpoint until Herald restarts, dead-lettering them with the reason;
	// "retry" treats 410 like any other failure.
	OnGone string `json:"on_gone,omitempty"`
}

// Duration is a time.Duration written the Go way in JSON ("30s", "1m").
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`a duration is a string such as "30s"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return fmt.Errorf("%q is not a positive duration", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// DefaultCooldown is how long a circuit stays open when the rule names no cooldown.
const DefaultCooldown = 30 * time.Second

// ParseRules reads HERALD_ENDPOINTS: a JSON array of rules, or the name of a file holding one.
// Every rule is checked (its secrets decoded), so a mistake stops Herald at start, not at the
// first delivery.
func ParseRules(v string) ([]Rule, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	data := []byte(v)
	if v[0] != '[' {
		b, err := os.ReadFile(v)
		if err != nil {
			return nil, fmt.Errorf("neither a JSON array nor a readable file: %v", err)
		}
		data = b
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var rules []Rule
	if err := dec.Decode(&rules); err != nil {
		return nil, fmt.Errorf("not a JSON array of rules: %v", err)
	}
	seen := map[string]bool{}
	for i, r := range rules {
		if _, err := compile(r); err != nil {
			return nil, fmt.Errorf("rule %d (%q): %v", i+1, r.URL, err)
		}
		if seen[r.URL] {
			return nil, fmt.Errorf("rule %d: a second rule for %q", i+1, r.URL)
		}
		seen[r.URL] = true
	}
	return rules, nil
}

// compiled is a Rule ready to apply.
type compiled struct {
	Rule
	prefix   []byte
	signer   *sign.Webhook
	interval int64 // nanoseconds between deliveries at Rate; 0 without a rate limit
	window   int64 // how far ahead of now the rate limiter may run: (Burst-1) * interval
	cooldown int64
	disable  bool // a 410 disables the endpoint
	stateful bool // the rule keeps per-endpoint state: a limit or a breaker
}

func compile(r Rule) (*compiled, error) {
	c := &compiled{Rule: r, prefix: []byte(r.URL), cooldown: int64(DefaultCooldown)}
	if r.URL != "" {
		u, err := url.Parse(r.URL)
		if err != nil || u.Host == "" {
			return nil, errors.New(`url must be an absolute URL prefix such as "https://hooks.example.com/" (or "" for every endpoint)`)
		}
		switch strings.ToLower(u.Scheme) {
		case "http", "https", "ws", "wss":
		default:
			return nil, fmt.Errorf("url scheme %q is not http, https, ws or wss", u.Scheme)
		}
	}
	if s := strings.Fields(r.Secret); len(s) > 0 {
		w, err := sign.NewWebhook(s...)
		if err != nil {
			return nil, err
		}
		c.signer = w
	}
	switch {
	case r.Rate < 0 || math.IsNaN(r.Rate) || math.IsInf(r.Rate, 0):
		return nil, fmt.Errorf("rate %v is not a number of deliveries per second >= 0", r.Rate)
	case r.Burst < 0:
		return nil, fmt.Errorf("burst %d is negative", r.Burst)
	case r.Burst > 0 && r.Rate == 0:
		return nil, errors.New("burst needs a rate")
	case r.Concurrency < 0:
		return nil, fmt.Errorf("concurrency %d is negative", r.Concurrency)
	case r.BreakAfter < 0:
		return nil, fmt.Errorf("break_after %d is negative", r.BreakAfter)
	case r.Cooldown != 0 && r.BreakAfter == 0:
		return nil, errors.New("cooldown needs break_after")
	}
	if r.Rate > 0 {
		c.interval = max(int64(float64(time.Second)/r.Rate), 1)
		burst := r.Burst
		if burst == 0 {
			burst = max(int(math.Ceil(r.Rate)), 1)
		}
		c.window = int64(burst-1) * c.interval
	}
	if r.Cooldown > 0 {
		c.cooldown = int64(r.Cooldown)
	}
	switch r.OnGone {
	case "", "disable":
		c.disable = true
	case "retry":
	default:
		return nil, fmt.Errorf(`on_gone %q is neither "disable" nor "retry"`, r.OnGone)
	}
	c.stateful = r.Rate > 0 || r.Concurrency > 0 || r.BreakAfter > 0
	return c, nil
}
