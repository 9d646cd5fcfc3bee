// Package acapy holds the byte formats of ACA-Py's redis_events queues: the outbound entry ACA-Py
// RPUSHes, the retry member the reference deliverer ZADDs, and Herald's dead-letter entry. The
// decoder and encoders are hand-written so that the hot path allocates nothing, and the encoders
// write exactly what Python's json.dumps writes, so reference services read Herald's bytes.
package acapy

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"

	"github.com/heraldhq/herald/engine"
)

// MaxRetries is the reference's limit: a message is retried while its count is below it.
const MaxRetries = 5

// DecodeError says why an entry cannot be decoded; its text is the dead-letter reason.
type DecodeError struct {
	Offset int
	Reason string
}

func (e *DecodeError) Error() string {
	if e.Offset < 0 {
		return e.Reason
	}
	return "invalid JSON at offset " + strconv.Itoa(e.Offset) + ": " + e.Reason
}

// Errors that name a missing or mistyped field rather than broken JSON.
var (
	ErrNoURL          = &DecodeError{Offset: -1, Reason: "missing service.url"}
	ErrNoPayload      = &DecodeError{Offset: -1, Reason: "missing payload"}
	ErrPayloadType    = &DecodeError{Offset: -1, Reason: "payload is not a string"}
	ErrPayloadBase64  = &DecodeError{Offset: -1, Reason: "payload is not valid base64"}
	ErrHeadersType    = &DecodeError{Offset: -1, Reason: "headers is not an object"}
	ErrHeaderValue    = &DecodeError{Offset: -1, Reason: "a header value is not a string"}
	ErrRetriesType    = &DecodeError{Offset: -1, Reason: "retries is not an integer"}
	ErrServiceType    = &DecodeError{Offset: -1, Reason: "service is not an object"}
	ErrURLType        = &DecodeError{Offset: -1, Reason: "service.url is not a string"}
	ErrNotObject      = &DecodeError{Offset: 0, Reason: "entry is not a JSON object"}
	ErrNotUTF8        = &DecodeError{Offset: -1, Reason: "entry is not valid UTF-8"}
	ErrTrailing       = &DecodeError{Offset: -1, Reason: "trailing data after the JSON object"}
	errTooDeep        = &DecodeError{Offset: -1, Reason: "nesting too deep"}
	errUnexpectedEnd  = "unexpected end of input"
	errExpectedColon  = "expected ':'"
	errExpectedString = "expected a string"
)

// decoder scans one entry. Strings without escapes are returned as sub-slices of the input;
// strings with escapes are unescaped into scratch, which is sized up front and never grows, so
// earlier sub-slices of it stay valid.
type decoder struct {
	b       []byte
	i       int
	scratch []byte
	err     error
}

func (d *decoder) fail(reason string) {
	if d.err == nil {
		d.err = &DecodeError{Offset: d.i, Reason: reason}
	}
}

func (d *decoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, 0 at the end.
func (d *decoder) peek() byte {
	d.ws()
	if d.i >= len(d.b) {
		return 0
	}
	return d.b[d.i]
}

func (d *decoder) expect(c byte, reason string) bool {
	if d.peek() != c {
		if d.i >= len(d.b) {
			d.fail(errUnexpectedEnd)
		} else {
			d.fail(reason)
		}
		return false
	}
	d.i++
	return true
}

// str reads a JSON string at the cursor.
func (d *decoder) str() []byte {
	if d.peek() != '"' {
		d.fail(errExpectedString)
		return nil
	}
	d.i++
	start := d.i
	// Eight bytes at a time past the plain ones: a payload string is hundreds of base64
	// characters with nothing to unescape, and this scan is most of what decoding costs.
	for d.i+8 <= len(d.b) && !special(binary.LittleEndian.Uint64(d.b[d.i:])) {
		d.i += 8
	}
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			s := d.b[start:d.i]
			d.i++
			return s
		case c == '\\':
			return d.unescape(start)
		case c < 0x20:
			d.fail("control character in string")
			return nil
		}
		d.i++
	}
	d.fail(errUnexpectedEnd)
	return nil
}

