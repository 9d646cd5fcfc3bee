// Package waypoint serves "wait for one event" Server-Sent Events streams: a client names the
// wallet, topic, state and payload field value it waits for, and gets the first such event, from
// a short replay window or as it arrives, then the stream closes. Every stream shares one
// subscription to the event source and one index, so an event costs the same whether ten or ten
// thousand streams are open.
package waypoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/heraldhq/herald/internal/acapy"
)

// Event is one state event, parsed once and shared read-only by every stream it answers.
type Event struct {
	Wallet, Topic, State, Group string
	// Payload is the compact payload object, searched by field name when a stream needs it.
	Payload []byte
	// Frame is the whole SSE frame, "data: {...}\n\n", written as is to every stream it answers.
	Frame []byte
	// At is when the source stored the event; look_back compares against it.
	At time.Time
}

type envelope struct {
	Wallet  json.RawMessage `json:"wallet_id"`
	Topic   json.RawMessage `json:"topic"`
	Origin  json.RawMessage `json:"origin"`
	Group   json.RawMessage `json:"group_id"`
	Payload json.RawMessage `json:"payload"`
}

var null = json.RawMessage("null")

// ParseEvent reads an event envelope {"wallet_id", "topic", "origin", "group_id", "payload"}.
// The frame it builds has those keys in that order, compact, whatever order the input had.
func ParseEvent(b []byte, at time.Time) (*Event, error) {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, err
	}
	if len(env.Payload) == 0 || env.Payload[0] != '{' {
		return nil, errors.New("payload is not a JSON object")
	}
	e := &Event{At: at}
	var err error
	if e.Wallet, err = text(env.Wallet, "wallet_id"); err != nil {
		return nil, err
	}
	if e.Topic, err = text(env.Topic, "topic"); err != nil {
		return nil, err
	}
	if len(env.Group) > 0 && string(env.Group) != "null" {
		if e.Group, err = text(env.Group, "group_id"); err != nil {
			return nil, err
		}
	}
	if e.Wallet == "" || e.Topic == "" {
		return nil, errors.New("wallet_id and topic are required")
	}
	e.Topic = canonicalTopic(e.Topic)
	var frame bytes.Buffer
	frame.Grow(len(b) + 16)
	frame.WriteString(`data: {"wallet_id":`)
	frame.Write(env.Wallet)
	frame.WriteString(`,"topic":`)
	frame.Write(env.Topic)
	frame.WriteString(`,"origin":`)
	frame.Write(orNull(env.Origin))
	frame.WriteString(`,"group_id":`)
	frame.Write(orNull(env.Group))
	frame.WriteString(`,"payload":`)
	start := frame.Len()
	if err := json.Compact(&frame, env.Payload); err != nil {
		return nil, err
	}
	end := frame.Len()
	frame.WriteString("}\n\n")
	e.Frame = frame.Bytes()
	e.Payload = e.Frame[start:end]
	e.State, _ = member(e.Payload, "state")
	return e, nil
}

func orNull(r json.RawMessage) json.RawMessage {
	if len(r) == 0 {
		return null
	}
	return r
}

func text(r json.RawMessage, name string) (string, error) {
	if len(r) == 0 || string(r) == "null" {
		return "", nil
	}
	s, err := strconv.Unquote(string(r))
	if err != nil || r[0] != '"' {
		// strconv.Unquote is Go syntax, which JSON strings are not quite: let JSON decide.
		if err := json.Unmarshal(r, &s); err != nil {
			return "", errors.New(name + " is not a string")
		}
	}
	return s, nil
}

// member returns the text a stream compares its field_id with: a string's value, or a number or
// boolean as written. ok is false when the payload has no such member, or not of those kinds.
func member(payload []byte, name string) (string, bool) {
	v, _, ok := acapy.ScalarMember(payload, make([]byte, 0, len(payload)), name)
	return string(v), ok
}

// canonicalTopic maps the spellings upstream uses for one topic to one, so that a stream asking
// for either gets events published under either.
func canonicalTopic(t string) string {
	if t == "basic-messages" {
		return "basic-message"
	}
	return t
}
