package acapy

import (
	"encoding/json"
	"errors"
	"sync"
)

// Inbound transport types, as the reference relay writes them.
const (
	TransportHTTP = "http"
	TransportWS   = "ws"
)

// AppendInbound appends the entry the reference relay RPUSHes for an inbound message:
// {"payload": URLSAFE_BASE64(body), "txn_id": ..., "transport_type": ...}, txn_id only when a
// direct response was asked for.
func AppendInbound(dst, body []byte, txnID, transport string) []byte {
	dst = append(dst, `{"payload": "`...)
	dst = appendURLSafeBase64(dst, body)
	dst = append(dst, '"')
	if txnID != "" {
		dst = append(dst, `, "txn_id": `...)
		dst = AppendPyString(dst, []byte(txnID))
	}
	dst = append(dst, `, "transport_type": `...)
	dst = AppendPyString(dst, []byte(transport))
	return append(dst, '}')
}

// AppendMediatorOutbound appends the entry ACA-Py's outbound queue writes in mediator mode:
// {"payload": URLSAFE_BASE64(packed message)}.
func AppendMediatorOutbound(dst, payload []byte) []byte {
	dst = append(dst, `{"payload": "`...)
	dst = appendURLSafeBase64(dst, payload)
	return append(dst, `"}`...)
}

// Packed is what the relay needs from a DIDComm packed message.
type Packed struct {
	// RecipientKey is the recipients' kids joined with ",": the suffix of the inbound list.
	RecipientKey string
	// ReturnRoute: the message asks for a direct response (~transport.return_route set and not
	// "none").
	ReturnRoute bool
}

// InboundError says why a request body cannot be queued; the text is the 400 answer's reason.
type InboundError struct {
	Reason string
	// NotPacked: the body is no packed message at all (not a JSON object, or no protected
	// header), as opposed to a packed message with a broken header.
	NotPacked bool
}

func (e *InboundError) Error() string { return e.Reason }

// ParsePacked reads the recipient key and the return route of a packed message, as the reference
// relay does, but with a reason instead of a crash for every malformed shape. It walks the body
// once with the outbound decoder; the only allocation left is the key string.
func ParsePacked(body []byte) (Packed, error) {
	st, _ := packedPool.Get().(*packedState)
	if st == nil {
		st = &packedState{}
	}
	defer packedPool.Put(st)
	if cap(st.scratch) < len(body) {
		st.scratch = make([]byte, 0, len(body))
	}
	d := decoder{b: body, scratch: st.scratch[:0]}
	var p Packed
	var protected []byte
	haveProtected, protectedString := false, false
	if d.peek() != '{' {
		if d.skip(0); d.err == nil && d.peek() == 0 {
			return Packed{}, &InboundError{Reason: "body is not a JSON object", NotPacked: true}
		}
		d.fail("expected a JSON object")
		return Packed{}, &InboundError{Reason: "body is not JSON: " + d.err.Error(), NotPacked: true}
	}
	d.object(func(key []byte) {
		switch string(key) {
		case "protected":
			haveProtected = true
			protectedString = d.peek() == '"'
			if !protectedString {
				d.skip(0)
				return
			}
			protected = d.str()
		case "~transport":
			if d.peek() != '{' {
				d.skip(0)
				return
			}
			d.object(func(k []byte) {
				if string(k) != "return_route" {
					d.skip(1)
					return
				}
				p.ReturnRoute = d.truthy()
			})
		default:
			d.skip(0)
		}
	})
	if d.err == nil && d.peek() != 0 {
		d.fail("trailing data after the JSON object")
	}
	if d.err != nil {
		return Packed{}, &InboundError{Reason: "body is not JSON: " + d.err.Error(), NotPacked: true}
	}
	if !haveProtected {
		return Packed{}, &InboundError{Reason: "no protected header: not a packed message", NotPacked: true}
	}
	if !protectedString {
		return Packed{}, &InboundError{Reason: "protected is not a string"}
	}
	header, err := decodeBase64(st.header, protected)
	st.header = header
	if err != nil {
		return Packed{}, &InboundError{Reason: "protected is not valid base64url"}
	}
	key, reason := recipientKey(st, header)
	if reason != "" {
		return Packed{}, &InboundError{Reason: reason}
	}
	p.RecipientKey = key
	return p, nil
}

