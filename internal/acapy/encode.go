package acapy

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/heraldhq/herald/engine"
)

const hexDigits = "0123456789abcdef"

// AppendPyString appends s as Python's json.dumps writes a str with ensure_ascii=True: quotes,
// backslashes and \n \r \t \b \f escaped by name, other control characters and every non-ASCII
// character as lower-case \uXXXX (UTF-16 surrogate pairs above U+FFFF). Bytes that are not UTF-8,
// which Python could not have decoded in the first place, are written as \ufffd.
func AppendPyString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		default:
			if c < 0x80 {
				dst = appendU(dst, rune(c))
				i++
				start = i
				continue
			}
			r, size := utf8.DecodeRune(s[i:])
			if r >= 0x10000 {
				r -= 0x10000
				dst = appendU(dst, 0xd800+(r>>10))
				dst = appendU(dst, 0xdc00+(r&0x3ff))
			} else {
				dst = appendU(dst, r)
			}
			i += size
			start = i
			continue
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendU(dst []byte, r rune) []byte {
	return append(dst, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}

// appendPyHeaders appends a headers dict in json.dumps form, in the entry's order.
func appendPyHeaders(dst []byte, headers []engine.Header) []byte {
	dst = append(dst, '{')
	for i, h := range headers {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = AppendPyString(dst, h.Name)
		dst = append(dst, ": "...)
		dst = AppendPyString(dst, h.Value)
	}
	return append(dst, '}')
}

// appendURLSafeBase64 appends padded url-safe base64, as Python's urlsafe_b64encode.
func appendURLSafeBase64(dst, src []byte) []byte {
	n := base64.URLEncoding.EncodedLen(len(src))
	dst = growBy(dst, n)
	base64.URLEncoding.Encode(dst[len(dst)-n:], src)
	return dst
}

func growBy(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), 2*cap(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}

// AppendRetryMember appends the retry sorted-set member for m's retries-th retry, byte for byte
// what the reference deliverer writes: json.dumps({"service": {"url"}, "headers", "payload",
// "retries"}). Members are compared as bytes by Redis, so this exactness is what lets Python and
// Herald pumps recognise the same member.
func AppendRetryMember(dst []byte, m *engine.Message, retries int) []byte {
	dst = append(dst, `{"service": {"url": `...)
	dst = AppendPyString(dst, m.URL)
	dst = append(dst, `}, "headers": `...)
	dst = appendPyHeaders(dst, m.Headers)
	dst = append(dst, `, "payload": "`...)
	dst = appendURLSafeBase64(dst, m.Payload)
	dst = append(dst, `", "retries": `...)
	dst = strconv.AppendInt(dst, int64(retries), 10)
	return append(dst, '}')
}

// AppendOutbound appends an outbound entry as ACA-Py writes it: json.dumps({"service": {"url"},
// "payload", "headers"}). Producers, the demo and the tests use it.
func AppendOutbound(dst []byte, url string, headers []engine.Header, payload []byte) []byte {
	dst = append(dst, `{"service": {"url": `...)
	dst = AppendPyString(dst, []byte(url))
	dst = append(dst, `}, "payload": "`...)
	dst = appendURLSafeBase64(dst, payload)
	dst = append(dst, `", "headers": `...)
	dst = appendPyHeaders(dst, headers)
	return append(dst, '}')
}

// DeadLetter is Herald's dead-letter entry: the original bytes and why they were given up on.
type DeadLetter struct {
	Raw      []byte    // the entry exactly as it was queued
	Reason   string    // why it was dead-lettered
	Status   int       // the receiver's last status, 0 when none
	Retries  int       // retries already made
	URL      []byte    // the receiver, when the entry could be decoded
	At       time.Time // when
	Instance string    // which Herald instance gave up
}

// AppendDeadLetter appends d as one compact JSON object. "entry" holds the original entry as a
// string so that it can be replayed as is; when the entry is not UTF-8, "entry_b64" holds its
// exact bytes as well.
func AppendDeadLetter(dst []byte, d DeadLetter) []byte {
	dst = append(dst, `{"reason":`...)
	dst = AppendPyString(dst, []byte(d.Reason))
	if d.Status != 0 {
		dst = append(dst, `,"status":`...)
		dst = strconv.AppendInt(dst, int64(d.Status), 10)
	}
	dst = append(dst, `,"retries":`...)
	dst = strconv.AppendInt(dst, int64(d.Retries), 10)
	if len(d.URL) > 0 {
		dst = append(dst, `,"url":`...)
		dst = AppendPyString(dst, d.URL)
	}
	dst = append(dst, `,"failed_at":"`...)
	dst = d.At.UTC().AppendFormat(dst, time.RFC3339)
	dst = append(dst, `","instance":`...)
	dst = AppendPyString(dst, []byte(d.Instance))
	dst = append(dst, `,"entry":`...)
	dst = AppendPyString(dst, d.Raw)
	if !utf8.Valid(d.Raw) {
		dst = append(dst, `,"entry_b64":"`...)
		n := base64.StdEncoding.EncodedLen(len(d.Raw))
		dst = growBy(dst, n)
		base64.StdEncoding.Encode(dst[len(dst)-n:], d.Raw)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// EncodeDead appends the dead-letter entry of m for a Source's EncodeDead option: every adapter
// dead-letters in the same format, which `herald dlq` reads.
func EncodeDead(dst []byte, m *engine.Message, f engine.Failure, instance string, at time.Time) []byte {
	return AppendDeadLetter(dst, DeadLetter{
		Raw: m.Raw, Reason: f.Reason, Status: f.Status, Retries: m.Retries, URL: m.URL,
		At: at, Instance: instance,
	})
}

// ParseDeadLetter reads an entry written by AppendDeadLetter.
func ParseDeadLetter(b []byte) (DeadLetter, error) {
	var v struct {
		Reason   string `json:"reason"`
		Status   int    `json:"status"`
		Retries  int    `json:"retries"`
		URL      string `json:"url"`
		FailedAt string `json:"failed_at"`
		Instance string `json:"instance"`
		Entry    string `json:"entry"`
		EntryB64 []byte `json:"entry_b64"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return DeadLetter{}, err
	}
	d := DeadLetter{Reason: v.Reason, Status: v.Status, Retries: v.Retries, Instance: v.Instance, Raw: []byte(v.Entry)}
	if v.URL != "" {
		d.URL = []byte(v.URL)
	}
	if v.EntryB64 != nil {
		d.Raw = v.EntryB64
	}
	if v.FailedAt != "" {
		t, err := time.Parse(time.RFC3339, v.FailedAt)
		if err != nil {
			return d, err
		}
		d.At = t
	}
	return d, nil
}
