package engine

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// Route pairs a topic pattern with the template of a destination name, as ACA-Py's
// event_topic_maps does: the pattern is a regular expression that must match at the START of the
// topic (Python's re.match, not a full match), the template is Python string.Template syntax.
type Route struct {
	Pattern  string
	Template string
}

// Router maps a topic to the routes whose pattern matches it, in the order the routes were given.
// Patterns are indexed by their literal prefix, so most never run a regular expression, and the
// answer for a topic seen before comes from a cache: routing allocates nothing.
type Router struct {
	routes []route

	mu    sync.Mutex
	cache atomic.Pointer[map[string][]int32]
}

type route struct {
	pattern
	tmpl Template
}

// maxCachedTopics bounds the cache; topics past it are routed by scanning every time.
const maxCachedTopics = 4096

// NewRouter compiles routes. A pattern Go's regular expressions cannot express, or an invalid
// template, is an error naming it.
func NewRouter(routes []Route) (*Router, error) {
	r := &Router{routes: make([]route, 0, len(routes))}
	for _, rt := range routes {
		c, err := compileRoute(rt)
		if err != nil {
			return nil, err
		}
		r.routes = append(r.routes, c)
	}
	empty := map[string][]int32{}
	r.cache.Store(&empty)
	return r, nil
}

func compileRoute(rt Route) (route, error) {
	tmpl, err := ParseTemplate(rt.Template)
	if err != nil {
		return route{}, fmt.Errorf("route %q: template %q: %w", rt.Pattern, rt.Template, err)
	}
	p, err := compilePattern(rt.Pattern)
	if err != nil {
		return route{}, fmt.Errorf("route %q: %w", rt.Pattern, err)
	}
	return route{pattern: p, tmpl: tmpl}, nil
}

// Len is the number of routes.
func (r *Router) Len() int { return len(r.routes) }

// Template is the destination template of route i.
func (r *Router) Template(i int) *Template { return &r.routes[i].tmpl }

// Match appends to dst the indexes of the routes whose pattern matches the start of topic, in
// route order.
func (r *Router) Match(dst []int, topic []byte) []int {
	if hit, ok := (*r.cache.Load())[string(topic)]; ok {
		for _, i := range hit {
			dst = append(dst, int(i))
		}
		return dst
	}
	start := len(dst)
	dst = r.scan(dst, topic)
	r.remember(topic, dst[start:])
	return dst
}

// scan matches topic against every route, without the cache.
func (r *Router) scan(dst []int, topic []byte) []int {
	for i := range r.routes {
		if r.routes[i].match(topic) {
			dst = append(dst, i)
		}
	}
	return dst
}

// remember adds a topic to the cache by copying it: reads never lock, and the set of topics an
// application emits is small, so copies are rare.
func (r *Router) remember(topic []byte, matched []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.cache.Load()
	if len(old) >= maxCachedTopics {
		return
	}
	if _, ok := old[string(topic)]; ok {
		return
	}
	next := make(map[string][]int32, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	idx := make([]int32, len(matched))
	for i, m := range matched {
		idx[i] = int32(m)
	}
	next[string(topic)] = idx
	r.cache.Store(&next)
}

// Template is a parsed Python string.Template: literal text, $name and ${name} placeholders,
// and $$ for a literal dollar.
type Template struct {
	parts []templatePart
}

type templatePart struct {
	text  string // literal text, or the placeholder's name when isVar
	isVar bool
}

// ErrMissingVar is returned when a placeholder has no value (Python raises KeyError).
var ErrMissingVar = errors.New("template placeholder has no value")

// ParseTemplate parses s with Python string.Template rules: identifiers are [_a-zA-Z][_a-zA-Z0-9]*.
func ParseTemplate(s string) (Template, error) {
	var t Template
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, templatePart{text: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			lit.WriteByte(s[i])
			continue
		}
		rest := s[i+1:]
		switch {
		case strings.HasPrefix(rest, "$"):
			lit.WriteByte('$')
			i++
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 || !isIdent(rest[1:end]) {
				return Template{}, fmt.Errorf("invalid placeholder at offset %d", i)
			}
			flush()
			t.parts = append(t.parts, templatePart{text: rest[1:end], isVar: true})
			i += end + 1
		default:
			n := identLen(rest)
			if n == 0 {
				return Template{}, fmt.Errorf("invalid placeholder at offset %d", i)
			}
			flush()
			t.parts = append(t.parts, templatePart{text: rest[:n], isVar: true})
			i += n
		}
	}
	flush()
	return t, nil
}

func identLen(s string) int {
	n := 0
	for n < len(s) {
		c := s[n]
		if c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || n > 0 && '0' <= c && c <= '9' {
			n++
			continue
		}
		break
	}
	return n
}

func isIdent(s string) bool { return s != "" && identLen(s) == len(s) }

// Vars gives a template its values.
type Vars interface {
	// Var returns the value of a placeholder, false when there is none.
	Var(name string) ([]byte, bool)
}

// Vars lists the names of the template's placeholders, in order, so that a service can refuse at
// start a template naming a value it will never have.
func (t *Template) Vars() []string {
	var names []string
	for _, p := range t.parts {
		if p.isVar {
			names = append(names, p.text)
		}
	}
	return names
}

// Append appends the template with its placeholders replaced by vars.
func (t *Template) Append(dst []byte, vars Vars) ([]byte, error) {
	for _, p := range t.parts {
		if !p.isVar {
			dst = append(dst, p.text...)
			continue
		}
		v, ok := vars.Var(p.text)
		if !ok {
			return dst, fmt.Errorf("%w: $%s", ErrMissingVar, p.text)
		}
		dst = append(dst, v...)
	}
	return dst, nil
}
