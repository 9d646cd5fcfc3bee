package engine

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"
)

// pattern answers Python's re.match(pattern, topic) is not None: a match that starts at the
// beginning of the topic and may end anywhere. Topic patterns are nearly always a literal prefix
// followed by a few character classes, so the part after the literal prefix runs on a small
// position-set automaton over bytes (no backtracking, no allocation), and only patterns it cannot
// express, or topics that are not ASCII, go to the regexp package.
type pattern struct {
	prefix string // every matching topic starts with this
	// The automaton for what follows the prefix, as in the Shift-And algorithm: bit i of a state
	// means "item i is next" and bit n (n items) that the pattern has matched.
	accepts *[128]uint64 // per ASCII byte, the items that take it
	stars   uint64       // items that may repeat
	skips   []uint8      // items that may be absent, in order
	n       int
	end     endAnchor      // how the match must end
	re      *regexp.Regexp // the whole pattern, anchored at the start; nil when prefixOnly
	// prefixOnly: the prefix is all there is to check, because what follows it can match empty.
	prefixOnly bool
	// seq: rest and end say everything about ASCII topics; otherwise re decides.
	seq bool
}

type endAnchor uint8

const (
	endAnywhere endAnchor = iota
	endDollar             // Python's $: the end, or just before a newline that ends the topic
	endText               // Python's \Z: the end only
)

// seqItem is one character position: the ASCII bytes it takes and how often.
type seqItem struct {
	set [2]uint64
	rep seqRep
}

type seqRep uint8

const (
	repOne seqRep = iota
	repOpt
	repStar
)

// maxSeqItems keeps a state set in one machine word.
const maxSeqItems = 63

// pythonFlags parse like Python's re without flags: ^ and $ are line anchors here so that they
// can be told apart from \A and \z, and are then given Python's meaning.
const pythonFlags = syntax.ClassNL | syntax.PerlX | syntax.UnicodeGroups

func compilePattern(src string) (pattern, error) {
	tree, err := syntax.Parse(pythonEscapes(src), pythonFlags)
	if err != nil {
		return pattern{}, err
	}
	tree = pythonAnchors(tree.Simplify())
	subs := []*syntax.Regexp{tree}
	if tree.Op == syntax.OpConcat {
		subs = tree.Sub
	}
	var p pattern
	var prefix strings.Builder
	i := 0
	for ; i < len(subs); i++ {
		s := subs[i]
		if s.Op == syntax.OpBeginText && i == 0 || s.Op == syntax.OpEmptyMatch {
			continue
		}
		if s.Op != syntax.OpLiteral || s.Flags&syntax.FoldCase != 0 {
			break
		}
		prefix.WriteString(string(s.Rune))
	}
	p.prefix = prefix.String()
	if nullable(subs[i:]) {
		p.prefixOnly = true
		return p, nil
	}
	// Python's re.match anchors at the start only; so does \A here.
	if p.re, err = regexp.Compile(`\A(?:` + tree.String() + `)`); err != nil {
		return pattern{}, err
	}
	var items []seqItem
	if items, p.end, p.seq = sequence(subs[i:]); p.seq {
		p.n = len(items)
		p.accepts = new([128]uint64)
		for k, it := range items {
			for c := range 128 {
				if it.set[c>>6]&(1<<(c&63)) != 0 {
					p.accepts[c] |= 1 << k
				}
			}
			if it.rep == repStar {
				p.stars |= 1 << k
			}
			if it.rep != repOne {
				p.skips = append(p.skips, uint8(k))
			}
		}
	}
	return p, nil
}

// pythonEscapes spells Python's \Z (the very end) as RE2's \z.
func pythonEscapes(src string) string {
	if !strings.Contains(src, `\Z`) {
		return src
	}
	b := []byte(src)
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\\' {
			if b[i+1] == 'Z' {
				b[i+1] = 'z'
			}
			i++
		}
	}
	return string(b)
}

// pythonAnchors rewrites the line anchors the parser produced for ^ and $ into what they mean in
// Python without re.MULTILINE: ^ is the start of the topic, $ its end or just before a final
// newline.
func pythonAnchors(re *syntax.Regexp) *syntax.Regexp {
	switch re.Op {
	case syntax.OpBeginLine:
		return &syntax.Regexp{Op: syntax.OpBeginText}
	case syntax.OpEndLine:
		nl := &syntax.Regexp{Op: syntax.OpLiteral, Rune: []rune{'\n'}}
		return &syntax.Regexp{Op: syntax.OpConcat, Sub: []*syntax.Regexp{
			{Op: syntax.OpQuest, Sub: []*syntax.Regexp{nl}},
			{Op: syntax.OpEndText},
		}}
	}
	for k, s := range re.Sub {
		re.Sub[k] = pythonAnchors(s)
	}
	return re
}

