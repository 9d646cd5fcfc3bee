// Package engine holds Herald's broker-independent core: the Message that travels from a Source to a
// Sink, the retry policy, the dead-letter contract and the Pipeline that runs deliveries
// concurrently. It imports no broker and no HTTP package; adapters live under internal/.
package engine

import "sync"

// Header is one header of a delivery, byte-exact and in the order the entry lists it.
type Header struct {
	Name  []byte
	Value []byte
}

// Message is one unit of work taken from a Source. Its byte slices point into Raw or into buffers
// the Message owns, so a Message is reused through GetMessage/PutMessage and decoding it allocates
// nothing once its buffers have grown.
type Message struct {
	// Raw is the entry exactly as the broker holds it.
	Raw []byte

	// URL, Headers and Payload are filled by a Decoder: where to deliver, with which headers,
	// and the decoded body.
	URL     []byte
	Headers []Header
	Payload []byte

	// Retries counts the deliveries already retried (the reference's "retries" field).
	Retries int

	// SourceRetries is the retry count the Source knows of outside the entry (a header, a
	// delivery count). Decode keeps the higher of it and the entry's own.
	SourceRetries int

	// TakenAt is when the Source handed the message out, in Unix nanoseconds.
	TakenAt int64

	// Token is the Source's own handle on the message (its in-flight slot, a delivery tag).
	Token uint64

	// Scratch is spare storage a Decoder may use for unescaped strings; it is kept across reuse.
	Scratch []byte

	// Extra holds the values of headers added after decoding (a Gate's signatures); kept apart
	// from Scratch so that growing it never moves what the Decoder's headers point into.
	Extra []byte
}

// Reset clears m for reuse, keeping the capacity of its buffers.
func (m *Message) Reset() {
	m.Raw = m.Raw[:0]
	m.URL = nil
	for i := range m.Headers {
		m.Headers[i] = Header{}
	}
	m.Headers = m.Headers[:0]
	m.Payload = m.Payload[:0]
	m.Retries = 0
	m.SourceRetries = 0
	m.TakenAt = 0
	m.Token = 0
	m.Scratch = m.Scratch[:0]
	m.Extra = m.Extra[:0]
}

// SetRaw copies b into m.Raw, reusing its capacity.
func (m *Message) SetRaw(b []byte) { m.Raw = append(m.Raw[:0], b...) }

var messagePool sync.Pool

// GetMessage returns an empty Message from the pool.
func GetMessage() *Message {
	if v := messagePool.Get(); v != nil {
		return v.(*Message)
	}
	return &Message{}
}

// PutMessage resets m and returns it to the pool. m must not be used afterwards.
func PutMessage(m *Message) {
	m.Reset()
	messagePool.Put(m)
}