// special reports whether any of the eight bytes in x ends or escapes a JSON string or is a
// control character: a '"', a '\\' or a byte below 0x20. It may also report a byte that follows
// one of those, which only sends the caller to look byte by byte a little early.
func special(x uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	q := x ^ (lo * '"')
	b := x ^ (lo * '\\')
	return ((q-lo)&^q|(b-lo)&^b|(x-lo*0x20)&^x)&hi != 0
}

// unescape continues a string that holds escapes, writing it into scratch.
func (d *decoder) unescape(start int) []byte {
	out := len(d.scratch)
	d.scratch = append(d.scratch, d.b[start:d.i]...)
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			d.i++
			return d.scratch[out:len(d.scratch):len(d.scratch)]
		case c < 0x20:
			d.fail("control character in string")
			return nil
		case c != '\\':
			d.scratch = append(d.scratch, c)
			d.i++
			continue
		}
		if d.i+1 >= len(d.b) {
			d.fail(errUnexpectedEnd)
			return nil
		}
		e := d.b[d.i+1]
		d.i += 2
		switch e {
		case '"', '\\', '/':
			d.scratch = append(d.scratch, e)
		case 'b':
			d.scratch = append(d.scratch, '\b')
		case 'f':
			d.scratch = append(d.scratch, '\f')
		case 'n':
			d.scratch = append(d.scratch, '\n')
		case 'r':
			d.scratch = append(d.scratch, '\r')
		case 't':
			d.scratch = append(d.scratch, '\t')
		case 'u':
			r, ok := d.hex4()
			if !ok {
				return nil
			}
			if r >= 0xd800 && r < 0xdc00 && d.i+1 < len(d.b) && d.b[d.i] == '\\' && d.b[d.i+1] == 'u' {
				save := d.i
				d.i += 2
				if lo, ok := d.hex4(); ok && lo >= 0xdc00 && lo < 0xe000 {
					r = 0x10000 + (r-0xd800)<<10 + (lo - 0xdc00)
				} else {
					d.err = nil
					d.i = save
				}
			}
			d.scratch = appendRune(d.scratch, r)
		default:
			d.i--
			d.fail("invalid escape in string")
			return nil
		}
	}
	d.fail(errUnexpectedEnd)
	return nil
}

func (d *decoder) hex4() (rune, bool) {
	if d.i+4 > len(d.b) {
		d.fail(errUnexpectedEnd)
		return 0, false
	}
	var r rune
	for _, c := range d.b[d.i : d.i+4] {
		r <<= 4
		switch {
		case '0' <= c && c <= '9':
			r |= rune(c - '0')
		case 'a' <= c && c <= 'f':
			r |= rune(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			d.fail("invalid \\u escape")
			return 0, false
		}
	}
	d.i += 4
	return r, true
}

// appendRune writes r as UTF-8; lone surrogates become U+FFFD, as Go strings would hold them.
func appendRune(b []byte, r rune) []byte {
	if r >= 0xd800 && r < 0xe000 {
		r = 0xfffd
	}
	switch {
	case r < 0x80:
		return append(b, byte(r))
	case r < 0x800:
		return append(b, 0xc0|byte(r>>6), 0x80|byte(r)&0x3f)
	case r < 0x10000:
		return append(b, 0xe0|byte(r>>12), 0x80|byte(r>>6)&0x3f, 0x80|byte(r)&0x3f)
	}
	return append(b, 0xf0|byte(r>>18), 0x80|byte(r>>12)&0x3f, 0x80|byte(r>>6)&0x3f, 0x80|byte(r)&0x3f)
}

// literal consumes one of null, true, false.
func (d *decoder) literal() {
	for _, w := range [...]string{"null", "true", "false"} {
		if len(d.b)-d.i >= len(w) && string(d.b[d.i:d.i+len(w)]) == w {
			d.i += len(w)
			return
		}
	}
	d.fail("invalid literal")
}

func (d *decoder) isNull() bool {
	if d.peek() == 'n' && len(d.b)-d.i >= 4 && string(d.b[d.i:d.i+4]) == "null" {
		d.i += 4
		return true
	}
	return false
}

// number reads a JSON number; integer reports whether it was a whole number that fits an int.
func (d *decoder) number() (n int, integer bool) {
	d.ws()
	start := d.i
	neg := false
	if d.i < len(d.b) && d.b[d.i] == '-' {
		neg = true
		d.i++
	}
	digits := 0
	integer = true
	if d.i+1 < len(d.b) && d.b[d.i] == '0' && d.b[d.i+1] >= '0' && d.b[d.i+1] <= '9' {
		d.fail("invalid number: leading zero")
		return 0, false
	}
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		if n > (1<<53)/10 {
			integer = false
		}
		n = n*10 + int(d.b[d.i]-'0')
		d.i++
		digits++
	}
	if digits == 0 {
		d.i = start
		d.fail("invalid number")
		return 0, false
	}
	if d.i < len(d.b) && d.b[d.i] == '.' {
		integer = false
		d.i++
		for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
			d.i++
		}
	}
	if d.i < len(d.b) && (d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		integer = false
		d.i++
		if d.i < len(d.b) && (d.b[d.i] == '+' || d.b[d.i] == '-') {
			d.i++
		}
		for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
			d.i++
		}
	}
	if neg {
		n = -n
	}
	return n, integer
}

