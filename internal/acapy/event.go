package acapy

import (
	"bytes"
	"math"
	"strconv"
	"sync"
)

// Event is one ACA-Py event as the plugin's handle_event sees it.
type Event struct {
	Topic []byte
	// WalletID is the tenant's wallet id, empty for the base wallet.
	WalletID []byte
	// Payload is the event's payload, JSON as it arrived.
	Payload []byte
}

// EventVars are the values an event_topic_maps template may name ($wallet_id, $state, $topic,
// $category), as the plugin's string.Template sees them: Python's str() of each.
type EventVars struct {
	WalletID, State, Topic, Category []byte
}

// Var implements engine.Vars.
func (v *EventVars) Var(name string) ([]byte, bool) {
	switch name {
	case "wallet_id":
		return v.WalletID, true
	case "state":
		return v.State, true
	case "topic":
		return v.Topic, true
	case "category":
		return v.Category, true
	}
	return nil, false
}

// Category is the plugin's _derive_category: the first group of acapy::record::([^:]*) at the
// start of the topic, "webhook" for topics that start with the literal "acapy::webhook::{" (the
// plugin's pattern has braces; ACA-Py's webhook topics have none, so they get null), else none.
func Category(topic []byte) ([]byte, bool) {
	const record = "acapy::record::"
	if len(topic) >= len(record) && string(topic[:len(record)]) == record {
		rest := topic[len(record):]
		if i := bytes.IndexByte(rest, ':'); i >= 0 {
			return rest[:i], true
		}
		return rest, true
	}
	const webhook = "acapy::webhook::{"
	if len(topic) >= len(webhook) && string(topic[:len(webhook)]) == webhook {
		return webhookCategory, true
	}
	return nil, false
}

var (
	webhookCategory = []byte("webhook")
	baseWallet      = []byte("base")
	pyNone          = []byte("None")
	pyTrue          = []byte("True")
	pyFalse         = []byte("False")
)

// AppendEventPayload appends the envelope payload the plugin builds for e:
// {"wallet_id": W or "base", "state": payload.state, "topic": T, "category": C, "payload": P},
// in json.dumps bytes. vars receives the template values (pointing into dst or e). The payload
// must be a JSON object; its "state" member, when it has one, is the state.
func AppendEventPayload(dst []byte, e *Event, vars *EventVars) ([]byte, error) {
	state, err := memberValue(e.Payload, "state")
	if err != nil {
		return dst, err
	}
	wallet := e.WalletID
	if len(wallet) == 0 {
		wallet = baseWallet
	}
	dst = append(dst, `{"wallet_id": `...)
	dst = AppendPyString(dst, wallet)
	dst = append(dst, `, "state": `...)
	start := len(dst)
	if state == nil {
		dst = append(dst, "null"...)
	} else if dst, err = AppendPyJSON(dst, state); err != nil {
		return dst, err
	}
	stateEnd := len(dst)
	dst = append(dst, `, "topic": `...)
	dst = AppendPyString(dst, e.Topic)
	dst = append(dst, `, "category": `...)
	cat, ok := Category(e.Topic)
	if ok {
		dst = AppendPyString(dst, cat)
	} else {
		dst = append(dst, "null"...)
	}
	dst = append(dst, `, "payload": `...)
	if dst, err = AppendPyJSON(dst, e.Payload); err != nil {
		return dst, err
	}
	dst = append(dst, '}')
	if vars != nil {
		vars.WalletID, vars.Topic, vars.Category = wallet, e.Topic, pyNone
		if ok {
			vars.Category = cat
		}
		vars.State = pyStr(dst[start:stateEnd], state)
	}
	return dst, nil
}

// pyStr is Python's str() of a JSON value for a template: a string's text, None, True, False,
// or the dumped form of anything else (close enough for numbers and containers, which no
// template of the plugin names).
func pyStr(dumped, raw []byte) []byte {
	switch {
	case raw == nil || string(raw) == "null":
		return pyNone
	case string(raw) == "true":
		return pyTrue
	case string(raw) == "false":
		return pyFalse
	case len(raw) > 1 && raw[0] == '"' && bytes.IndexByte(raw, '\\') < 0:
		return raw[1 : len(raw)-1]
	}
	return dumped
}

// AppendEnvelope appends the entry the plugin RPUSHes to each routed list:
// {"payload": <payload>, "metadata": {"x-wallet-id": W}}, metadata empty without a wallet.
func AppendEnvelope(dst, payload, walletID []byte) []byte {
	dst = append(dst, `{"payload": `...)
	dst = append(dst, payload...)
	dst = append(dst, `, "metadata": {`...)
	if len(walletID) > 0 {
		dst = append(dst, `"x-wallet-id": `...)
		dst = AppendPyString(dst, walletID)
	}
	return append(dst, "}}"...)
}

