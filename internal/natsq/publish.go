package natsq

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// KeyHeader carries a Publication's Key, when it has one: NATS has no record key of its own.
const KeyHeader = "Herald-Key"

const (
	// pubWindow bounds the entries of one Publish call awaiting their ack: a batch of a few
	// hundred goes out in one round trip, a huge one does not flood the server.
	pubWindow = 1024
	// pubAckTimeout fails a call whose acks stopped coming, for a caller without a deadline.
	pubAckTimeout = 30 * time.Second
)

// PublisherOptions name the stream a Publisher writes to.
type PublisherOptions struct {
	// Stream is created when missing, with Subjects, limits retention and file storage. An
	// existing stream keeps its configuration, except that Subjects it does not cover yet are
	// added. Empty: streams are left alone and must already cover what is published.
	Stream   string
	Subjects []string
}

// Publisher is an engine.Publisher over JetStream: a Publication's Dest is the subject. It
// publishes a batch without waiting and then collects JetStream's acks, so a batch costs one
// round trip.
//
// It does without nats.go's asynchronous JetStream publishing, which gives every message a reply
// subject of its own for the server to route its ack to, and costs the client a JSON decode, a
// timer and a future per ack (together about a quarter more server CPU and three times the client
// CPU per entry, measured on a batch of 2,000): here every message of a call has the call's
// reply subject, and an ack is only counted, since a call succeeds when all its entries are
// stored and fails as a whole otherwise. Nor is a publish answered with "no responders" retried,
// as nats.go would, later, storing it after the entries that followed it: the call fails, which
// keeps the order, and the caller's retry duplicates instead.
type Publisher struct {
	nc *nats.Conn
	js jetstream.JetStream

	inbox string // the acks of call id come to inbox.id
	next  atomic.Uint64
	mu    sync.Mutex
	calls map[uint64]*pubCall // the calls waiting for acks
}

// pubCall counts the acks of one Publish call. The subscription's handler counts them and wakes
// the call only once as many have come as it waits for (or an error), not at every ack: a call
// of 2,000 entries is woken a few times, not 2,000.
type pubCall struct {
	mu     sync.Mutex
	acked  int
	err    error
	awaits int           // the count the call is waiting for, 0 when it is not waiting
	wake   chan struct{} // capacity 1
}

// note records one reply.
func (c *pubCall) note(err error) {
	c.mu.Lock()
	if err != nil {
		if c.err == nil {
			c.err = err
		}
	} else {
		c.acked++
	}
	ready := c.awaits > 0 && (c.err != nil || c.acked >= c.awaits)
	if ready {
		c.awaits = 0
	}
	c.mu.Unlock()
	if ready {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// reached says whether n acks have come, or an error; if neither, the call waits for n.
func (c *pubCall) reached(n int) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || c.acked >= n {
		return true, c.err
	}
	c.awaits = n
	return false, nil
}

// NewPublisher returns a Publisher on nc, creating or completing its stream.
func NewPublisher(ctx context.Context, nc *nats.Conn, o PublisherOptions) (*Publisher, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if o.Stream != "" {
		if err := ensureStream(ctx, js, o); err != nil {
			return nil, fmt.Errorf("natsq: stream %s: %w", o.Stream, err)
		}
	}
	p := &Publisher{nc: nc, js: js, inbox: nc.NewInbox(), calls: map[uint64]*pubCall{}}
	if _, err := nc.Subscribe(p.inbox+".*", p.ack); err != nil {
		return nil, fmt.Errorf("natsq: subscribing to publish acks: %w", err)
	}
	return p, nil
}

// ack hands one reply of JetStream to the call it answers. Acks of a call that gave up find no
// call and are dropped.
func (p *Publisher) ack(m *nats.Msg) {
	id, err := strconv.ParseUint(m.Subject[len(p.inbox)+1:], 10, 64)
	if err != nil {
		return
	}
	p.mu.Lock()
	c := p.calls[id]
	p.mu.Unlock()
	if c != nil {
		c.note(ackError(m))
	}
}

// ackError says whether a reply to a publication is JetStream's ack of it. Only an error is
// decoded: a PubAck names its stream, and an error has an "error" member.
func ackError(m *nats.Msg) error {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return jetstream.ErrNoStreamResponse // no stream takes the subject
	}
	if bytes.Contains(m.Data, []byte(`"stream":`)) && !bytes.Contains(m.Data, []byte(`"error":`)) {
		return nil
	}
	var r struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Error == nil {
		return fmt.Errorf("%w: %q", jetstream.ErrInvalidJSAck, m.Data)
	}
	return r.Error
}

