package sink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/endpoint"
)

// target is where a plain-http URL points: the connection key and what the request line needs.
type target struct {
	authority []byte // host[:port] as the URL spells it: the Host header and the pool key
	host      []byte // host alone, brackets of an IPv6 literal removed
	port      int
	path      []byte // path and query as the URL spells them; may be empty or start with '?'
}

// parseTarget reads an http:// URL the event loop can send itself. ok is false for anything
// else (https, user info, fragments, odd characters): those go through the pooled client, which
// handles or refuses them exactly as before.
func parseTarget(url []byte) (t target, ok bool) {
	const scheme = len("http://")
	if len(url) < scheme || SchemeOf(url) != SchemeHTTP || string(url[4:scheme]) != "://" {
		return t, false
	}
	rest := url[scheme:]
	end := len(rest)
	for i, c := range rest {
		if c == '/' || c == '?' {
			end = i
			break
		}
	}
	t.authority = rest[:end]
	t.path = rest[end:]
	if len(t.authority) == 0 {
		return t, false
	}
	for _, c := range url {
		// A fragment is never sent, user info needs encoding, and control characters or spaces
		// would break the request line: leave all of them to the pooled client.
		if c <= ' ' || c >= 0x7f || c == '#' || c == '@' || c == '\\' {
			return t, false
		}
	}
	hostport := t.authority
	t.port = 80
	if hostport[0] == '[' {
		i := bytes.IndexByte(hostport, ']')
		if i < 0 {
			return t, false
		}
		t.host = hostport[1:i]
		hostport = hostport[i+1:]
		if len(hostport) > 0 && hostport[0] != ':' {
			return t, false
		}
	} else if i := bytes.IndexByte(hostport, ':'); i >= 0 {
		t.host = hostport[:i]
		hostport = hostport[i:]
	} else {
		t.host = hostport
		hostport = nil
	}
	if len(hostport) > 0 { // ":port"
		p, err := strconv.Atoi(string(hostport[1:]))
		if err != nil || p <= 0 || p > 65535 {
			return t, false
		}
		t.port = p
	}
	if len(t.host) == 0 {
		return t, false
	}
	return t, true
}

// sendable reports whether the event loop may send m's headers as they are: names that are
// tokens, values without line breaks, and none of the headers the connection itself owns. The
// pooled client sends the rest, exactly as before.
func sendable(m *engine.Message) bool {
	for _, h := range m.Headers {
		if !token(h.Name) || !fieldValue(h.Value) ||
			equalFold(h.Name, "host") || equalFold(h.Name, "content-length") ||
			equalFold(h.Name, "transfer-encoding") || equalFold(h.Name, "connection") {
			return false
		}
	}
	return true
}

// appendRequest appends m as an HTTP/1.1 POST to dst: the entry's headers in its order and with
// its spelling, then a User-Agent when the entry has none, and the Content-Length of the payload.
// m must be sendable.
func appendRequest(dst []byte, t *target, m *engine.Message, userAgent string) []byte {
	dst = append(dst, "POST "...)
	if len(t.path) == 0 || t.path[0] != '/' {
		dst = append(dst, '/')
	}
	dst = append(dst, t.path...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, t.authority...)
	dst = append(dst, "\r\n"...)
	hasAgent := false
	for _, h := range m.Headers {
		if equalFold(h.Name, "user-agent") {
			hasAgent = true
		}
		dst = append(dst, h.Name...)
		dst = append(dst, ": "...)
		dst = append(dst, h.Value...)
		dst = append(dst, "\r\n"...)
	}
	if !hasAgent {
		dst = append(dst, "User-Agent: "...)
		dst = append(dst, userAgent...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(m.Payload)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, m.Payload...)
}

// token reports whether b is a valid header name (RFC 9110 5.1). Every header of every message
// passes through it, so it is a table lookup per byte.
func token(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChar[c] {
			return false
		}
	}
	return true
}

// tokenChar holds the bytes a header name may contain: visible ASCII but the separators.
var tokenChar = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		t[c] = !strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c)
	}
	return t
}()

// fieldValue reports whether b can be sent as a header value: no line breaks, no NUL. It looks at
// eight bytes at a time for any byte below 0x0e, and only then at the bytes one by one.
func fieldValue(b []byte) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for len(b) >= 8 {
		x := binary.LittleEndian.Uint64(b)
		if (x-0x0e*ones)&^x&highs != 0 && !fieldBytes(b[:8]) {
			return false
		}
		b = b[8:]
	}
	return fieldBytes(b)
}

func fieldBytes(b []byte) bool {
	for _, c := range b {
		if c == '\r' || c == '\n' || c == 0 {
			return false
		}
	}
	return true
}

// equalFold compares b with lower, an ASCII lower-case name, ignoring case.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// Errors of the response reader. Each is fixed so that a failing receiver costs no allocation.
var (
	errMalformedResponse = errors.New("malformed HTTP response from the receiver")
	errHeaderTooLarge    = errors.New("receiver's response header is larger than 64 KiB")
	errUpgrade           = errors.New("receiver answered 101 Switching Protocols to a POST")
	errClosedEarly       = errors.New("receiver closed the connection before answering in full")
)

// maxResponseHeader bounds a response's status line and headers.
const maxResponseHeader = 64 << 10

type respState uint8