// skip consumes any JSON value.
func (d *decoder) skip(depth int) {
	if depth > 64 {
		if d.err == nil {
			d.err = errTooDeep
		}
		return
	}
	switch c := d.peek(); c {
	case '"':
		start := len(d.scratch)
		d.str()
		d.scratch = d.scratch[:start]
	case '{', '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		d.i++
		if d.peek() == closer {
			d.i++
			return
		}
		for d.err == nil {
			if c == '{' {
				start := len(d.scratch)
				d.str()
				d.scratch = d.scratch[:start]
				if !d.expect(':', errExpectedColon) {
					return
				}
			}
			d.skip(depth + 1)
			switch d.peek() {
			case ',':
				d.i++
			case closer:
				d.i++
				return
			case 0:
				d.fail(errUnexpectedEnd)
			default:
				d.fail("expected ',' or '" + string(closer) + "'")
			}
		}
	case 'n', 't', 'f':
		d.literal()
	case 0:
		d.fail(errUnexpectedEnd)
	default:
		d.number()
	}
}

// object walks the members of an object at the cursor, calling member for each key; member must
// consume the value.
func (d *decoder) object(member func(key []byte)) {
	if !d.expect('{', "expected '{'") {
		return
	}
	if d.peek() == '}' {
		d.i++
		return
	}
	for d.err == nil {
		key := d.str()
		if d.err != nil || !d.expect(':', errExpectedColon) {
			return
		}
		member(key)
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return
		case 0:
			d.fail(errUnexpectedEnd)
		default:
			d.fail("expected ',' or '}'")
		}
	}
}

// array walks the elements of an array at the cursor, calling element for each; element must
// consume the value.
func (d *decoder) array(element func()) {
	if !d.expect('[', "expected '['") {
		return
	}
	if d.peek() == ']' {
		d.i++
		return
	}
	for d.err == nil {
		element()
		switch d.peek() {
		case ',':
			d.i++
		case ']':
			d.i++
			return
		case 0:
			d.fail(errUnexpectedEnd)
		default:
			d.fail("expected ',' or ']'")
		}
	}
}