type packedState struct{ scratch, header, hscratch, key []byte }

var packedPool sync.Pool

// recipientKey joins the kids of the header's recipients with ",", the reference's list suffix.
func recipientKey(st *packedState, header []byte) (string, string) {
	if cap(st.hscratch) < len(header) {
		st.hscratch = make([]byte, 0, len(header))
	}
	d := decoder{b: header, scratch: st.hscratch[:0]}
	key := st.key[:0]
	recipients, missingKid := 0, false
	if d.peek() != '{' {
		return "", "protected header is not the JSON of a packed message"
	}
	d.object(func(k []byte) {
		if string(k) != "recipients" || d.peek() != '[' {
			d.skip(0)
			return
		}
		key, recipients, missingKid = key[:0], 0, false
		d.array(func() {
			if d.peek() != '{' {
				d.skip(1)
				missingKid = true
				recipients++
				return
			}
			var kid []byte
			d.object(func(k []byte) {
				if string(k) != "header" || d.peek() != '{' {
					d.skip(2)
					return
				}
				d.object(func(k []byte) {
					if string(k) == "kid" && d.peek() == '"' {
						kid = d.str()
						return
					}
					d.skip(3)
				})
			})
			if len(kid) == 0 {
				missingKid = true
			}
			if recipients > 0 {
				key = append(key, ',')
			}
			key = append(key, kid...)
			recipients++
		})
	})
	st.key = key
	if d.err == nil && d.peek() != 0 {
		d.fail("trailing data")
	}
	switch {
	case d.err != nil:
		return "", "protected header is not the JSON of a packed message"
	case recipients == 0:
		return "", "protected header names no recipients"
	case missingKid:
		return "", "a recipient has no header.kid"
	}
	return string(key), ""
}

// truthy reads any JSON value and reports Python's truth of it, with the reference relay's one
// exception: the string "none" asks for no direct response.
func (d *decoder) truthy() bool {
	switch c := d.peek(); c {
	case '"':
		start := len(d.scratch)
		s := d.str()
		t := len(s) > 0 && string(s) != "none"
		d.scratch = d.scratch[:start]
		return t
	case '{', '[':
		d.i++
		empty := d.peek() == byte(c+2) // '{'+2 == '}', '['+2 == ']'
		d.i--
		d.skip(1)
		return !empty
	case 't':
		d.literal()
		return true
	case 'f', 'n':
		d.literal()
		return false
	}
	start := d.i
	d.number()
	for _, b := range d.b[start:d.i] {
		if b == 'e' || b == 'E' {
			break
		}
		if b >= '1' && b <= '9' {
			return true
		}
	}
	return false
}

// DirectResponse is an entry of the direct-response list, as ACA-Py's inbound transport writes it.
type DirectResponse struct {
	TxnID       string
	Body        []byte
	ContentType string // empty when the entry names none
}

// ParseDirectResponse reads a direct-response entry. ACA-Py writes the content type under
// "content-type", the reference relay reads "content_type": both are accepted.
func ParseDirectResponse(entry []byte) (DirectResponse, error) {
	var e struct {
		TxnID *string `json:"txn_id"`
		Data  *struct {
			Response     *string `json:"response"`
			ContentType  string  `json:"content-type"`
			ContentType2 string  `json:"content_type"`
		} `json:"response_data"`
	}
	if err := json.Unmarshal(entry, &e); err != nil {
		return DirectResponse{}, errors.New("direct response is not a JSON object: " + err.Error())
	}
	if e.TxnID == nil {
		return DirectResponse{}, errors.New("direct response has no txn_id")
	}
	if e.Data == nil {
		return DirectResponse{}, errors.New("direct response has no response_data")
	}
	r := DirectResponse{TxnID: *e.TxnID, ContentType: e.Data.ContentType}
	if r.ContentType == "" {
		r.ContentType = e.Data.ContentType2
	}
	if e.Data.Response != nil {
		b, err := decodeBase64(nil, []byte(*e.Data.Response))
		if err != nil {
			return DirectResponse{}, errors.New("direct response body is not valid base64url")
		}
		r.Body = b
	}
	return r, nil
}