// memberValue returns the raw JSON value of key in the object obj (nil when absent), checking
// that obj is one JSON object.
func memberValue(obj []byte, key string) ([]byte, error) {
	d := decoder{b: obj}
	if d.peek() != '{' {
		return nil, &DecodeError{Offset: -1, Reason: "payload is not a JSON object"}
	}
	var val []byte
	d.object(func(k []byte) {
		start := d.i
		d.skip(0)
		if string(k) == key {
			val = bytes.TrimSpace(d.b[start:d.i])
		}
	})
	if d.err == nil && d.peek() != 0 {
		return nil, ErrTrailing
	}
	return val, d.err
}

// AppendPyJSON appends the JSON value src as Python writes it with json.dumps(json.loads(src)):
// ", " and ": " separators, strings with ensure_ascii, integers as written, floats in Python's
// repr. (Duplicate keys are kept as they come; Python would keep the first position and the
// last value.)
func AppendPyJSON(dst, src []byte) ([]byte, error) {
	// Escaped strings are unescaped into a pooled scratch buffer before they are re-escaped.
	sp, _ := scratchPool.Get().(*[]byte)
	if sp == nil {
		sp = new([]byte)
	}
	d := decoder{b: src, scratch: (*sp)[:0]}
	dst = d.pyValue(dst, 0)
	if d.err == nil && d.peek() != 0 {
		d.fail("trailing data after the JSON value")
	}
	*sp = d.scratch
	scratchPool.Put(sp)
	return dst, d.err
}

var scratchPool sync.Pool

func (d *decoder) pyValue(dst []byte, depth int) []byte {
	if depth > 64 {
		if d.err == nil {
			d.err = errTooDeep
		}
		return dst
	}
	switch c := d.peek(); c {
	case '{':
		d.i++
		dst = append(dst, '{')
		if d.peek() == '}' {
			d.i++
			return append(dst, '}')
		}
		for first := true; d.err == nil; first = false {
			if !first {
				dst = append(dst, ", "...)
			}
			mark := len(d.scratch)
			k := d.str()
			dst = AppendPyString(dst, k)
			d.scratch = d.scratch[:mark]
			if !d.expect(':', errExpectedColon) {
				return dst
			}
			dst = append(dst, ": "...)
			dst = d.pyValue(dst, depth+1)
			switch d.peek() {
			case ',':
				d.i++
			case '}':
				d.i++
				return append(dst, '}')
			case 0:
				d.fail(errUnexpectedEnd)
			default:
				d.fail("expected ',' or '}'")
			}
		}
		return dst
	case '[':
		d.i++
		dst = append(dst, '[')
		if d.peek() == ']' {
			d.i++
			return append(dst, ']')
		}
		for first := true; d.err == nil; first = false {
			if !first {
				dst = append(dst, ", "...)
			}
			dst = d.pyValue(dst, depth+1)
			switch d.peek() {
			case ',':
				d.i++
			case ']':
				d.i++
				return append(dst, ']')
			case 0:
				d.fail(errUnexpectedEnd)
			default:
				d.fail("expected ',' or ']'")
			}
		}
		return dst
	case '"':
		mark := len(d.scratch)
		s := d.str()
		dst = AppendPyString(dst, s)
		d.scratch = d.scratch[:mark]
		return dst
	case 't', 'f', 'n':
		start := d.i
		d.literal()
		return append(dst, d.b[start:d.i]...)
	case 'N', 'I':
		// Python's json.loads takes NaN and Infinity, and dumps writes them back.
		for _, w := range [...]string{"NaN", "Infinity"} {
			if bytes.HasPrefix(d.b[d.i:], []byte(w)) {
				d.i += len(w)
				return append(dst, w...)
			}
		}
		d.fail("invalid literal")
		return dst
	case 0:
		d.fail(errUnexpectedEnd)
		return dst
	}
	if bytes.HasPrefix(d.b[d.i:], []byte("-Infinity")) {
		d.i += len("-Infinity")
		return append(dst, "-Infinity"...)
	}
	start := d.i
	_, integer := d.number()
	if d.err != nil {
		return dst
	}
	num := d.b[start:d.i]
	if integer || isIntToken(num) {
		if string(num) == "-0" {
			return append(dst, '0')
		}
		return append(dst, num...)
	}
	f, err := strconv.ParseFloat(string(num), 64)
	if err != nil && !math.IsInf(f, 0) {
		d.fail("invalid number")
		return dst
	}
	return appendPyFloat(dst, f)
}

// isIntToken: a number written without fraction or exponent is a Python int, however large.
func isIntToken(num []byte) bool {
	for _, c := range num {
		if c == '.' || c == 'e' || c == 'E' {
			return false
		}
	}
	return true
}

