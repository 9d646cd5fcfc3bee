// Package callbacks is `herald callbacks`: the Stellar Anchor Platform's event processor, done
// loss-free. Every destination (the business server, each client's status callbacks) reads the
// Kafka topic through a consumer group of its own, as the reference names them, and delivers
// each transaction's events in order while other transactions keep flowing; a callback that
// keeps failing goes to a dead-letter topic instead of being dropped or blocking the stream.
package callbacks

import (
	"encoding/json"
	"errors"
)

// Event is one record of the TRANSACTION topic.
type Event struct {
	Type, ID, Sep                string
	Transaction, Quote, Customer json.RawMessage

	// From the transaction (or the customer): what routes the event and orders it.
	txID, txSep, clientName, clientDomain, customerID, quoteID string
}

// errNoType is a record whose type is null or missing: skipped, as the reference skips it.
var errNoType = errors.New("the event has no type")

// ParseEvent reads {"type", "id", "sep", "transaction", "quote", "customer"}.
func ParseEvent(b []byte) (*Event, error) {
	var raw struct {
		Type        *string         `json:"type"`
		ID          string          `json:"id"`
		Sep         json.RawMessage `json:"sep"`
		Transaction json.RawMessage `json:"transaction"`
		Quote       json.RawMessage `json:"quote"`
		Customer    json.RawMessage `json:"customer"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	if raw.Type == nil || *raw.Type == "" {
		return nil, errNoType
	}
	e := &Event{Type: *raw.Type, ID: raw.ID, Sep: scalar(raw.Sep),
		Transaction: object(raw.Transaction), Quote: object(raw.Quote), Customer: object(raw.Customer)}
	// The members of a transaction or a customer that route and order an event.
	type owner struct {
		ID           string          `json:"id"`
		Sep          json.RawMessage `json:"sep"`
		ClientName   string          `json:"client_name"`
		ClientDomain string          `json:"client_domain"`
	}
	var fields owner
	if e.Transaction != nil {
		if err := json.Unmarshal(e.Transaction, &fields); err != nil {
			return nil, errors.New("transaction: " + err.Error())
		}
		e.txID, e.txSep, e.clientName, e.clientDomain = fields.ID, scalar(fields.Sep), fields.ClientName, fields.ClientDomain
	}
	if e.Customer != nil {
		fields = owner{}
		if err := json.Unmarshal(e.Customer, &fields); err != nil {
			return nil, errors.New("customer: " + err.Error())
		}
		e.customerID = fields.ID
		if e.Transaction == nil {
			e.clientName, e.clientDomain = fields.ClientName, fields.ClientDomain
		}
	}
	if e.Quote != nil {
		var q struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(e.Quote, &q); err != nil {
			return nil, errors.New("quote: " + err.Error())
		}
		e.quoteID = q.ID
	}
	if e.txSep == "" {
		e.txSep = e.Sep
	}
	return e, nil
}

// Key is what orders events: one transaction's (or customer's, or quote's) events are delivered
// in the order they were read, one after the other.
func (e *Event) Key() string {
	switch {
	case e.txID != "":
		return "tx:" + e.txID
	case e.customerID != "":
		return "customer:" + e.customerID
	case e.quoteID != "":
		return "quote:" + e.quoteID
	}
	return "event:" + e.ID
}

// object drops a JSON null, which the reference omits.
func object(r json.RawMessage) json.RawMessage {
	if len(r) == 0 || string(r) == "null" {
		return nil
	}
	return r
}

// scalar is a string's value or a number's text: sep is "24" upstream, but 24 would mean the same.
func scalar(r json.RawMessage) string {
	var s string
	if json.Unmarshal(r, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(r, &n) == nil {
		return n.String()
	}
	return ""
}