// ensureStream creates o's stream or adds the subjects it lacks, leaving the rest of an existing
// stream's configuration (retention, limits, replicas) as its operator set it.
func ensureStream(ctx context.Context, js jetstream.JetStream, o PublisherOptions) error {
	for attempt := 0; ; attempt++ {
		s, err := js.Stream(ctx, o.Stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			_, err = js.CreateStream(ctx, jetstream.StreamConfig{
				Name: o.Stream, Subjects: o.Subjects,
				Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			})
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && attempt == 0 {
				continue // another instance created it in the meantime: complete that one
			}
			return err
		}
		if err != nil {
			return err
		}
		cfg := s.CachedInfo().Config
		grown := false
		for _, want := range o.Subjects {
			if !slices.ContainsFunc(cfg.Subjects, func(have string) bool { return subjectCovers(have, want) }) {
				cfg.Subjects = append(cfg.Subjects, want)
				grown = true
			}
		}
		if !grown {
			return nil
		}
		_, err = js.CreateOrUpdateStream(ctx, cfg)
		return err
	}
}

// subjectCovers reports whether every subject that sub matches is matched by pat too. JetStream
// refuses a stream whose subjects overlap, so a subject already within a wildcard of the stream
// must not be added beside it.
func subjectCovers(pat, sub string) bool {
	p, s := strings.Split(pat, "."), strings.Split(sub, ".")
	for i, tok := range p {
		if tok == ">" {
			return i < len(s)
		}
		if i >= len(s) || s[i] == ">" || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

// Publish implements engine.Publisher. While the connection is down it waits for it until ctx
// ends rather than publish into nats.go's reconnect buffer, so that a call failing in an outage
// leaves no copies behind to be stored once the connection is back.
func (p *Publisher) Publish(ctx context.Context, ps []engine.Publication) error {
	if len(ps) == 0 {
		return nil
	}
	if err := awaitConnection(ctx, p.nc, 0); err != nil {
		return err
	}
	id := p.next.Add(1)
	reply := p.inbox + "." + strconv.FormatUint(id, 10)
	c := &pubCall{wake: make(chan struct{}, 1)}
	p.mu.Lock()
	p.calls[id] = c
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.calls, id)
		p.mu.Unlock()
	}()
	w := ackWaiter{ctx: ctx, call: c, stall: time.NewTimer(pubAckTimeout)}
	defer w.stall.Stop()

	// Neighbouring entries often share a destination: its subject string is made once for them.
	var subject string
	for i := range ps {
		if i >= pubWindow && i%(pubWindow/2) == 0 {
			// Keep at most a window unacknowledged, waiting for half of it at a time.
			if err := w.until(i - pubWindow/2); err != nil {
				return err
			}
		}
		if i == 0 || !bytes.Equal(ps[i].Dest, ps[i-1].Dest) {
			subject = string(ps[i].Dest)
		}
		// nats.go copies the message into its write buffer before it returns, so the caller's
		// buffers are free as soon as Publish is.
		var err error
		if len(ps[i].Key) > 0 {
			err = p.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: reply, Data: ps[i].Body,
				Header: nats.Header{KeyHeader: []string{string(ps[i].Key)}}})
		} else {
			err = p.nc.PublishRequest(subject, reply, ps[i].Body)
		}
		if err != nil {
			return fmt.Errorf("natsq: publish to %s: %w", subject, err)
		}
	}
	return w.until(len(ps))
}

// ackWaiter waits for the acks of one call. An ack that never comes fails the call once
// pubAckTimeout passes without one, for a caller without a deadline.
type ackWaiter struct {
	ctx   context.Context
	call  *pubCall
	stall *time.Timer
	seen  int // acks counted when stall was last set
}

// until returns once n entries of the call are stored, or with the first error.
func (w *ackWaiter) until(n int) error {
	for {
		done, err := w.call.reached(n)
		if err != nil {
			return fmt.Errorf("natsq: publish: %w", err)
		}
		if done {
			return nil
		}
		select {
		case <-w.call.wake:
		case <-w.ctx.Done():
			return fmt.Errorf("natsq: waiting for JetStream to store a publication: %w", w.ctx.Err())
		case <-w.stall.C:
			w.call.mu.Lock()
			acked := w.call.acked
			w.call.mu.Unlock()
			if acked == w.seen {
				return fmt.Errorf("natsq: no ack from JetStream in %s: %w", pubAckTimeout, nats.ErrTimeout)
			}
			w.seen = acked
			w.stall.Reset(pubAckTimeout)
		}
	}
}