const (
	stHead       respState = iota // reading the status line and headers
	stBody                        // skipping remain bytes of a Content-Length body
	stChunkSize                   // reading a chunk-size line
	stChunkData                   // skipping remain bytes of chunk data
	stChunkCRLF                   // reading the CRLF after chunk data
	stTrailer                     // reading trailer lines until an empty one
	stUntilClose                  // the body runs until the receiver closes
	stDone
)

// response reads one HTTP/1.x response incrementally, keeping nothing of the body: a deliverer
// needs the status and whether the connection may be reused, not what the receiver said.
type response struct {
	state      respState
	status     int
	keepAlive  bool
	remain     int64
	retryAfter time.Duration // the Retry-After header's wait, 0 without one
}

func (r *response) reset() { *r = response{} }

// feed consumes what it can of b and returns how many bytes it used. Bytes it leaves are an
// incomplete header block, to be offered again with more after them. done is true once the
// response ended; bytes after it are not consumed.
func (r *response) feed(b []byte) (used int, done bool, err error) {
	for used < len(b) || r.state == stDone {
		switch r.state {
		case stDone:
			return used, true, nil
		case stHead:
			end := bytes.Index(b[used:], []byte("\r\n\r\n"))
			if end < 0 {
				if len(b)-used > maxResponseHeader {
					return used, false, errHeaderTooLarge
				}
				return used, false, nil
			}
			if err := r.head(b[used : used+end+2]); err != nil {
				return used, false, err
			}
			used += end + 4
		case stBody:
			n := int64(len(b) - used)
			if n >= r.remain {
				used += int(r.remain)
				r.state = stDone
				continue
			}
			r.remain -= n
			used = len(b)
		case stChunkSize, stTrailer, stChunkCRLF:
			i := bytes.IndexByte(b[used:], '\n')
			if i < 0 {
				// An incomplete line stays unconsumed, to be offered again whole.
				if len(b)-used > 4096 {
					return used, false, errMalformedResponse
				}
				return used, false, nil
			}
			line := bytes.TrimRight(b[used:used+i+1], "\r\n")
			used += i + 1
			switch r.state {
			case stChunkCRLF:
				if len(line) != 0 {
					return used, false, errMalformedResponse
				}
				r.state = stChunkSize
			case stTrailer:
				if len(line) == 0 {
					r.state = stDone
				}
			case stChunkSize:
				if j := bytes.IndexByte(line, ';'); j >= 0 {
					line = line[:j]
				}
				size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
				if err != nil || size < 0 {
					return used, false, errMalformedResponse
				}
				if size == 0 {
					r.state = stTrailer
				} else {
					r.remain, r.state = size, stChunkData
				}
			}
		case stChunkData:
			n := int64(len(b) - used)
			if n >= r.remain {
				used += int(r.remain)
				r.remain, r.state = 0, stChunkCRLF
				continue
			}
			r.remain -= n
			used = len(b)
		case stUntilClose:
			used = len(b)
		}
	}
	return used, r.state == stDone, nil
}

// eof tells the reader the receiver closed the connection; it returns whether that ended the
// response.
func (r *response) eof() bool {
	if r.state == stUntilClose {
		r.state = stDone
	}
	return r.state == stDone
}

// head parses a status line and its headers (the block ends with one CRLF).
func (r *response) head(b []byte) error {
	eol := bytes.IndexByte(b, '\n')
	line := bytes.TrimRight(b[:eol+1], "\r\n")
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[8] != ' ' {
		return errMalformedResponse
	}
	minor := line[7]
	status := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return errMalformedResponse
		}
		status = status*10 + int(c-'0')
	}
	if len(line) > 12 && line[12] != ' ' {
		return errMalformedResponse
	}
	r.status = status
	r.keepAlive = minor != '0'
	length, chunked := int64(-1), false
	for rest := b[eol+1:]; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return errMalformedResponse
		}
		h := bytes.TrimRight(rest[:i+1], "\r\n")
		rest = rest[i+1:]
		colon := bytes.IndexByte(h, ':')
		if colon <= 0 {
			return errMalformedResponse
		}
		name, value := h[:colon], bytes.TrimSpace(h[colon+1:])
		switch {
		case equalFold(name, "content-length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (length >= 0 && n != length) {
				return errMalformedResponse
			}
			length = n
		case equalFold(name, "transfer-encoding"):
			chunked = hasToken(value, "chunked")
			if !chunked {
				return errMalformedResponse // an encoding whose end we cannot find
			}
		case equalFold(name, "retry-after"):
			r.retryAfter = endpoint.ParseRetryAfter(value, time.Now())
		case equalFold(name, "connection"):
			if hasToken(value, "close") {
				r.keepAlive = false
			} else if hasToken(value, "keep-alive") {
				r.keepAlive = true
			}
		}
	}
	switch {
	case status == 101:
		return errUpgrade
	case status >= 100 && status < 200:
		r.reset() // an interim answer; the real one follows
		return nil
	case status < 100:
		return errMalformedResponse
	case status == 204 || status == 304:
		r.state = stDone
	case chunked:
		// With both, the length is a lie to be ignored (RFC 9112 6.3); the connection is not
		// trusted afterwards.
		if length >= 0 {
			r.keepAlive = false
		}
		r.state = stChunkSize
	case length == 0:
		r.state = stDone
	case length > 0:
		r.remain, r.state = length, stBody
	default:
		r.keepAlive = false
		r.state = stUntilClose
	}
	return nil
}

// hasToken reports whether the comma-separated list v holds tok, ignoring case.
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		part := v
		if i >= 0 {
			part, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if equalFold(bytes.TrimSpace(part), tok) {
			return true
		}
	}
	return false
}
