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
	"strings"
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
	if err := e.build(env.Wallet, env.Topic, env.Origin, env.Group, env.Payload); err != nil {
		return nil, err
	}
	state, _ := member(e.Payload, "state")
	e.State = string(state)
	return e, nil
}

// build writes the frame of e from the JSON values of its five keys, compact and in the
// reference's order; an absent value is null.
func (e *Event) build(wallet, topic, origin, group, payload json.RawMessage) error {
	var frame bytes.Buffer
	frame.Grow(len(wallet) + len(topic) + len(origin) + len(group) + len(payload) + 80)
	frame.WriteString(`data: {"wallet_id":`)
	start, end := 0, 0
	for i, v := range [...]json.RawMessage{wallet, topic, origin, group, payload} {
		if i > 0 {
			frame.WriteString([...]string{"", `,"topic":`, `,"origin":`, `,"group_id":`, `,"payload":`}[i])
		}
		if i == 4 {
			start = frame.Len()
		}
		if err := json.Compact(&frame, orNull(v)); err != nil {
			return err
		}
	}
	end = frame.Len()
	frame.WriteString("}\n\n")
	e.Frame = frame.Bytes()
	e.Payload = e.Frame[start:end]
	return nil
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
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", errors.New(name + " is not a string")
	}
	return s, nil
}

// member returns the text a stream compares its field_id with: a string's value, or a number or
// boolean as written. ok is false when the payload has no such member, or not of those kinds.
// The bytes are the payload's own unless the string had escapes: matching allocates nothing for
// the usual plain ids.
func member(payload []byte, name string) ([]byte, bool) {
	v, _, ok := acapy.ScalarMember(payload, nil, name)
	return v, ok
}

// canonicalTopic maps the spellings upstream uses for one topic to one, so that a stream asking
// for either gets events published under either.
func canonicalTopic(t string) string {
	if t == "basic-messages" {
		return "basic-message"
	}
	return t
}

// waypointTopics names, by ACA-Py category (or webhook topic), the topic acapy-cloud publishes
// its events under.
var waypointTopics = map[string]string{
	"connections":                    "connections",
	"issue_credential":               "credentials",
	"issue_credential_v2_0":          "credentials",
	"issue_credential_v2_0_indy":     "credentials_indy",
	"issue_credential_v2_0_ld_proof": "credentials_ld",
	"present_proof":                  "proofs",
	"present_proof_v2_0":             "proofs",
	"endorse_transaction":            "endorsements",
	"out_of_band":                    "oob",
	"revocation_registry":            "revocation",
	"basicmessage":                   "basic-message",
	"basicmessages":                  "basic-message",
}

// ParseEntry reads an entry the redis_events plugin (or `herald events`) pushes to a list,
// {"payload": {"wallet_id", "state", "topic", "category", "payload"}, "metadata": {...}}, as the
// event acapy-cloud would have published for it: the topic named after the category, the state
// hyphenated as acapy-cloud's states are. ACA-Py knows no group and no origin: both are null.
func ParseEntry(b []byte, at time.Time) (*Event, error) {
	var entry struct {
		Payload *struct {
			Wallet   json.RawMessage `json:"wallet_id"`
			Topic    string          `json:"topic"`
			Category *string         `json:"category"`
			Payload  json.RawMessage `json:"payload"`
		} `json:"payload"`
	}
	if err := json.Unmarshal(b, &entry); err != nil {
		return nil, err
	}
	p := entry.Payload
	if p == nil || len(p.Payload) == 0 || p.Payload[0] != '{' {
		return nil, errors.New(`not an event entry: want {"payload": {"wallet_id", "topic", "category", "payload": {...}}}`)
	}
	e := &Event{At: at}
	var err error
	if e.Wallet, err = text(p.Wallet, "wallet_id"); err != nil || e.Wallet == "" {
		return nil, errors.New("wallet_id is missing or not a string")
	}
	name := p.Topic
	if p.Category != nil && *p.Category != "webhook" {
		name = *p.Category
	} else if rest, ok := strings.CutPrefix(p.Topic, "acapy::webhook::"); ok {
		name = rest
	} else if strings.HasPrefix(p.Topic, "acapy::basicmessage::") {
		name = "basicmessage"
	}
	e.Topic = name
	if t, ok := waypointTopics[name]; ok {
		e.Topic = t
	}
	topic, _ := json.Marshal(e.Topic)
	if err := e.build(p.Wallet, topic, nil, nil, p.Payload); err != nil {
		return nil, err
	}
	state, _ := member(e.Payload, "state")
	e.State = strings.ReplaceAll(string(state), "_", "-")
	return e, nil
}