// nullable reports whether subs can match the empty string without any assertion, so that
// re.match succeeds as soon as what comes before them has matched.
func nullable(subs []*syntax.Regexp) bool {
	for _, s := range subs {
		switch s.Op {
		case syntax.OpEmptyMatch, syntax.OpStar, syntax.OpQuest:
		case syntax.OpCapture:
			if !nullable(s.Sub) {
				return false
			}
		case syntax.OpConcat:
			if !nullable(s.Sub) {
				return false
			}
		case syntax.OpRepeat:
			if s.Min > 0 && !nullable(s.Sub) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// sequence turns subs into single-character items, if they are nothing else, and a final anchor.
func sequence(subs []*syntax.Regexp) ([]seqItem, endAnchor, bool) {
	var items []seqItem
	end := endAnywhere
	var walk func(subs []*syntax.Regexp) bool
	walk = func(subs []*syntax.Regexp) bool {
		for k, s := range subs {
			if end != endAnywhere {
				return false // something follows the end anchor
			}
			switch s.Op {
			case syntax.OpEmptyMatch:
			case syntax.OpCapture, syntax.OpConcat:
				if !walk(s.Sub) {
					return false
				}
			case syntax.OpEndText:
				end = endText
			case syntax.OpStar, syntax.OpPlus, syntax.OpQuest:
				set, ok := charSet(s.Sub[0])
				if !ok {
					// The $ rewrite: an optional newline, then the end.
					if s.Op == syntax.OpQuest && isNewline(s.Sub[0]) && k+2 == len(subs) && subs[k+1].Op == syntax.OpEndText {
						end = endDollar
						return true
					}
					return false
				}
				if s.Op == syntax.OpPlus {
					items = append(items, seqItem{set: set, rep: repOne})
				}
				rep := repStar
				if s.Op == syntax.OpQuest {
					rep = repOpt
				}
				items = append(items, seqItem{set: set, rep: rep})
			case syntax.OpLiteral:
				if s.Flags&syntax.FoldCase != 0 {
					return false
				}
				for _, r := range s.Rune {
					if r >= 0x80 {
						return false
					}
					var set [2]uint64
					set[r>>6] |= 1 << (r & 63)
					items = append(items, seqItem{set: set})
				}
			default:
				set, ok := charSet(s)
				if !ok {
					return false
				}
				items = append(items, seqItem{set: set})
			}
		}
		return true
	}
	if !walk(subs) || len(items) > maxSeqItems {
		return nil, endAnywhere, false
	}
	return items, end, true
}

func isNewline(s *syntax.Regexp) bool {
	return s.Op == syntax.OpLiteral && len(s.Rune) == 1 && s.Rune[0] == '\n'
}

// charSet is the ASCII part of a one-character expression. Topics with other bytes never reach
// the automaton, so a class's non-ASCII members do not matter.
func charSet(s *syntax.Regexp) ([2]uint64, bool) {
	var set [2]uint64
	add := func(lo, hi rune) {
		for r := lo; r <= hi && r < 0x80; r++ {
			set[r>>6] |= 1 << (r & 63)
		}
	}
	switch s.Op {
	case syntax.OpLiteral:
		if len(s.Rune) != 1 || s.Flags&syntax.FoldCase != 0 {
			return set, false
		}
		add(s.Rune[0], s.Rune[0])
	case syntax.OpCharClass:
		for k := 0; k+1 < len(s.Rune); k += 2 {
			add(s.Rune[k], s.Rune[k+1])
		}
	case syntax.OpAnyCharNotNL:
		add(0, 0x7f)
		set[0] &^= 1 << '\n'
	case syntax.OpAnyChar:
		add(0, 0x7f)
	default:
		return set, false
	}
	return set, true
}

// match reports whether topic starts with a match of the pattern.
func (p *pattern) match(topic []byte) bool {
	if len(topic) < len(p.prefix) || string(topic[:len(p.prefix)]) != p.prefix {
		return false
	}
	if p.prefixOnly {
		return true
	}
	if !p.seq {
		return p.re.Match(topic)
	}
	rest := topic[len(p.prefix):]
	for _, c := range rest {
		if c >= 0x80 {
			return p.re.Match(topic)
		}
	}
	return p.run(rest)
}

// run steps the automaton over in, a byte at a time, all states at once.
func (p *pattern) run(in []byte) bool {
	done := uint64(1) << p.n
	state := p.closure(1)
	for k, c := range in {
		if state&done != 0 {
			switch p.end {
			case endAnywhere:
				return true
			case endDollar:
				if k == len(in)-1 && c == '\n' {
					return true
				}
			}
		}
		took := state & p.accepts[c]
		if took == 0 {
			return false
		}
		state = p.closure(took&p.stars | (took&^p.stars)<<1)
	}
	return state&done != 0
}

// closure adds the positions reached by skipping optional items.
func (p *pattern) closure(state uint64) uint64 {
	for _, i := range p.skips {
		state |= state & (1 << i) << 1
	}
	return state
}

func (p *pattern) String() string {
	return fmt.Sprintf("prefix %q prefixOnly %v seq %v items %d end %d", p.prefix, p.prefixOnly, p.seq, p.n, p.end)
}
