package engine

import (
	"math/rand/v2"
	"testing"
)

// TestPatternPythonSemantics checks patterns against what Python's re.match answered for the same
// topics (python3 -c 'import re; re.match(p, t)'), trailing newlines and non-ASCII included.
func TestPatternPythonSemantics(t *testing.T) {
	topics := []string{"acapy::webhook::x", "acapy::webhook::x\n", "acapy::webhook::x\ny", "acapy::webhook::\u00e9",
		"acapy::record::a::b", "acapy::record::a::b\n", "acapy::record::a::b::c", "acapy::record::\u00e9::b", "acapy::record::",
		"abcd", "abbe\n", "ad", "abcdex", "x", "x\n", "a\nb", "a\u00e9b", "AB", "b", "abbc", "abbbbc", "a::", "a::\n\n", "xa"}
	for _, tc := range []struct{ pattern, python string }{
		{`^acapy::webhook::(.*)$`, "110100000000000000000000"},
		{`^acapy::record::([^:]*)::([^:]*)$`, "000011010000000000000000"},
		{`^acapy::record::([^:])?`, "000011111000000000000000"},
		{`a[bc]+d?e*$`, "000000000110000000011000"},
		{`x\Z`, "000000000000010000000000"},
		{`^a.b`, "000000000010000010011000"},
		{`(?i)ab`, "000000000110100001011000"},
		{`a|b`, "111111111111100110111110"},
		{`ab{2,3}c`, "000000000000000000010000"},
		{`\Aa:+$`, "000000000000000000000100"},
	} {
		p, err := compilePattern(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		for i, topic := range topics {
			if got, want := p.match([]byte(topic)), tc.python[i] == '1'; got != want {
				t.Errorf("re.match(%q, %q): %v, Python says %v (%s)", tc.pattern, topic, got, want, p.String())
			}
		}
	}
}

// TestPatternAutomatonAgreesWithRegexp runs random ASCII topics through both paths of every
// pattern the automaton takes.
func TestPatternAutomatonAgreesWithRegexp(t *testing.T) {
	const alphabet = "ab:x\n-"
	rng := rand.New(rand.NewPCG(1, 2))
	topic := make([]byte, 0, 16)
	for _, src := range []string{`^a::(.*)$`, `a([^:]*)::([^:]*)$`, `a[b:]+x?-*$`, `a:+b\z`, `x.?a*b+`, `^a.b$`, `ab?b?b?:`} {
		p, err := compilePattern(src)
		if err != nil {
			t.Fatal(err)
		}
		if !p.seq {
			t.Fatalf("%s: expected the automaton to take it (%s)", src, p.String())
		}
		for range 20000 {
			topic = topic[:0]
			for range rng.IntN(12) {
				topic = append(topic, alphabet[rng.IntN(len(alphabet))])
			}
			if got, want := p.match(topic), p.re.Match(topic); got != want {
				t.Fatalf("%s on %q: automaton %v, regexp %v", src, topic, got, want)
			}
		}
	}
}

// TestDefaultRoutesAvoidRegexp: no default ACA-Py pattern needs the regexp package for ASCII topics.
func TestDefaultRoutesAvoidRegexp(t *testing.T) {
	routes, _ := defaultRoutes(t)
	r, err := NewRouter(routes)
	if err != nil {
		t.Fatal(err)
	}
	for i, rt := range r.routes {
		if !rt.prefixOnly && !rt.seq {
			t.Errorf("%s: falls back to regexp (%s)", routes[i].Pattern, rt.String())
		}
	}
}