// appendPyFloat writes f as Python's repr: the shortest digits that read back to f, in fixed
// notation with at least one decimal when the exponent is in [-4, 16), else d.ddde+XX.
func appendPyFloat(dst []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(dst, "Infinity"...)
	case math.IsInf(f, -1):
		return append(dst, "-Infinity"...)
	case math.IsNaN(f):
		return append(dst, "NaN"...)
	}
	var buf [32]byte
	e := strconv.AppendFloat(buf[:0], f, 'e', -1, 64) // [-]d[.ddd]e±XX
	neg := e[0] == '-'
	if neg {
		e = e[1:]
		dst = append(dst, '-')
	}
	ei := bytes.IndexByte(e, 'e')
	mant, exp := e[:ei], 0
	if x, err := strconv.Atoi(string(e[ei+1:])); err == nil {
		exp = x
	}
	var db [24]byte
	digits := db[:0]
	for _, c := range mant {
		if c != '.' {
			digits = append(digits, c)
		}
	}
	if exp < -4 || exp >= 16 {
		dst = append(dst, digits[0])
		if len(digits) > 1 {
			dst = append(dst, '.')
			dst = append(dst, digits[1:]...)
		}
		dst = append(dst, 'e')
		if exp < 0 {
			dst = append(dst, '-')
			exp = -exp
		} else {
			dst = append(dst, '+')
		}
		if exp < 10 {
			dst = append(dst, '0')
		}
		return strconv.AppendInt(dst, int64(exp), 10)
	}
	if exp < 0 {
		dst = append(dst, "0."...)
		for i := 0; i < -exp-1; i++ {
			dst = append(dst, '0')
		}
		return append(dst, digits...)
	}
	if len(digits) <= exp+1 {
		dst = append(dst, digits...)
		for i := len(digits); i < exp+1; i++ {
			dst = append(dst, '0')
		}
		return append(dst, ".0"...)
	}
	dst = append(dst, digits[:exp+1]...)
	dst = append(dst, '.')
	return append(dst, digits[exp+1:]...)
}

// ParseEvent reads one event of Herald's ingest format, {"topic": T, "payload": {...},
// "wallet_id": W or null}, into e. Escaped strings are unescaped into scratch, which must have
// room for len(b) bytes more (it is never grown, so e's slices stay valid); the returned scratch
// holds them. The payload must be an object ({} when absent).
func ParseEvent(b, scratch []byte, e *Event) ([]byte, error) {
	d := decoder{b: b, scratch: scratch}
	*e = Event{}
	if d.peek() != '{' {
		return scratch, &DecodeError{Offset: -1, Reason: "an event is a JSON object {\"topic\", \"payload\", \"wallet_id\"}"}
	}
	var fieldErr error
	d.object(func(k []byte) {
		switch string(k) {
		case "topic":
			if d.peek() != '"' {
				fieldErr = &DecodeError{Offset: -1, Reason: "topic is not a string"}
				d.skip(0)
				return
			}
			e.Topic = d.str()
		case "wallet_id":
			if d.isNull() {
				return
			}
			if d.peek() != '"' {
				fieldErr = &DecodeError{Offset: -1, Reason: "wallet_id is not a string or null"}
				d.skip(0)
				return
			}
			e.WalletID = d.str()
		case "payload":
			if d.peek() != '{' {
				fieldErr = &DecodeError{Offset: -1, Reason: "payload is not a JSON object"}
			}
			start := d.i
			d.skip(0)
			e.Payload = bytes.TrimSpace(d.b[start:d.i])
		default:
			d.skip(0)
		}
	})
	if d.err == nil && d.peek() != 0 {
		d.fail("trailing data after the event")
	}
	switch {
	case d.err != nil:
		return d.scratch, d.err
	case fieldErr != nil:
		return d.scratch, fieldErr
	case len(e.Topic) == 0:
		return d.scratch, &DecodeError{Offset: -1, Reason: "topic is missing or empty"}
	}
	if e.Payload == nil {
		e.Payload = emptyObject
	}
	return d.scratch, nil
}

var emptyObject = []byte("{}")

// StringMember returns the string value of key in the JSON object obj, unescaped into scratch
// when it has escapes; ok is false when obj has no such string member.
func StringMember(obj, scratch []byte, key string) (val, out []byte, ok bool) {
	raw, err := memberValue(obj, key)
	if err != nil || len(raw) == 0 || raw[0] != '"' {
		return nil, scratch, false
	}
	d := decoder{b: raw, scratch: scratch}
	s := d.str()
	if d.err != nil {
		return nil, scratch, false
	}
	return s, d.scratch, true
}

// ScalarMember is StringMember that also takes a number or a boolean, as written: the value a key
// template (a Kafka record key, an AMQP routing key) may name.
func ScalarMember(obj, scratch []byte, key string) (val, out []byte, ok bool) {
	raw, err := memberValue(obj, key)
	if err != nil || len(raw) == 0 {
		return nil, scratch, false
	}
	switch c := raw[0]; {
	case c == '"':
		return StringMember(obj, scratch, key)
	case c == '-' || '0' <= c && c <= '9' || c == 't' || c == 'f':
		return raw, scratch, true
	}
	return nil, scratch, false
}