// DecodeOutbound parses m.Raw, an outbound entry as ACA-Py writes it, into m.URL, m.Headers,
// m.Payload and m.Retries. Unknown keys are skipped; "headers": null and "retries": null take the
// reference's defaults. Once m's buffers have grown it allocates nothing.
func DecodeOutbound(m *engine.Message) error {
	if !utf8.Valid(m.Raw) {
		// Python's json.loads of the entry's bytes fails first on their UTF-8 decoding.
		m.URL, m.Headers, m.Retries = nil, m.Headers[:0], 0
		return ErrNotUTF8
	}
	if cap(m.Scratch) < len(m.Raw) {
		m.Scratch = make([]byte, 0, len(m.Raw))
	}
	d := decoder{b: m.Raw, scratch: m.Scratch[:0]}
	m.URL, m.Headers, m.Retries = nil, m.Headers[:0], 0
	var payload []byte
	havePayload := false
	var fieldErr error
	setErr := func(e error) {
		if fieldErr == nil {
			fieldErr = e
		}
	}
	if d.peek() != '{' {
		if d.i < len(d.b) {
			return ErrNotObject
		}
		d.fail(errUnexpectedEnd)
		return d.err
	}
	d.object(func(key []byte) {
		switch string(key) {
		case "service":
			if d.isNull() {
				return
			}
			if d.peek() != '{' {
				setErr(ErrServiceType)
				d.skip(0)
				return
			}
			d.object(func(k []byte) {
				if string(k) != "url" {
					d.skip(1)
					return
				}
				if d.peek() != '"' {
					setErr(ErrURLType)
					d.skip(1)
					return
				}
				m.URL = d.str()
			})
		case "payload":
			if d.peek() != '"' {
				setErr(ErrPayloadType)
				d.skip(0)
				return
			}
			payload, havePayload = d.str(), true
		case "headers":
			if d.isNull() {
				return
			}
			if d.peek() != '{' {
				setErr(ErrHeadersType)
				d.skip(0)
				return
			}
			d.object(func(k []byte) {
				if d.peek() != '"' {
					setErr(ErrHeaderValue)
					d.skip(1)
					return
				}
				m.Headers = append(m.Headers, engine.Header{Name: k, Value: d.str()})
			})
		case "retries":
			if d.isNull() {
				return
			}
			if c := d.peek(); c != '-' && (c < '0' || c > '9') {
				setErr(ErrRetriesType)
				d.skip(0)
				return
			}
			n, ok := d.number()
			if !ok || n < 0 {
				setErr(ErrRetriesType)
			}
			m.Retries = n
		default:
			d.skip(0)
		}
	})
	m.Scratch = d.scratch
	if d.err != nil {
		return d.err
	}
	if d.peek() != 0 {
		return ErrTrailing
	}
	switch {
	case fieldErr != nil:
		return fieldErr
	case m.URL == nil:
		return ErrNoURL
	case !havePayload:
		return ErrNoPayload
	}
	var err error
	m.Payload, err = decodeBase64(m.Payload[:0], payload)
	return err
}

// decodeBase64 decodes url-safe base64, padded or not. Like Python's urlsafe_b64decode it also
// takes the standard alphabet's '+' and '/', even mixed with '-' and '_' in one string.
func decodeBase64(dst, src []byte) ([]byte, error) {
	for len(src) > 0 && src[len(src)-1] == '=' {
		src = src[:len(src)-1]
	}
	if len(src)%4 == 1 {
		return dst[:0], ErrPayloadBase64
	}
	n := len(src)/4*3 + len(src)%4*3/4
	if cap(dst) < n {
		dst = make([]byte, 0, n)
	}
	out := dst[:n]
	o, i := 0, 0
	for ; i+4 <= len(src); i += 4 {
		a, b, c, d := b64Values[src[i]], b64Values[src[i+1]], b64Values[src[i+2]], b64Values[src[i+3]]
		if a|b|c|d > 63 {
			return dst[:0], base64Error(src, i)
		}
		v := uint32(a)<<18 | uint32(b)<<12 | uint32(c)<<6 | uint32(d)
		out[o], out[o+1], out[o+2] = byte(v>>16), byte(v>>8), byte(v)
		o += 3
	}
	if rest := len(src) - i; rest > 0 {
		var v uint32
		for k := 0; k < rest; k++ {
			x := b64Values[src[i+k]]
			if x > 63 {
				return dst[:0], base64Error(src, i+k)
			}
			v |= uint32(x) << (18 - 6*k)
		}
		out[o] = byte(v >> 16)
		if rest == 3 {
			out[o+1] = byte(v >> 8)
		}
	}
	return out, nil
}

// b64Values maps the bytes of both base64 alphabets to their values; every other byte is 0xff.
var b64Values = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	const std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(std); i++ {
		t[std[i]] = byte(i)
	}
	t['-'], t['_'] = 62, 63
	return t
}()

// base64Error names the first bad byte at or after from; it runs only on the error path.
func base64Error(src []byte, from int) error {
	for k := from; k < len(src); k++ {
		if b64Values[src[k]] > 63 {
			return &DecodeError{Offset: -1, Reason: "payload is not valid base64: bad byte at offset " + strconv.Itoa(k)}
		}
	}
	return ErrPayloadBase64
}
