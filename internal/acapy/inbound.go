package acapy

import (
	"encoding/json"
	"errors"
	"strings"
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
// relay does, but with a reason instead of a crash for every malformed shape.
func ParsePacked(body []byte) (Packed, error) {
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(body, &msg); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return Packed{}, &InboundError{Reason: "body is not JSON: " + syn.Error(), NotPacked: true}
		}
		return Packed{}, &InboundError{Reason: "body is not a JSON object", NotPacked: true}
	}
	var p Packed
	if raw, ok := msg["~transport"]; ok {
		var t map[string]json.RawMessage
		if json.Unmarshal(raw, &t) == nil {
			p.ReturnRoute = truthy(t["return_route"]) && string(t["return_route"]) != `"none"`
		}
	}
	raw, ok := msg["protected"]
	if !ok {
		return Packed{}, &InboundError{Reason: "no protected header: not a packed message", NotPacked: true}
	}
	var protected string
	if json.Unmarshal(raw, &protected) != nil {
		return Packed{}, &InboundError{Reason: "protected is not a string"}
	}
	header, err := decodeBase64(nil, []byte(protected))
	if err != nil {
		return Packed{}, &InboundError{Reason: "protected is not valid base64url"}
	}
	var h struct {
		Recipients []struct {
			Header struct {
				Kid *string `json:"kid"`
			} `json:"header"`
		} `json:"recipients"`
	}
	if json.Unmarshal(header, &h) != nil {
		return Packed{}, &InboundError{Reason: "protected header is not the JSON of a packed message"}
	}
	if len(h.Recipients) == 0 {
		return Packed{}, &InboundError{Reason: "protected header names no recipients"}
	}
	kids := make([]string, len(h.Recipients))
	for i, r := range h.Recipients {
		if r.Header.Kid == nil || *r.Header.Kid == "" {
			return Packed{}, &InboundError{Reason: "a recipient has no header.kid"}
		}
		kids[i] = *r.Header.Kid
	}
	p.RecipientKey = strings.Join(kids, ",")
	return p, nil
}

// truthy is Python's truth of a JSON value.
func truthy(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	switch s {
	case "", "null", "false", "0", `""`, "[]", "{}":
		return false
	}
	if strings.HasPrefix(s, "[") || strings.HasPrefix(s, "{") {
		var v any
		if json.Unmarshal(raw, &v) != nil {
			return false
		}
		switch x := v.(type) {
		case []any:
			return len(x) > 0
		case map[string]any:
			return len(x) > 0
		}
	}
	if f, err := json.Number(s).Float64(); err == nil {
		return f != 0
	}
	return true
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
