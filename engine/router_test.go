package engine

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type routeVectors struct {
	Cases []struct {
		Topic    string   `json:"topic"`
		WalletID *string  `json:"wallet_id"`
		State    *string  `json:"state"`
		Expected []string `json:"expected_lists"`
		Envelope struct {
			WalletID string  `json:"wallet_id"`
			Category *string `json:"category"`
		} `json:"expected_envelope_payload"`
	} `json:"cases"`
}

// defaultRoutes reads the default event_topic_maps in file order (a Go map would lose it).
func defaultRoutes(t testing.TB) ([]Route, routeVectors) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "shared", "vectors", "topic_routes.json"))
	if err != nil {
		t.Fatalf("the shared test vectors must sit beside the repository (../shared/vectors): %v", err)
	}
	var raw struct {
		Maps json.RawMessage `json:"event_topic_maps"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(raw.Maps)))
	var routes []Route
	_, _ = dec.Token()
	for dec.More() {
		k, _ := dec.Token()
		v, _ := dec.Token()
		routes = append(routes, Route{Pattern: k.(string), Template: v.(string)})
	}
	var v routeVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return routes, v
}

// envelopeVars are the placeholders ACA-Py's events module substitutes; None renders as Python's
// str(None).
type envelopeVars struct {
	walletID, state, topic, category []byte
}

func (e *envelopeVars) Var(name string) ([]byte, bool) {
	switch name {
	case "wallet_id":
		return e.walletID, true
	case "state":
		return e.state, true
	case "topic":
		return e.topic, true
	case "category":
		return e.category, true
	}
	return nil, false
}

func orNone(s *string) string {
	if s == nil {
		return "None"
	}
	return *s
}

func TestRouterVectors(t *testing.T) {
	routes, v := defaultRoutes(t)
	if len(routes) != 15 {
		t.Fatalf("%d default routes, want 15", len(routes))
	}
	r, err := NewRouter(routes)
	if err != nil {
		t.Fatal(err)
	}
	for pass := range 2 { // the second pass answers from the cache
		for _, c := range v.Cases {
			vars := &envelopeVars{walletID: []byte(c.Envelope.WalletID), state: []byte(orNone(c.State)),
				topic: []byte(c.Topic), category: []byte(orNone(c.Envelope.Category))}
			var got []string
			for _, i := range r.Match(nil, []byte(c.Topic)) {
				name, err := r.Template(i).Append(nil, vars)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(name))
			}
			if strings.Join(got, ",") != strings.Join(c.Expected, ",") {
				t.Errorf("pass %d: %s (wallet %v): lists %v, want %v", pass, c.Topic, orNone(c.WalletID), got, c.Expected)
			}
		}
	}
}

func TestTemplateSyntax(t *testing.T) {
	vars := &envelopeVars{walletID: []byte("w"), state: []byte("s"), topic: []byte("t"), category: []byte("c")}
	for tmpl, want := range map[string]string{
		"acapy-$wallet_id":      "acapy-w",
		"${state}x-$$-$topic":   "sx-$-t",
		"plain":                 "plain",
		"$category$wallet_id.x": "cw.x",
	} {
		p, err := ParseTemplate(tmpl)
		if err != nil {
			t.Fatalf("%s: %v", tmpl, err)
		}
		if got, err := p.Append(nil, vars); err != nil || string(got) != want {
			t.Errorf("%s: %q %v, want %q", tmpl, got, err, want)
		}
	}
	for _, bad := range []string{"a-$", "a-$1", "${wallet_id", "${}"} {
		if _, err := ParseTemplate(bad); err == nil {
			t.Errorf("%q parsed; Python raises ValueError", bad)
		}
	}
	p, _ := ParseTemplate("$nope")
	if _, err := p.Append(nil, vars); err == nil {
		t.Error("a placeholder without a value must fail, as Python's KeyError")
	}
	if _, err := NewRouter([]Route{{Pattern: "(?<=a)b", Template: "x"}}); err == nil {
		t.Error("a pattern RE2 cannot compile must be an error")
	}
}

func TestRouterLiteralPrefix(t *testing.T) {
	r, err := NewRouter([]Route{{"acapy::ping::received", "a"}, {"^acapy::x.y", "b"}, {"(?i)ACAPY::z", "c"}})
	if err != nil {
		t.Fatal(err)
	}
	if !r.routes[0].prefixOnly || r.routes[0].prefix != "acapy::ping::received" {
		t.Errorf("a plain pattern is a literal prefix: %+v", r.routes[0])
	}
	if r.routes[1].prefixOnly || r.routes[1].prefix != "acapy::x" {
		t.Errorf("prefix of ^acapy::x.y: %+v", r.routes[1])
	}
	for topic, want := range map[string]string{
		"acapy::ping::received_more": "[0]", "acapy::xzy": "[1]", "acapy::x": "[]", "acapy::Z": "[2]",
	} {
		if got := fmtInts(r.Match(nil, []byte(topic))); got != want {
			t.Errorf("%s: %s, want %s", topic, got, want)
		}
	}
}

func fmtInts(v []int) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, n := range v {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte(byte('0' + n))
	}
	b.WriteByte(']')
	return b.String()
}

func BenchmarkRouterDefaultMap(b *testing.B) {
	routes, v := defaultRoutes(b)
	r, err := NewRouter(routes)
	if err != nil {
		b.Fatal(err)
	}
	topics := make([][]byte, len(v.Cases))
	for i, c := range v.Cases {
		topics[i] = []byte(c.Topic)
	}
	dst := make([]int, 0, 16)
	for _, t := range topics { // the cache is filled once, on first sight of each topic
		dst = r.Match(dst[:0], t)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		dst = r.Match(dst[:0], topics[i%len(topics)])
		i++
	}
}

func BenchmarkRouterUncached(b *testing.B) {
	routes, v := defaultRoutes(b)
	r, err := NewRouter(routes)
	if err != nil {
		b.Fatal(err)
	}
	topics := make([][]byte, len(v.Cases))
	for i, c := range v.Cases {
		topics[i] = []byte(c.Topic)
	}
	dst := make([]int, 0, 16)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		dst = r.scan(dst[:0], topics[i%len(topics)])
		i++
	}
}

func BenchmarkTemplateAppend(b *testing.B) {
	p, _ := ParseTemplate("acapy-record-with-state-$wallet_id")
	vars := &envelopeVars{walletID: []byte("w-1")}
	dst := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		dst, _ = p.Append(dst[:0], vars)
	}
}
